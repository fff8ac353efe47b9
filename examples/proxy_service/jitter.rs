//! The retry delays of reference 004: the schedule's delay for retry `n`
//! (`RETRY_INITIAL_DELAY_MS × RETRY_BACKOFF_MULTIPLIER^(n−1)`, at most `RETRY_MAX_DELAY_MS`) plus
//! a uniform whole number of milliseconds from 0 to half of it, so never less than the schedule's
//! delay and at most 1.5 times it. With the defaults: 100–150 ms, then 200–300 ms.
//!
//! The crate's [`Jitter`](tower_rampart::retry::Jitter) kinds all spread delays *below* the
//! schedule (full, equal) or around the initial delay (decorrelated), so [`AddedJitter`] wraps the
//! crate's [`StandardPolicy`] built without jitter: the standard policy still classifies, counts
//! the attempts, honours `Retry-After`, keeps the budget and the deadline; this adds the jitter to
//! each retry it decides on.

use std::time::Duration;

use tokio::time::Instant;
use tower_rampart::retry::request::NotRetryable;
use tower_rampart::retry::{
    Attempt, Backoff, Decision, Outcome, Policy, RetryLayer, StandardPolicy, TimeLimit,
};

/// A retry policy: the standard policy of `standard` (built with `Jitter::None` and `backoff`),
/// with up to half of each retry's scheduled delay added at random.
///
/// The standard policy lives in its layer (the crate shares a policy through its layer's `Arc`);
/// only the policy is used, never the layer itself.
#[derive(Debug)]
pub(crate) struct AddedJitter<C, R, M> {
    standard: RetryLayer<StandardPolicy<C, R>, M>,
    backoff: Backoff,
}

impl<C, R, M> AddedJitter<C, R, M> {
    /// Adds jitter to the retries that `standard`'s policy decides on.
    pub(crate) fn new(standard: RetryLayer<StandardPolicy<C, R>, M>) -> Self {
        let backoff = *standard.policy().backoff();
        Self { standard, backoff }
    }

    /// The jitter before retry number `retry` (1 for the first): a whole number of milliseconds,
    /// uniform from 0 to half the schedule's delay for it.
    fn jitter(&self, retry: u32) -> Duration {
        let half =
            u64::try_from(self.backoff.base_delay(retry).as_millis() / 2).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=half))
    }
}

impl<C, R, M, Req, Res, E> Policy<Req, Res, E> for AddedJitter<C, R, M>
where
    StandardPolicy<C, R>: Policy<Req, Res, E>,
    C: Send + Sync + 'static,
    R: Send + Sync + 'static,
    M: Send + Sync + 'static,
{
    type State = <StandardPolicy<C, R> as Policy<Req, Res, E>>::State;

    fn start(&self, req: &Req) -> Self::State {
        self.standard.policy().start(req)
    }

    fn clone_request(&self, req: &mut Req) -> Result<Req, NotRetryable> {
        self.standard.policy().clone_request(req)
    }

    fn attempt_deadline(&self, state: &mut Self::State) -> Option<(Instant, TimeLimit)> {
        self.standard.policy().attempt_deadline(state)
    }

    fn deadline(&self, state: &Self::State) -> Option<Instant> {
        Policy::<Req, Res, E>::deadline(self.standard.policy(), state)
    }

    fn decide(
        &self,
        state: &mut Self::State,
        attempt: Attempt,
        outcome: Outcome<'_, Res, E>,
    ) -> Decision {
        match self.standard.policy().decide(state, attempt, outcome) {
            // Without jitter, `after` is the schedule's delay (or the longer wait the upstream
            // asked for): the jitter comes on top, so a retry is never sooner than either.
            Decision::Retry { after, reason } => Decision::Retry {
                after: after + self.jitter(attempt.number()),
                reason,
            },
            other => other,
        }
    }

    fn prepare_retry(&self, state: &Self::State, req: &mut Req) {
        self.standard.policy().prepare_retry(state, req);
    }

    fn finish(&self, response: &mut Res, attempts: u32) {
        Policy::<Req, Res, E>::finish(self.standard.policy(), response, attempts);
    }
}
