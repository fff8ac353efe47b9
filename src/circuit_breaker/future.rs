//! The circuit breaker's response future.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::classify::Classify;
use super::state::{Breaker, Permit};
use crate::rejection::RejectionMode;

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker): the inner call, whose outcome is
    /// recorded when it completes, or a refusal, ready at once.
    ///
    /// A future dropped before it completes (a cancelled call) records nothing, neither success nor
    /// failure; if it was a half-open probe, its permit goes back so another probe can take its place.
    ///
    /// `Err` is the mode's error type, named here rather than through the mode's trait so that the
    /// future's auto traits never depend on trait resolution (which fails for `BoxError` errors in
    /// spawned tasks).
    pub struct ResponseFuture<F, C, M, Res, Err> {
        #[pin]
        state: State<F, Recorder<C>, Result<Res, Err>>,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, G, R> {
        Called { #[pin] fut: F, recorder: Option<G> },
        Refused { result: Option<R> },
    }
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

/// Records the call's outcome, or gives a probe permit back if dropped unrecorded.
struct Recorder<C> {
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

impl<F, C, M, Res, Err> ResponseFuture<F, C, M, Res, Err> {
    #[inline]
    pub(crate) fn called(fut: F, permit: Permit, held: Held, classifier: C) -> Self {
        Self {
            state: State::Called {
                fut,
                recorder: Some(Recorder {
                    held,
                    permit: Some(permit),
                    classifier,
                }),
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
}

impl<F, C, M, Res, E, Err> Future for ResponseFuture<F, C, M, Res, Err>
where
    F: Future<Output = Result<Res, E>>,
    C: Classify<Res, E>,
    M: RejectionMode<Res, E, Error = Err>,
    Err: From<E>,
{
    type Output = Result<Res, Err>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, recorder } => {
                let result = ready!(fut.poll(cx));
                if let Some(mut r) = recorder.take()
                    && let Some(permit) = r.permit.take()
                {
                    let outcome = r.classifier.classify(&result);
                    r.held.breaker().record(permit, outcome);
                }
                Poll::Ready(result.map_err(Err::from))
            }
            StateProj::Refused { result } => Poll::Ready(
                result
                    .take()
                    .expect("circuit breaker future polled after completion"),
            ),
        }
    }
}

impl<F, C, M, Res, Err> fmt::Debug for ResponseFuture<F, C, M, Res, Err> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Refused { .. } => "refused",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
