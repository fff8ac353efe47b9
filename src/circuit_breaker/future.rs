//! The circuit breaker's response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use tower_service::Service;

use super::state::{Breaker, Outcome, Permit};
#[cfg(feature = "redis")]
use super::transition::CircuitState;
use crate::classify::Classify;
use crate::classify::Verdict;
use crate::rejection::RejectionMode;

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker): the inner call, whose outcome is
    /// recorded when it completes, or a refusal, ready at once.
    ///
    /// A future dropped before it completes (a cancelled call) records nothing, neither success nor
    /// failure; if it was a half-open probe, its permit goes back so another probe can take its place.
    ///
    /// On a shared circuit, a caller refused in half-open because its replica has not asked the
    /// shared store for probe permits yet waits for that answer first (briefly: see
    /// [Shared circuit state](super#shared-circuit-state)), holding the request and the readied
    /// inner service; this slow path is boxed.
    ///
    /// `Err` is the mode's error type, named here rather than through the mode's trait so that the
    /// future's auto traits never depend on trait resolution (which fails for `BoxError` errors in
    /// spawned tasks).
    pub struct ResponseFuture<S, Req, C, M, Res, Err>
    where
        S: Service<Req>,
    {
        #[pin]
        state: StateOf<S, Req, C, Res, Err>,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, G, R, W> {
        Called { #[pin] fut: F, recorder: Option<G> },
        Refused { result: Option<R> },
        Waiting { wait: Option<W> },
    }
}

/// The future's state, for a service `S` taking `Req`.
type StateOf<S, Req, C, Res, Err> =
    State<<S as Service<Req>>::Future, Recorder<C>, Result<Res, Err>, WaitBox<S, Req, C, Res, Err>>;

/// The waiting slow path, boxed. `SyncWrapper` keeps the future `Sync` whatever the request is: it
/// is only reached through `&mut self`.
#[cfg(feature = "redis")]
type WaitBox<S, Req, C, Res, Err> = sync_wrapper::SyncWrapper<Box<Waiting<S, Req, C, Res, Err>>>;

/// Without shared circuits nobody waits.
#[cfg(not(feature = "redis"))]
type WaitBox<S, Req, C, Res, Err> = NoWait<(S, Req, C, Res, Err)>;

#[cfg(not(feature = "redis"))]
pub(crate) struct NoWait<T>(PhantomData<fn() -> T>);

/// A caller waiting for its replica's request for a probe permit to be answered.
#[cfg(feature = "redis")]
pub(crate) struct Waiting<S, Req, C, Res, Err> {
    svc: S,
    req: Req,
    held: Held,
    classifier: C,
    ticket: u64,
    sleep: Pin<Box<tokio::time::Sleep>>,
    synced: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    /// What the caller gets if no permit comes (made when it started waiting).
    refused: Result<Res, Err>,
}

/// A service's own reference to its layer's one circuit. Its response futures share this (per
/// service) reference count instead of the circuit's (per layer) one.
pub(crate) struct OwnRef(pub(crate) Arc<Breaker>);

/// The circuit a call went through: the service's own reference to its one circuit, or a per-key
/// circuit.
pub(crate) enum Held {
    One(Arc<OwnRef>),
    Key(Arc<Breaker>),
}

impl Held {
    #[inline]
    pub(crate) fn breaker(&self) -> &Breaker {
        match self {
            Self::One(b) => &b.0,
            Self::Key(b) => b,
        }
    }
}

/// Records the call's outcome, or gives a probe permit back if dropped unrecorded: made before
/// the inner service is called, so that a `call` or a classifier that panics (caught by a
/// `CatchPanic` layer outside) gives its probe back instead of leaving the circuit half-open
/// with every permit held.
pub(crate) struct Recorder<C> {
    held: Held,
    /// Taken when the outcome is recorded; still here on drop means the call was cancelled.
    permit: Option<Permit>,
    classifier: C,
}

impl<C> Drop for Recorder<C> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.held.breaker().cancel(permit);
        }
    }
}

impl<C> Recorder<C> {
    #[inline]
    pub(crate) fn new(held: Held, permit: Permit, classifier: C) -> Self {
        Self {
            held,
            permit: Some(permit),
            classifier,
        }
    }
}

impl<S: Service<Req>, Req, C, M, Res, Err> ResponseFuture<S, Req, C, M, Res, Err> {
    /// The call `fut`, made after `recorder` (which holds its permit).
    #[inline]
    pub(crate) fn called(fut: S::Future, recorder: Recorder<C>) -> Self {
        Self {
            state: State::Called {
                fut,
                recorder: Some(recorder),
            },
            _mode: PhantomData,
        }
    }

