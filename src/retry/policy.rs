//! Retry policies: the ready-made [`StandardPolicy`] the builder makes, and the [`Policy`] trait
//! for the unusual case.
//!
//! The [`Retry`](super::Retry) service does the mechanics for any policy: it keeps the copy of the
//! request, counts attempts, arms the per-attempt timer, sleeps between attempts, readies the
//! inner service before each retry, logs and counts retries, and hands the final result back
//! through the layer's rejection mode. A policy only decides: what to copy, how long each attempt
//! may take, and what follows each attempt.
//!
//! # A custom policy
//!
//! This one retries a `Busy` answer (a response, not an error) twice, with the crate's backoff
//! and a budget shared with nobody else:
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::classify::Reason;
//! use tower_rampart::retry::{
//!     Attempt, Backoff, Budget, Decision, Delays, GiveUp, Outcome, Policy, RetryBudget, RetryLayer,
//!     request::NotRetryable,
//! };
//!
//! #[derive(Debug, PartialEq)]
//! enum Answer { Done(u32), Busy }
//!
//! struct RetryBusy { backoff: Backoff, budget: RetryBudget }
//!
//! impl Policy<u32, Answer, std::io::Error> for RetryBusy {
//!     type State = Delays;
//!
//!     fn start(&self, _req: &u32) -> Delays {
//!         self.budget.deposit();
//!         self.backoff.delays()
//!     }
//!
//!     fn clone_request(&self, req: &mut u32) -> Result<u32, NotRetryable> {
//!         Ok(*req)
//!     }
//!
//!     fn decide(
//!         &self,
//!         delays: &mut Delays,
//!         attempt: Attempt,
//!         outcome: Outcome<'_, Answer, std::io::Error>,
//!     ) -> Decision {
//!         let reason = match outcome {
//!             Outcome::Finished(Ok(Answer::Busy)) => Reason::Other("busy"),
//!             _ => return Decision::Done,
//!         };
//!         if attempt.number() >= 3 {
//!             return Decision::GiveUp { reason, why: GiveUp::Attempts };
//!         }
//!         if !self.budget.withdraw() {
//!             return Decision::GiveUp { reason, why: GiveUp::Budget };
//!         }
//!         Decision::Retry { after: delays.next_delay(), reason }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let layer = RetryLayer::custom(RetryBusy {
//!     backoff: Backoff::fixed(Duration::from_millis(50)),
//!     budget: RetryBudget::new(Budget::default()).unwrap(),
//! })
//! .name("busy")
//! .build()
//! .unwrap();
//! let calls = std::sync::atomic::AtomicU32::new(0);
//! let calls = std::sync::Arc::new(calls);
//! let c = calls.clone();
//! let mut svc = layer.layer(service_fn(move |n: u32| {
//!     let busy = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2;
//!     async move { Ok::<_, std::io::Error>(if busy { Answer::Busy } else { Answer::Done(n) }) }
//! }));
//! assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), Answer::Done(7));
//! assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
//! # }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::backoff::{Backoff, Jittered};
use super::budget::RetryBudget;
use super::request::{CloneRequest, NotRetryable};
use crate::classify::{Classify, Pushback, Reason, Verdict};

