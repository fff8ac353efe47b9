//! The retry layer's response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::RetryMode;
use super::error::AttemptTimedOut;
use super::event::RetryEvent;
use super::layer::Shared;
use super::policy::{Attempt, Decision, GiveUp, Outcome, Policy, TimeLimit};
use super::request::NotRetryable;
use crate::classify::Reason;

pin_project! {
    /// Response future of [`Retry`](super::Retry): a state machine that calls the inner service,
    /// waits out the backoff, readies the inner service again and calls it again, until the
    /// policy is satisfied or gives up.
    ///
    /// States: `Calling` (an attempt is in flight, perhaps against a timer), `Backoff` (waiting
    /// before the next attempt), `Readying` (driving the spare service's `poll_ready`, until the
    /// request's deadline if it has one), `Done`. One timer, allocated the first time a wait or a
    /// time limit is needed, serves every attempt and wait of the request.
    ///
    /// A retry with no delay yields to the executor before it starts (the future wakes itself and
    /// returns `Pending`), so that a policy retrying at once against a service that fails at once
    /// cannot hold the thread.
    ///
    /// `St` and `Err` are the policy's state and the mode's error type, named here rather than
    /// through the traits so that the future's auto traits never depend on trait resolution.
    #[project = FutureProj]
    pub struct ResponseFuture<S, Req, P, M, St, Err>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future, Last<S::Response, S::Error>>,
        // The clone of the inner service that retries go through; `None` when the request cannot
        // be retried.
        spare: Option<S>,
        // The copy kept for the next attempt, or why there is none.
        copy: Result<Req, NotRetryable>,
        policy_state: St,
        attempt: u32,
        // The limit the timer stands for while `Calling` (the attempt's) or `Readying` (always the
        // deadline); `None` when there is none.
        limit: Option<TimeLimit>,
        timer: Option<Pin<Box<Sleep>>>,
        shared: Arc<Shared<P, M>>,
        _err: PhantomData<fn() -> Err>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, L> {
        Calling { #[pin] fut: F },
        // `last`: the failed attempt's result and why it failed, kept while waiting only when the
        // request has a deadline, to be returned if the deadline passes before the next attempt
        // can start.
        Backoff { last: Option<L> },
        Readying { last: Option<L> },
        Done,
    }
}

/// How an attempt ended: the inner service's result, or the time limit that cut it short.
type Ended<T, E> = Result<Result<T, E>, TimeLimit>;

/// A failed attempt kept for the deadline: how it ended and why it was worth a retry.
type Last<T, E> = (Ended<T, E>, Reason);

impl<S, Req, P, M, St, Err> ResponseFuture<S, Req, P, M, St, Err>
where
    S: Service<Req>,
{
    #[inline]
    pub(crate) fn new(
        fut: S::Future,
        spare: Option<S>,
        copy: Result<Req, NotRetryable>,
        policy_state: St,
        limit: Option<(Instant, TimeLimit)>,
        shared: Arc<Shared<P, M>>,
    ) -> Self {
        let (timer, limit) = match limit {
            Some((at, limit)) => (Some(Box::pin(tokio::time::sleep_until(at))), Some(limit)),
            None => (None, None),
        };
        Self {
            state: State::Calling { fut },
            spare,
            copy,
            policy_state,
            attempt: 1,
            limit,
            timer,
            shared,
            _err: PhantomData,
        }
    }
}

/// Sets the timer to `at`, making it the first time.
#[cold]
#[inline(never)]
fn arm(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant) {
    match timer {
        Some(t) => t.as_mut().reset(at),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(at))),
    }
}

/// Arms the timer at the request's deadline, if it has one, for the wait for readiness.
fn arm_deadline<Req, Res, E, P, M>(
    shared: &Shared<P, M>,
    state: &P::State,
    timer: &mut Option<Pin<Box<Sleep>>>,
) -> Option<TimeLimit>
where
    P: Policy<Req, Res, E>,
{
    let deadline = shared.policy.deadline(state)?;
    arm(timer, deadline);
    Some(TimeLimit::Deadline)
}

