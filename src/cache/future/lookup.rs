//! A lookup in a store that does I/O, holding what the request needs once it is answered.

use super::*;

pin_project! {
    /// A lookup in a store that does I/O, holding what the request needs once it is answered.
    pub(crate) struct Lookup<G, S, Req, Sh> {
        #[pin]
        get: G,
        svc: Option<S>,
        req: Option<Req>,
        key: Option<CacheKey>,
        shared: Sh,
        conditional: bool,
        // Boxed: rare (a request with `max-age`, `min-fresh` or `only-if-cached`), and this
        // future is every Redis hit's.
        bounds: Option<Box<Bounds>>,
    }
}

impl<G, S, Req, Sh> Lookup<G, S, Req, Sh> {
    pub(crate) fn new(
        get: G,
        svc: S,
        req: Req,
        key: CacheKey,
        shared: Sh,
        conditional: bool,
        bounds: Option<Box<Bounds>>,
    ) -> Self {
        Self {
            get,
            svc: Some(svc),
            req: Some(req),
            key: Some(key),
            shared,
            conditional,
            bounds,
        }
    }
}

impl<S, Req, X, St, A>
    Lookup<
        <St as CacheStore<StoredOf<S, Req, A>>>::Future<Option<CacheEntry<StoredOf<S, Req, A>>>>,
        S,
        Req,
        Arc<Shared<X, St, A>>,
    >
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    pub(crate) fn poll_lookup(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<StateOf<S, Req, X, St, A>> {
        let this = self.project();
        let found = ready!(this.get.poll(cx));
        let svc = this.svc.take().expect("lookup polled after completion");
        let req = this.req.take().expect("lookup polled after completion");
        let key = this.key.take().expect("lookup polled after completion");
        if let Some(bounds) = this.bounds.take() {
            return Poll::Ready(dispatch_bounded(
                this.shared,
                Svc::Owned(svc),
                req,
                key,
                found,
                None,
                *bounds,
            ));
        }
        Poll::Ready(dispatch(
            this.shared,
            Svc::Owned(svc),
            req,
            key,
            Some(found),
            None,
            *this.conditional,
        ))
    }
}
