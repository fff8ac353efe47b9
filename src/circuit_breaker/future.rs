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
    pub struct ResponseFuture<F, C, M, Res, E>
    where
        M: RejectionMode<Res, E>,
    {
        #[pin]
        state: State<F, Recorder<C>, Result<Res, M::Error>>,
        _types: PhantomData<fn() -> (Res, E)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, G, R> {
        Called { #[pin] fut: F, recorder: Option<G> },
        Refused { result: Option<R> },
    }
}

/// Records the call's outcome, or gives a probe permit back if dropped unrecorded.
struct Recorder<C> {
    breaker: Arc<Breaker>,
    /// Taken when the outcome is recorded; still here on drop means the call was cancelled.
    permit: Option<Permit>,
    classifier: C,
}

impl<C> Drop for Recorder<C> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.cancel(permit);
        }
    }
}

impl<F, C, M, Res, E> ResponseFuture<F, C, M, Res, E>
where
    M: RejectionMode<Res, E>,
{
    #[inline]
    pub(crate) fn called(fut: F, permit: Permit, breaker: Arc<Breaker>, classifier: C) -> Self {
        Self {
            state: State::Called {
                fut,
                recorder: Some(Recorder {
                    breaker,
                    permit: Some(permit),
                    classifier,
                }),
            },
            _types: PhantomData,
        }
    }

    #[inline]
    pub(crate) fn refused(result: Result<Res, M::Error>) -> Self {
        Self {
            state: State::Refused {
                result: Some(result),
            },
            _types: PhantomData,
        }
    }
}

impl<F, C, M, Res, E> Future for ResponseFuture<F, C, M, Res, E>
where
    F: Future<Output = Result<Res, E>>,
    C: Classify<Res, E>,
    M: RejectionMode<Res, E>,
{
    type Output = Result<Res, M::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { fut, recorder } => {
                let result = ready!(fut.poll(cx));
                if let Some(mut r) = recorder.take()
                    && let Some(permit) = r.permit.take()
                {
                    let outcome = r.classifier.classify(&result);
                    r.breaker.record(permit, outcome);
                }
                Poll::Ready(result.map_err(M::inner_error))
            }
            StateProj::Refused { result } => Poll::Ready(
                result
                    .take()
                    .expect("circuit breaker future polled after completion"),
            ),
        }
    }
}

impl<F, C, M, Res, E> fmt::Debug for ResponseFuture<F, C, M, Res, E>
where
    M: RejectionMode<Res, E>,
{
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