/// Decides how a request is retried. Implemented by [`StandardPolicy`]; implement it for the
/// unusual case and wrap it with [`RetryLayer::custom`](super::RetryLayer::custom).
///
/// One policy value serves every request of a layer (it is shared, behind an `Arc`); what it
/// needs to remember about one request goes in its [`State`](Self::State), which the response
/// future keeps. Calls, in order: [`start`](Self::start) and [`clone_request`](Self::clone_request)
/// in `call`; then, for each attempt, [`attempt_deadline`](Self::attempt_deadline) before it and
/// [`decide`](Self::decide) after it; [`deadline`](Self::deadline) when a retry is decided,
/// [`prepare_retry`](Self::prepare_retry) on its request just before it is sent; and
/// [`finish`](Self::finish) on the final response.
pub trait Policy<Req, Res, E>: Send + Sync + 'static {
    /// What the policy remembers about one request.
    type State;

    /// A new request arrives (in `call`, before its first attempt).
    fn start(&self, req: &Req) -> Self::State;

    /// A copy of `req` for the attempts after the first, or why it will be sent only once. Called
    /// once per request, in `call`; the service clones the copy again for each retry through this
    /// method.
    ///
    /// May replace `req` with an equivalent request that can be copied (see
    /// [`CloneRequest::clone_request`]); it must not wait.
    fn clone_request(&self, req: &mut Req) -> Result<Req, NotRetryable>;

    /// When the coming attempt must end, and which limit that is; `None` for no limit (the
    /// default). Called before every attempt, the first included.
    fn attempt_deadline(&self, state: &mut Self::State) -> Option<(Instant, TimeLimit)> {
        let _ = state;
        None
    }

    /// The time after which no attempt of this request may start, if there is one (default: none).
    ///
    /// Before each retry the service waits for the inner service to be ready; with a deadline,
    /// that wait ends at it and the request ends with the last attempt's result (a delay that
    /// would end past it is cut to it). That result is kept during the wait only when there is a
    /// deadline; without one it is dropped when the retry is decided. Called when a retry is
    /// decided.
    fn deadline(&self, state: &Self::State) -> Option<Instant> {
        let _ = state;
        None
    }

    /// What follows an attempt that ended with `outcome`.
    ///
    /// `attempt.can_retry()` is false when the request has no copy (see
    /// [`clone_request`](Self::clone_request)): a `Retry` decision is then treated as
    /// `GiveUp { why: GiveUp::NotRetryable }`.
    fn decide(
        &self,
        state: &mut Self::State,
        attempt: Attempt,
        outcome: Outcome<'_, Res, E>,
    ) -> Decision;

    /// Called on a retry's copy of the request just before it is sent (default: nothing): the
    /// standard policy says there how much of the time the request was given is left
    /// ([`CloneRequest::set_time_left`]).
    fn prepare_retry(&self, state: &Self::State, req: &mut Req) {
        let _ = (state, req);
    }

    /// Called on the final response, the number of attempts made (default: nothing).
    fn finish(&self, response: &mut Res, attempts: u32) {
        let _ = (response, attempts);
    }
}

/// The attempt that just ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attempt {
    number: u32,
    can_retry: bool,
}

impl Attempt {
    pub(crate) const fn new(number: u32, can_retry: bool) -> Self {
        Self { number, can_retry }
    }

    /// Its number: 1 for the first attempt.
    pub const fn number(&self) -> u32 {
        self.number
    }

    /// Whether the request can be sent again (it has a copy).
    pub const fn can_retry(&self) -> bool {
        self.can_retry
    }
}

/// How an attempt ended.
#[derive(Debug)]
pub enum Outcome<'a, Res, E> {
    /// The inner service answered.
    Finished(&'a Result<Res, E>),
    /// The attempt was cut short by a time limit (and its call dropped).
    TimedOut(TimeLimit),
}

/// Which time limit cut an attempt short.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TimeLimit {
    /// The attempt's own timeout.
    Attempt,
    /// The request's overall deadline.
    Deadline,
}

/// What follows an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Return the result: a success, or a failure not worth retrying.
    Done,
    /// Send the request again after `after`.
    Retry {
        /// How long to wait first.
        after: Duration,
        /// Why, for logs and metrics.
        reason: Reason,
    },
    /// The failure was worth retrying, but the retries end here: return it.
    GiveUp {
        /// The failure.
        reason: Reason,
        /// Why no retry follows.
        why: GiveUp,
    },
}

/// Why a retryable failure is returned rather than retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUp {
    /// All attempts were made.
    Attempts,
    /// The retry budget is spent.
    Budget,
    /// The next attempt could not start before the request's deadline (or the server asked for a
    /// wait beyond it).
    Deadline,
    /// The server asked not to retry, or to wait longer than the maximum delay.
    Server,
    /// A layer of this crate below refused and would refuse again (an open circuit, a missing
    /// key, a cost over the limit; a rate limit whose quota allows another call only after a
    /// longer wait than the retry makes).
    Refused,
    /// The request cannot be sent again (see [`NotRetryable`]).
    NotRetryable,
}

impl GiveUp {
    /// A short label for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Attempts => "attempts",
            Self::Budget => "budget",
            Self::Deadline => "deadline",
            Self::Server => "server",
            Self::Refused => "refused",
            Self::NotRetryable => "not_retryable",
        }
    }
}