    /// A call that goes through no circuit (its per-key extractor found no key): nothing is
    /// recorded.
    #[inline]
    pub(crate) fn passed(fut: S::Future) -> Self {
        Self {
            state: State::Called {
                fut,
                recorder: None,
            },
            _mode: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn refused(result: Result<Res, Err>) -> Self {
        Self {
            state: State::Refused {
                result: Some(result),
            },
            _mode: PhantomData,
        }
    }

    /// Waits with `ticket` for a probe permit, at most `max`, holding the readied `svc` and `req`;
    /// refused with `refused` if none comes.
    #[cfg(feature = "redis")]
    #[cold]
    pub(crate) fn waiting(
        svc: S,
        req: Req,
        held: Held,
        classifier: C,
        ticket: u64,
        max: std::time::Duration,
        refused: Result<Res, Err>,
    ) -> Self {
        let link = held
            .breaker()
            .link
            .as_ref()
            .expect("only shared circuits wait");
        let mut synced = Box::pin(link.next_sync());
        synced.as_mut().enable();
        Self {
            state: State::Waiting {
                wait: Some(sync_wrapper::SyncWrapper::new(Box::new(Waiting {
                    svc,
                    req,
                    held,
                    classifier,
                    ticket,
                    sleep: Box::pin(tokio::time::sleep(max)),
                    synced,
                    refused,
                }))),
            },
            _mode: PhantomData,
        }
    }
}

impl<S, Req, C, M, Res, E, Err> Future for ResponseFuture<S, Req, C, M, Res, Err>
where
    S: Service<Req, Response = Res, Error = E>,
    C: Classify<Res, E>,
    M: RejectionMode<Res, E, Error = Err>,
    Err: From<E>,
{
    type Output = Result<Res, Err>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let next = match self.as_mut().project().state.project() {
                StateProj::Called { fut, recorder } => {
                    let result = ready!(fut.poll(cx));
                    if let Some(mut r) = recorder.take() {
                        // Classified while the recorder holds the permit: a classifier that
                        // panics drops it, and the permit goes back.
                        let verdict = r.classifier.classify(&result);
                        let permit = r.permit.take().expect("held until recorded");
                        match verdict {
                            // Refused below, before the upstream: nothing to count (a probe's
                            // permit goes back).
                            Verdict::Refused { .. } => r.held.breaker().cancel(permit),
                            verdict => r.held.breaker().record(
                                permit,
                                if verdict.is_failure() {
                                    Outcome::Failure
                                } else {
                                    Outcome::Success
                                },
                            ),
                        }
                    }
                    return Poll::Ready(result.map_err(Err::from));
                }
                StateProj::Refused { result } => {
                    return Poll::Ready(
                        result
                            .take()
                            .expect("circuit breaker future polled after completion"),
                    );
                }
                StateProj::Waiting { wait } => {
                    let w = wait
                        .as_mut()
                        .expect("circuit breaker future polled after completion");
                    let permit = ready!(poll_wait(w, cx));
                    let w = wait.take().expect("checked above");
                    finish_wait(w, permit)
                }
            };
            self.as_mut().project().state.set(next);
        }
    }
}

/// Ready with the waiting caller's permit, or `None` once it is refused (and counted).
#[cfg(feature = "redis")]
fn poll_wait<S, Req, C, Res, Err>(
    w: &mut WaitBox<S, Req, C, Res, Err>,
    cx: &mut Context<'_>,
) -> Poll<Option<Permit>> {
    let w = w.get_mut();
    loop {
        let expired = w.sleep.as_mut().poll(cx).is_ready();
        if let Some(decided) = w.held.breaker().acquire_waited(&mut w.ticket, expired) {
            return Poll::Ready(decided.ok());
        }
        ready!(w.synced.as_mut().poll(cx));
        // A sync ended: wait for the next one too if this one did not answer (enabled before the
        // check, so that none is missed).
        let link = w
            .held
            .breaker()
            .link
            .as_ref()
            .expect("only shared circuits wait");
        w.synced = Box::pin(link.next_sync());
        w.synced.as_mut().enable();
    }
}

#[cfg(not(feature = "redis"))]
fn poll_wait<S, Req, C, Res, Err>(
    _: &mut WaitBox<S, Req, C, Res, Err>,
    _: &mut Context<'_>,
) -> Poll<Option<Permit>> {
    unreachable!("nobody waits for a probe permit without shared circuits")
}

/// The caller's permit (the inner service is called) or its refusal.
#[cfg(feature = "redis")]
fn finish_wait<S, Req, C, Res, Err>(
    w: WaitBox<S, Req, C, Res, Err>,
    permit: Option<Permit>,
) -> StateOf<S, Req, C, Res, Err>
where
    S: Service<Req>,
{
    let Waiting {
        mut svc,
        req,
        held,
        classifier,
        refused,
        ..
    } = *w.into_inner();
    match permit {
        Some(permit) => {
            let recorder = Recorder::new(held, permit, classifier);
            State::Called {
                fut: svc.call(req),
                recorder: Some(recorder),
            }
        }
        None => {
            let breaker = held.breaker();
            tracing::debug!(
                circuit = breaker.cfg.name,
                key = breaker.key.as_deref().unwrap_or(""),
                state = %CircuitState::HalfOpen,
                "call refused: circuit open (no probe permit came)"
            );
            State::Refused {
                result: Some(refused),
            }
        }
    }
}

#[cfg(not(feature = "redis"))]
fn finish_wait<S, Req, C, Res, Err>(
    _: WaitBox<S, Req, C, Res, Err>,
    _: Option<Permit>,
) -> StateOf<S, Req, C, Res, Err>
where
    S: Service<Req>,
{
    unreachable!("nobody waits for a probe permit without shared circuits")
}

impl<S: Service<Req>, Req, C, M, Res, Err> fmt::Debug for ResponseFuture<S, Req, C, M, Res, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Refused { .. } => "refused",
            State::Waiting { .. } => "waiting for a probe permit",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
