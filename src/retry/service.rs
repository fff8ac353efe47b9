use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::RetryMode;
use super::future::ResponseFuture;
use super::layer::Shared;
use super::policy::Policy;
use crate::rejection::AsError;

/// Retries failed requests; made by [`RetryLayer`](super::RetryLayer).
///
/// `poll_ready` is the inner service's. `call` sends the first attempt through the service that
/// `poll_ready` readied, and gives the response future a clone of the inner service for the
/// retries, which it readies (`poll_ready`) before each one. Requests that cannot be retried get
/// no clone. Clones share the layer's policy and budget.
pub struct Retry<S, P, M = AsError> {
    inner: S,
    shared: Arc<Shared<P, M>>,
}

impl<S, P, M> Retry<S, P, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<P, M>>) -> Self {
        Self { inner, shared }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, P, M> Clone for Retry<S, P, M> {
    /// Clones share the policy and budget. There is no per-instance readiness to reset.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, P: fmt::Debug, M: fmt::Debug> fmt::Debug for Retry<S, P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("policy", &self.shared.policy)
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl<S, Req, P, M> Service<Req> for Retry<S, P, M>
where
    S: Service<Req> + Clone,
    P: Policy<Req, S::Response, S::Error>,
    M: RetryMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
{
    type Response = S::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, Req, P, M, P::State, M::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(M::Error::from)
    }

    // `instructions` bench, `u64/rampart_retry`: with `#[inline]` alone the call stayed out of
    // line in some builds (+66 instructions of its own, +112 in all against +85 inlined).
    #[inline(always)]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let policy = &self.shared.policy;
        let mut state = policy.start(&req);
        let copy = policy.clone_request(&mut req);
        let limit = policy.attempt_deadline(&mut state);
        // A clone for the retries, left unreadied; the first attempt goes through the service
        // `poll_ready` readied.
        let spare = copy.is_ok().then(|| self.inner.clone());
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, spare, copy, state, limit, Arc::clone(&self.shared))
    }
}