/// The ready-made policy, built by [`RetryLayer::builder`](super::RetryLayer::builder): a
/// classifier, a request copier, attempts, backoff with jitter, per-attempt timeout, deadline and
/// budget.
pub struct StandardPolicy<C, R> {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<RetryBudget>,
    pub(crate) retry_timeouts: bool,
    pub(crate) seeds: Seeds,
    pub(crate) classifier: C,
    pub(crate) requests: R,
}

impl<C: fmt::Debug, R: fmt::Debug> fmt::Debug for StandardPolicy<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .field("retry_timeouts", &self.retry_timeouts)
            .field("seeded", &self.seeds.seeded())
            .field("classifier", &self.classifier)
            .field("requests", &self.requests)
            .finish()
    }
}

impl<C, R> StandardPolicy<C, R> {
    /// The most attempts per request, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay schedule.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The retry budget, if there is one.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_ref()
    }

    /// The classifier.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }
}

/// Where each request's jitter comes from.
#[derive(Debug)]
pub(crate) struct Seeds {
    /// `Some(next)` when seeded: request `k` (in the order of their first retries) draws from
    /// `seed + k`.
    next: Option<AtomicU64>,
}

impl Seeds {
    pub(crate) fn new(seed: Option<u64>) -> Self {
        Self {
            next: seed.map(AtomicU64::new),
        }
    }

    fn seeded(&self) -> bool {
        self.next.is_some()
    }

    fn jitter(&self, backoff: &Backoff) -> Jittered {
        let rng = match &self.next {
            Some(next) => fastrand::Rng::with_seed(next.fetch_add(1, Ordering::Relaxed)),
            None => fastrand::Rng::new(),
        };
        Jittered::new(backoff, rng)
    }
}

/// What [`StandardPolicy`] remembers about one request.
#[derive(Debug)]
pub struct StandardState {
    deadline: Option<Instant>,
    /// Made at the first retry: requests that succeed at once never touch the random generator.
    jitter: Option<Jittered>,
}

impl<C, R> StandardPolicy<C, R> {
    /// What [`Policy::decide`] makes of an attempt worth a retry (`verdict` is neither a success
    /// nor a failure): a retry after a delay, or the reason to give up. `deadline_passed`: the
    /// attempt was cut short by the request's deadline.
    #[inline(never)]
    fn retry_or_give_up(
        &self,
        state: &mut StandardState,
        attempt: Attempt,
        verdict: Verdict,
        deadline_passed: bool,
    ) -> Decision {
        // Who says a retry would not do, should the pushback say so: the server, or a layer of
        // this crate below that refused.
        let (reason, pushback, told) = match verdict {
            Verdict::Transient { reason, pushback } | Verdict::Throttled { reason, pushback } => {
                (reason, pushback, GiveUp::Server)
            }
            Verdict::Refused { reason, pushback } => (reason, pushback, GiveUp::Refused),
            Verdict::Success | Verdict::Failure { .. } => return Decision::Done,
        };
        let asked = match pushback {
            Pushback::None => None,
            Pushback::After(after) | Pushback::NotBefore(after) => Some(after),
            Pushback::DoNotRetry => {
                return Decision::GiveUp { reason, why: told };
            }
        };
        let give_up = |why| Decision::GiveUp { reason, why };
        if !attempt.can_retry() {
            return give_up(GiveUp::NotRetryable);
        }
        if attempt.number() >= self.max_attempts {
            return give_up(GiveUp::Attempts);
        }
        if deadline_passed {
            return give_up(GiveUp::Deadline);
        }
        let jitter = state
            .jitter
            .get_or_insert_with(|| self.seeds.jitter(&self.backoff));
        let mut after = jitter.next(&self.backoff);
        if let Some(asked) = asked {
            // Never sooner than asked: a server's `Retry-After` or pushback is a wait it expects
            // (an earlier retry would be refused again, spending an attempt and a budget token
            // against a server that asked for room), and a layer below will refuse until then.
            // A wait longer than the maximum delay is not made: the caller gets the answer,
            // which carries the server's wish.
            if asked > self.backoff.max() {
                return give_up(told);
            }
            after = after.max(asked);
        }
        after = after.min(self.backoff.max());
        if let Some(deadline) = state.deadline {
            let now = Instant::now();
            let past = |d: Duration| now.checked_add(d).is_none_or(|at| at >= deadline);
            // The server's own wish, uncapped: if it wants longer than we have, it will not serve
            // a retry in time.
            if asked.is_some_and(past) || past(after) {
                return give_up(GiveUp::Deadline);
            }
        }
        if let Some(budget) = &self.budget
            && !budget.withdraw()
        {
            return give_up(GiveUp::Budget);
        }
        Decision::Retry { after, reason }
    }
}