/// Where [`drive`] starts.
enum Start<T, E> {
    /// From the current state.
    Poll,
    /// The attempt in flight is pending: only its timer needs polling.
    Pending,
    /// The attempt ended, and the policy decided.
    Decided(Ended<T, E>, Decision),
}

impl<S, Req, P, M, St, Err> Future for ResponseFuture<S, Req, P, M, St, Err>
where
    S: Service<Req>,
    P: Policy<Req, S::Response, S::Error, State = St>,
    M: RetryMode<S::Response, S::Error, Error = Err>,
    Err: From<S::Error>,
{
    type Output = Result<S::Response, Err>;

    /// The path most requests take, kept small so that it inlines: the attempt in flight
    /// answers, and the policy is done with it. Everything else runs out of line.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let start = match this.state.as_mut().project() {
            StateProj::Calling { fut } => match fut.poll(cx) {
                Poll::Ready(result) => {
                    let shared = &**this.shared;
                    let attempt = Attempt::new(*this.attempt, this.copy.is_ok());
                    let decision = shared.policy.decide(
                        this.policy_state,
                        attempt,
                        Outcome::Finished(&result),
                    );
                    if decision == Decision::Done {
                        this.state.set(State::Done);
                        return Poll::Ready(finish::<Req, _, _, _, _, _>(
                            shared,
                            Ok(result),
                            *this.attempt,
                        ));
                    }
                    Start::Decided(Ok(result), decision)
                }
                Poll::Pending if this.limit.is_none() => return Poll::Pending,
                Poll::Pending => Start::Pending,
            },
            _ => Start::Poll,
        };
        drive::<S, Req, P, M, St, Err>(this, cx, start)
    }
}

