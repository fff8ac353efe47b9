use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::future::{Lookup, ResponseFuture, Svc, dispatch, dispatch_bounded, take_ready};
use super::key::CacheKey;
use super::layer::{Meter, Shared};
use super::mode::{CacheMode, RequestPolicy};
use super::store::{CacheStore, StoreOp};
use crate::key::ExtractKey;

/// A read-through cache in front of a service; made by [`CacheLayer`](super::CacheLayer).
///
/// `poll_ready` is the inner service's (a hit does not call it, but could not know it would be a
/// hit before seeing the request). A hit answers from `call` without touching the inner service;
/// a miss calls it from `call` (the leader of a single flight) or waits for the call already in
/// flight for its key. Clones share the cache.
///
/// The inner service must be `Clone` (a request that waits for another's call keeps a ready clone
/// to call through with, should that call fail) and its future `Send + 'static` (background
/// refreshes run on `tokio::spawn`).
pub struct Cache<S, X, St, A> {
    inner: S,
    shared: Arc<Shared<X, St, A>>,
}

impl<S, X, St, A> Cache<S, X, St, A> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<X, St, A>>) -> Self {
        Self { inner, shared }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, X, St, A> Clone for Cache<S, X, St, A> {
    /// Clones share the cache. There is no per-instance readiness to reset.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, X: fmt::Debug, St: fmt::Debug, A: fmt::Debug> fmt::Debug
    for Cache<S, X, St, A>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Cache");
        d.field("inner", &self.inner);
        self.shared.fmt_fields(d).finish()
    }
}

impl<S, Req, X, St, A> Service<Req> for Cache<S, X, St, A>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    X::Key: Into<CacheKey>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    type Response = A::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S, Req, X, St, A>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        let policy = shared.mode.request_policy(&req);
        if policy == RequestPolicy::Bypass {
            return ResponseFuture::pass(self.inner.call(req), Arc::clone(shared), None);
        }
        if policy == RequestPolicy::Invalidate {
            // The resource the request may change, if its key names one; and whether keys have
            // fields after it (variants: `GET resource\n...`), as this request's own key does.
            let resource = shared.key.extract(&req).ok().and_then(|key| {
                let key: CacheKey = key.into();
                let bytes = key.as_bytes();
                let resource = shared.key.resource_of(bytes)?;
                // Where the resource ends in the key (a slice of it; anything else: variants).
                let end = (resource.as_ptr() as usize)
                    .checked_sub(bytes.as_ptr() as usize)
                    .and_then(|start| start.checked_add(resource.len()));
                let variants = end.is_none_or(|end| end != bytes.len());
                Some((Box::<[u8]>::from(resource), variants))
            });
            let fut = self.inner.call(req);
            return match resource {
                Some((resource, variants)) => {
                    ResponseFuture::writing(fut, Arc::clone(shared), resource, variants)
                }
                None => ResponseFuture::pass(fut, Arc::clone(shared), None),
            };
        }
        // No key: not cached, straight to the inner service.
        let Ok(key) = shared.key.extract(&req) else {
            return ResponseFuture::pass(self.inner.call(req), Arc::clone(shared), None);
        };
        let key: CacheKey = key.into();
        if policy == RequestPolicy::Refresh {
            // What refreshes the entry for every client asks for the whole response (the call is
            // made unconditional); a reload with validators keeps them for its own answer: a
            // `304` when they match what the refresh brings (one without any: two lookups).
            let state = dispatch(
                shared,
                Svc::Borrowed(&mut self.inner),
                req,
                key,
                None,
                None,
                true,
            );
            return ResponseFuture::new(state);
        }
        let (conditional, bounds) = match policy {
            RequestPolicy::Bounded(bounds) => (bounds.conditional, Some(bounds)),
            _ => (policy == RequestPolicy::Conditional, None),
        };
        // One clock read per lookup: the store judges expiry and the layer freshness by it.
        let now = Instant::now();
        match shared.store.get_at(&key, now) {
            StoreOp::Ready(found) => {
                if let Some(bounds) = bounds {
                    return ResponseFuture::new(dispatch_bounded(
                        shared,
                        Svc::Borrowed(&mut self.inner),
                        req,
                        key,
                        found,
                        Some(now),
                        bounds,
                    ));
                }
                let state = dispatch(
                    shared,
                    Svc::Borrowed(&mut self.inner),
                    req,
                    key,
                    Some(found),
                    Some(now),
                    conditional,
                );
                ResponseFuture::new(state)
            }
            StoreOp::Pending(get) => {
                let svc = take_ready(&mut self.inner);
                ResponseFuture::looking(Lookup::new(
                    get,
                    svc,
                    req,
                    key,
                    Arc::clone(shared),
                    conditional,
                    bounds.map(Box::new),
                ))
            }
        }
    }
}

impl<X, St, A> Shared<X, St, A> {
    /// Counts one event. The counter's handle is registered with the metrics recorder on first
    /// use and kept, so the hit path does not build a key and look it up on every request.
    #[inline]
    pub(crate) fn count(&self, meter: Meter) {
        #[cfg(feature = "metrics")]
        self.meters[meter as usize]
            .get_or_init(|| {
                crate::metrics::counter(&crate::metrics::key(meter.name(), self.name, &[]))
            })
            .increment(1);
        self.hooks.emit(|| meter.event(self.name));
    }

    /// A stored entry the mode could not turn back into a response: a miss, reported.
    #[cold]
    pub(crate) fn unusable(&self, key: &super::CacheKey) {
        if let Some(suppressed) = self.backend_log.check() {
            tracing::warn!(cache = self.name, key = %key.for_logs(), suppressed, "cached entry could not be used; treating it as a miss");
        }
        self.count(Meter::Unusable);
    }
}
