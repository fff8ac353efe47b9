use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::classify::Classify;
use super::error::CircuitOpen;
use super::fallback::{Fallback, NoFallback};
use super::future::ResponseFuture;
use super::layer::Shared;
use crate::rejection::RejectionMode;

/// Guards calls to an upstream with a circuit; made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` is the inner service's. An open circuit refuses from `call`, at once and without
/// touching the inner service (the way tower's `LoadShed` does), so the layer works under axum, which
/// does not honour backpressure. Clones share the circuit.
pub struct CircuitBreaker<S, C, M, F = NoFallback> {
    inner: S,
    shared: Arc<Shared<C, M, F>>,
}

impl<S, C, M, F> CircuitBreaker<S, C, M, F> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, M, F>>) -> Self {
        Self { inner, shared }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, M, F> Clone for CircuitBreaker<S, C, M, F> {
    /// Clones share the circuit. There is no per-instance readiness to reset: permits are taken in
    /// `call`.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, C: fmt::Debug, M: fmt::Debug, F: fmt::Debug> fmt::Debug
    for CircuitBreaker<S, C, M, F>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared.breaker)
            .field("classifier", &self.shared.classifier)
            .field("mode", &self.shared.mode)
            .field("fallback", &self.shared.fallback)
            .finish()
    }
}

impl<S, Req, C, M, F> Service<Req> for CircuitBreaker<S, C, M, F>
where
    S: Service<Req>,
    C: Classify<S::Response, S::Error>,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
    F: Fallback<S::Response>,
{
    type Response = S::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S::Future, C, M, S::Response, M::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(M::Error::from)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        match shared.breaker.acquire() {
            Ok(permit) => ResponseFuture::called(
                self.inner.call(req),
                permit,
                Arc::clone(&shared.breaker),
                shared.classifier.clone(),
            ),
            Err(refusal) => {
                let open =
                    CircuitOpen::new(shared.breaker.cfg.name, refusal.state, refusal.retry_after);
                tracing::debug!(circuit = open.name(), state = %open.state(), "call refused: circuit open");
                ResponseFuture::refused(shared.fallback.refused::<S::Error, M>(open, &shared.mode))
            }
        }
    }
}