/// The state machine, from `start`: timers, decisions, waits, readying the spare, new attempts.
#[inline(never)]
fn drive<S, Req, P, M, St, Err>(
    mut this: FutureProj<'_, S, Req, P, M, St, Err>,
    cx: &mut Context<'_>,
    mut start: Start<S::Response, S::Error>,
) -> Poll<Result<S::Response, Err>>
where
    S: Service<Req>,
    P: Policy<Req, S::Response, S::Error, State = St>,
    M: RetryMode<S::Response, S::Error, Error = Err>,
    Err: From<S::Error>,
{
    loop {
        let (ended, decision) = match std::mem::replace(&mut start, Start::Poll) {
            Start::Decided(ended, decision) => (ended, decision),
            step => {
                let ended = match this.state.as_mut().project() {
                    StateProj::Calling { fut } => {
                        let answered = match step {
                            Start::Pending => Poll::Pending,
                            _ => fut.poll(cx),
                        };
                        match answered {
                            Poll::Ready(result) => Ok(result),
                            Poll::Pending => match (*this.limit, this.timer.as_mut()) {
                                (Some(limit), Some(timer)) => {
                                    ready!(timer.as_mut().poll(cx));
                                    Err(limit)
                                }
                                _ => return Poll::Pending,
                            },
                        }
                    }
                    StateProj::Backoff { last } => {
                        let timer = this.timer.as_mut().expect("a backoff has a timer");
                        ready!(timer.as_mut().poll(cx));
                        let last = last.take();
                        // Kept only for a deadline: the wait for readiness ends there.
                        *this.limit = match last {
                            Some(_) => arm_deadline(&**this.shared, this.policy_state, this.timer),
                            None => None,
                        };
                        this.state.set(State::Readying { last });
                        continue;
                    }
                    StateProj::Readying { last } => {
                        // No attempt starts after the deadline, and the wait for readiness ends
                        // there: the request ends with its last result.
                        let timer = match (*this.limit, this.timer.as_mut()) {
                            (Some(_), Some(timer)) => Some(timer),
                            _ => None,
                        };
                        let passed = timer
                            .as_ref()
                            .is_some_and(|t| Instant::now() >= t.deadline());
                        let ready = if passed {
                            Poll::Pending
                        } else {
                            let spare = this.spare.as_mut().expect("a retried request has a spare");
                            spare.poll_ready(cx)
                        };
                        match ready {
                            Poll::Ready(Ok(())) => {}
                            Poll::Ready(Err(e)) => {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(M::last_error(
                                    Err::from(e),
                                    *this.attempt,
                                )));
                            }
                            Poll::Pending => {
                                let expired =
                                    passed || timer.is_some_and(|t| t.as_mut().poll(cx).is_ready());
                                if !expired {
                                    return Poll::Pending;
                                }
                                let (ended, reason) = last
                                    .take()
                                    .expect("the deadline is armed only with a last result");
                                this.state.set(State::Done);
                                let shared = &**this.shared;
                                let why = GiveUp::Deadline;
                                shared.returning(
                                    Decision::GiveUp { reason, why },
                                    *this.attempt,
                                    None,
                                );
                                return Poll::Ready(finish::<Req, _, _, _, _, _>(
                                    shared,
                                    ended,
                                    *this.attempt,
                                ));
                            }
                        }
                        let spare = this.spare.as_mut().expect("a retried request has a spare");
                        let shared = &**this.shared;
                        // Send the kept copy; keep a fresh copy of it for the attempt after this.
                        let mut req = match this.copy {
                            Ok(kept) => match shared.policy.clone_request(kept) {
                                Ok(next) => std::mem::replace(kept, next),
                                Err(why) => match std::mem::replace(this.copy, Err(why)) {
                                    Ok(req) => req,
                                    Err(_) => unreachable!("the copy was just seen"),
                                },
                            },
                            Err(_) => unreachable!("only requests with a copy are retried"),
                        };
                        *this.attempt += 1;
                        *this.limit = match shared.policy.attempt_deadline(this.policy_state) {
                            Some((at, limit)) => {
                                arm(this.timer, at);
                                Some(limit)
                            }
                            None => None,
                        };
                        shared.policy.prepare_retry(this.policy_state, &mut req);
                        let fut = spare.call(req);
                        this.state.set(State::Calling { fut });
                        continue;
                    }
                    StateProj::Done => panic!("retry future polled after completion"),
                };
                let shared = &**this.shared;
                let attempt = Attempt::new(*this.attempt, this.copy.is_ok());
                let outcome = match &ended {
                    Ok(result) => Outcome::Finished(result),
                    Err(limit) => Outcome::TimedOut(*limit),
                };
                let decision = shared.policy.decide(this.policy_state, attempt, outcome);
                (ended, decision)
            }
        };
        let shared = &**this.shared;
        match decision {
            Decision::Retry { after, reason } if this.copy.is_ok() => {
                shared.retrying(*this.attempt, after, reason);
                // The failed attempt's call (if it timed out) is dropped now; its result is kept
                // only if the deadline may have to return it, and dropped otherwise.
                let deadline = shared.policy.deadline(this.policy_state);
                let last = match deadline {
                    Some(_) => Some((ended, reason)),
                    None => {
                        drop(ended);
                        None
                    }
                };
                if after.is_zero() {
                    // Yield before the next attempt: a policy retrying at once against a service
                    // failing at once would otherwise loop inside this poll.
                    this.state.set(State::Readying { last });
                    *this.limit = deadline.map(|at| {
                        arm(this.timer, at);
                        TimeLimit::Deadline
                    });
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                this.state.set(State::Backoff { last });
                *this.limit = None;
                // A custom policy's absurd delay waits a very long time rather than panicking; a
                // wait past the deadline ends at it.
                let now = Instant::now();
                let at = now
                    .checked_add(after)
                    .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365));
                arm(this.timer, deadline.map_or(at, |d| at.min(d)));
            }
            decision => {
                this.state.set(State::Done);
                shared.returning(decision, *this.attempt, this.copy.as_ref().err());
                return Poll::Ready(finish::<Req, _, _, _, _, _>(shared, ended, *this.attempt));
            }
        }
    }
}