impl<C, R, Req, Res, E> Policy<Req, Res, E> for StandardPolicy<C, R>
where
    C: Classify<Res, E>,
    R: CloneRequest<Req>,
{
    type State = StandardState;

    #[inline]
    fn start(&self, req: &Req) -> StandardState {
        if let Some(budget) = &self.budget {
            budget.deposit();
        }
        let given = self.requests.time_given(req);
        let limit = match (self.deadline, given) {
            (Some(own), Some(given)) => Some(own.min(given)),
            (own, given) => own.or(given),
        };
        StandardState {
            deadline: limit.and_then(|d| Instant::now().checked_add(d)),
            jitter: None,
        }
    }

    #[inline]
    fn clone_request(&self, req: &mut Req) -> Result<Req, NotRetryable> {
        if self.max_attempts <= 1 {
            return Err(NotRetryable::RetriesOff);
        }
        if !self.requests.may_retry(req) {
            return Err(NotRetryable::NotIdempotent);
        }
        self.requests
            .clone_request(req)
            .ok_or(NotRetryable::NotCloneable)
    }

    #[inline]
    fn attempt_deadline(&self, state: &mut StandardState) -> Option<(Instant, TimeLimit)> {
        let own = self
            .attempt_timeout
            .and_then(|t| Instant::now().checked_add(t));
        match (own, state.deadline) {
            (None, None) => None,
            (Some(own), Some(deadline)) if deadline < own => Some((deadline, TimeLimit::Deadline)),
            (Some(own), _) => Some((own, TimeLimit::Attempt)),
            (None, Some(deadline)) => Some((deadline, TimeLimit::Deadline)),
        }
    }

    #[inline]
    fn deadline(&self, state: &StandardState) -> Option<Instant> {
        state.deadline
    }

    /// A retry's copy still carries the time the request said it was given (copies are made
    /// from the original), so that is asked again here rather than kept in the state, which
    /// every request's future holds (`tests/future_sizes.rs`).
    fn prepare_retry(&self, state: &StandardState, req: &mut Req) {
        if let Some(deadline) = state.deadline
            && self.requests.time_given(req).is_some()
        {
            let mut left = deadline.saturating_duration_since(Instant::now());
            if let Some(attempt) = self.attempt_timeout {
                left = left.min(attempt);
            }
            self.requests.set_time_left(req, left);
        }
    }

    /// The classification, and `Done` for what is not worth a retry, inline (the path of every
    /// attempt that succeeds); the rest out of line
    /// (`retry_or_give_up`).
    ///
    /// `instructions` bench, `u64/rampart_retry` on the default features' build
    /// (`benches/default_features`): a call of this whole method for every successful attempt
    /// was about 10 instructions of the row's 102.
    #[inline]
    fn decide(
        &self,
        state: &mut StandardState,
        attempt: Attempt,
        outcome: Outcome<'_, Res, E>,
    ) -> Decision {
        let verdict = match outcome {
            Outcome::Finished(result) => self.classifier.classify(result),
            Outcome::TimedOut(_) if self.retry_timeouts => Verdict::transient(Reason::TimedOut),
            Outcome::TimedOut(_) => Verdict::Success,
        };
        if let Verdict::Success | Verdict::Failure { .. } = verdict {
            return Decision::Done;
        }
        let deadline_passed = matches!(outcome, Outcome::TimedOut(TimeLimit::Deadline));
        self.retry_or_give_up(state, attempt, verdict, deadline_passed)
    }

    #[inline]
    fn finish(&self, response: &mut Res, attempts: u32) {
        self.classifier.record_attempts(response, attempts);
    }
}