impl<P, M> Shared<P, M> {
    /// Logs and counts a retry.
    #[cold]
    #[inline(never)]
    fn retrying(&self, attempt: u32, after: Duration, reason: Reason) {
        tracing::debug!(
            retrier = self.name,
            attempt,
            delay = ?after,
            %reason,
            "retrying"
        );
        #[cfg(feature = "metrics")]
        crate::metrics::counter(&crate::metrics::key_with(
            "rampart_retry_attempts_total",
            vec![
                metrics::Label::new(crate::metrics::NAME, self.name),
                metrics::Label::new("reason", reason.label()),
            ],
        ))
        .increment(1);
        #[cfg(feature = "metrics")]
        crate::metrics::histogram(&crate::metrics::key(
            "rampart_retry_delay_seconds",
            self.name,
            &[],
        ))
        .record(after.as_secs_f64());
        self.hooks.emit(|| RetryEvent::RetryScheduled {
            name: self.name,
            attempt,
            delay: after,
            reason,
        });
    }

    /// Logs and counts why a request ends without another attempt, when it was worth one.
    #[cold]
    #[inline(never)]
    fn returning(&self, decision: Decision, attempts: u32, copy: Option<&NotRetryable>) {
        let (reason, why) = match decision {
            Decision::GiveUp { reason, why } => (reason, why),
            // A custom policy asked for a retry of a request that has no copy.
            Decision::Retry { reason, .. } => (reason, GiveUp::NotRetryable),
            _ => return,
        };
        let cause = match (why, copy) {
            (GiveUp::NotRetryable, Some(NotRetryable::RetriesOff)) => return,
            (GiveUp::NotRetryable, Some(not)) => not.as_str(),
            (why, _) => why.as_str(),
        };
        if why == GiveUp::Budget {
            if let Some(suppressed) = self.budget_log.check() {
                tracing::warn!(
                    retrier = self.name,
                    attempts,
                    %reason,
                    suppressed,
                    "retry budget exhausted; returning the last result"
                );
            }
            #[cfg(feature = "metrics")]
            crate::metrics::count("rampart_retry_budget_exhausted_total", self.name, &[]);
            self.hooks.emit(|| RetryEvent::BudgetExhausted {
                name: self.name,
                attempts,
                reason,
            });
        } else {
            tracing::debug!(
                retrier = self.name,
                attempts,
                %reason,
                cause,
                "not retrying; returning the last result"
            );
        }
        #[cfg(feature = "metrics")]
        crate::metrics::count(
            "rampart_retry_gave_up_total",
            self.name,
            &[("cause", cause)],
        );
        self.hooks.emit(|| RetryEvent::GaveUp {
            name: self.name,
            attempts,
            reason,
            why,
            cause,
        });
    }
}

/// The caller's result, after `attempts` attempts.
fn finish<Req, Res, E, P, M, Err>(
    shared: &Shared<P, M>,
    ended: Result<Result<Res, E>, TimeLimit>,
    attempts: u32,
) -> Result<Res, Err>
where
    P: Policy<Req, Res, E>,
    M: RetryMode<Res, E, Error = Err>,
    Err: From<E>,
{
    let result = match ended {
        Ok(Ok(res)) => Ok(res),
        Ok(Err(e)) => return Err(M::last_error(Err::from(e), attempts)),
        Err(limit) => shared.mode.reject(AttemptTimedOut::new(attempts, limit)),
    };
    result.map(|mut res| {
        shared.policy.finish(&mut res, attempts);
        res
    })
}

impl<S, Req, P, M, St, Err> fmt::Debug for ResponseFuture<S, Req, P, M, St, Err>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Backoff { .. } => "backoff",
            State::Readying { .. } => "readying",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
