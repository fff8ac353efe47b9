use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::time::Instant;
use tower_service::Service;

use super::entry::{CacheEntry, Freshness};
use super::flight::{FlightGuard, Joined};
use super::future::{
    Fill, Lease, Locking, Lookup, Refresh, RefreshPermit, ResponseFuture, StateOf, Waiting,
    wait_for_fill,
};
use super::key::CacheKey;
use super::layer::{Meter, Shared};
use super::mode::{CacheMode, CacheStatus, RequestPolicy};
use super::store::{CacheStore, FillLock, LockMode, StoreOp};
use crate::backend::BackendError;
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
        // No key: not cached, straight to the inner service.
        let Ok(key) = shared.key.extract(&req) else {
            return ResponseFuture::pass(self.inner.call(req), Arc::clone(shared), None);
        };
        let key: CacheKey = key.into();
        if policy == RequestPolicy::Refresh {
            let state = dispatch(shared, Svc::Borrowed(&mut self.inner), req, key, None, None);
            return ResponseFuture::new(state);
        }
        // One clock read per lookup: the store judges expiry and the layer freshness by it.
        let now = Instant::now();
        match shared.store.get_at(&key, now) {
            StoreOp::Ready(found) => {
                let state = dispatch(
                    shared,
                    Svc::Borrowed(&mut self.inner),
                    req,
                    key,
                    Some(found),
                    Some(now),
                );
                ResponseFuture::new(state)
            }
            StoreOp::Pending(get) => {
                let svc = take_ready(&mut self.inner);
                ResponseFuture::looking(Lookup::new(get, svc, req, key, Arc::clone(shared)))
            }
        }
    }
}

/// Moves the service that `poll_ready` readied out, leaving a clone in its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

/// The inner service, readied: borrowed from the layered service (on the `call` path) or owned by
/// a response future (after a store lookup that had to wait).
pub(crate) enum Svc<'a, S> {
    Borrowed(&'a mut S),
    Owned(S),
}

impl<S: Clone> Svc<'_, S> {
    fn call<Req>(self, req: Req) -> S::Future
    where
        S: Service<Req>,
    {
        match self {
            Self::Borrowed(s) => s.call(req),
            Self::Owned(mut s) => s.call(req),
        }
    }

    fn into_owned(self) -> S {
        match self {
            Self::Borrowed(s) => take_ready(s),
            Self::Owned(s) => s,
        }
    }
}

/// Decides what to do with a request once the store has answered (or was skipped, `found` =
/// `None`: a forced refresh, whose fill replaces whatever is stored): serve a hit, serve stale and
/// refresh in the background, or miss (lead a flight or wait for one). `now` is the instant the
/// lookup was made at, if the caller read it (else the clock is read here).
pub(crate) fn dispatch<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    key: super::CacheKey,
    found: Option<Result<Option<CacheEntry<A::Stored>>, BackendError>>,
    now: Option<Instant>,
) -> StateOf<S, Req, X, St, A>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    let mode = if found.is_some() {
        LockMode::UnlessFresh
    } else {
        LockMode::Always
    };
    let mut fallback = None;
    match found {
        Some(Ok(Some(entry))) => {
            let now = now.unwrap_or_else(Instant::now);
            match entry.freshness(now) {
                Freshness::Fresh => {
                    if let Some(res) = shared.mode.replay(&entry, CacheStatus::Hit, now) {
                        shared.count(Meter::Hits);
                        return StateOf::<S, Req, X, St, A>::done(Ok(res));
                    }
                    shared.unusable(&key);
                }
                Freshness::Revalidate => {
                    if let Some(res) = shared.mode.replay(&entry, CacheStatus::Stale, now) {
                        match revalidate(shared, svc, req, &key, entry) {
                            Ok(()) => {
                                shared.count(Meter::Stale);
                                return StateOf::<S, Req, X, St, A>::done(Ok(res));
                            }
                            // No runtime to refresh on: this request refreshes it itself,
                            // falling back to the stale entry if that fails.
                            Err((svc, req, entry)) => {
                                return miss(shared, svc, req, key, Some(entry), mode);
                            }
                        }
                    }
                    shared.unusable(&key);
                }
                Freshness::IfError => fallback = Some(entry),
                Freshness::Expired => {}
            }
        }
        Some(Ok(None)) | None => {}
        Some(Err(e)) => shared.backend_failed("get", &e),
    }
    miss(shared, svc, req, key, fallback, mode)
}

/// A miss: lead the key's flight (call the inner service now) or wait for the one in progress.
fn miss<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    key: super::CacheKey,
    fallback: Option<CacheEntry<A::Stored>>,
    mode: LockMode,
) -> StateOf<S, Req, X, St, A>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    shared.count(Meter::Misses);
    match shared.flights.join(&key) {
        Joined::Leader(guard) => lead(shared, svc, req, guard, fallback, mode),
        Joined::Waiter(flight) => {
            shared.count(Meter::Coalesced);
            tracing::trace!(cache = shared.name, key = %key.for_logs(), "miss: waiting for the call in flight");
            StateOf::<S, Req, X, St, A>::waiting(Waiting::new(
                flight,
                svc.into_owned(),
                req,
                key,
                fallback,
                mode,
                Arc::clone(shared),
            ))
        }
    }
}

/// Leads the flight `guard` holds: with a store shared between processes, takes its fill lock
/// first (or waits for the entry another process is filling); then calls the inner service.
/// Unless `mode` forces a refresh, an entry the store finds fresh as it is asked for the lock
/// (stored since this request's lookup, by another process or another request's fill) is
/// served instead.
pub(crate) fn lead<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    guard: FlightGuard,
    fallback: Option<CacheEntry<A::Stored>>,
    mode: LockMode,
) -> StateOf<S, Req, X, St, A>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    let lock = shared.store.lock(guard.key(), shared.lock_hold, mode);
    let key = guard.key().clone();
    let mut fill = Box::new(Fill::new(Arc::clone(shared), guard, fallback, None));
    let lock = match lock {
        StoreOp::Ready(Ok(FillLock::Fresh(entry))) => {
            let now = Instant::now();
            if entry.freshness(now) == Freshness::Fresh
                && let Some(res) = shared.mode.replay(&entry, CacheStatus::Miss, now)
            {
                tracing::debug!(cache = shared.name, key = %key.for_logs(), "miss: the entry was stored meanwhile; serving it");
                fill.found(entry);
                return StateOf::<S, Req, X, St, A>::done(Ok(res));
            }
            // Fresh no longer, or an entry this mode cannot use: fill the key, as for a miss.
            shared.store.lock(&key, shared.lock_hold, LockMode::Always)
        }
        other => other,
    };
    let wait = match lock {
        StoreOp::Ready(Ok(FillLock::NotShared)) => None,
        StoreOp::Ready(Ok(FillLock::Acquired(token))) => {
            fill.holding_lock(token);
            None
        }
        StoreOp::Ready(Err(e)) => {
            shared.backend_failed("lock", &e);
            fill.with_lease(Lease::Missing);
            None
        }
        // (A store answering an entry to a forced lock: waited on as if the lock were held.)
        StoreOp::Ready(Ok(FillLock::HeldElsewhere | FillLock::Fresh(_))) => Some(None),
        StoreOp::Pending(lock) => Some(Some(lock)),
    };
    match wait {
        None => StateOf::<S, Req, X, St, A>::leading(svc.call(req), fill),
        Some(lock) => {
            let wait = Box::pin(wait_for_fill::<X, St, A, A::Stored>(
                Arc::clone(shared),
                key,
                lock,
            ));
            StateOf::<S, Req, X, St, A>::Locking {
                locking: Box::new(Locking::new(wait, svc.into_owned(), req, fill)),
            }
        }
    }
}

/// Stale-while-revalidate: starts one background refresh of `key` unless one is running or the
/// budget is spent. `Err` hands the request back when there is no tokio runtime to spawn on.
#[allow(clippy::type_complexity)]
fn revalidate<'a, S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'a, S>,
    req: Req,
    key: &super::CacheKey,
    entry: CacheEntry<A::Stored>,
) -> Result<(), (Svc<'a, S>, Req, CacheEntry<A::Stored>)>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return Err((svc, req, entry));
    };
    let Some(permit) = RefreshPermit::try_new(&shared.refreshing, shared.max_refreshes) else {
        tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: background refresh budget spent; not refreshing now");
        return Ok(());
    };
    let Some(guard) = shared.flights.lead(key) else {
        return Ok(()); // a refresh (or a fill) is already in flight
    };
    let lock = shared
        .store
        .lock(key, shared.lock_hold, LockMode::UnlessFresh);
    let mut fill = Fill::new(Arc::clone(shared), guard, Some(entry), Some(permit));
    match lock {
        // Refreshed meanwhile (by another process, or another request's fill): nothing to do.
        StoreOp::Ready(Ok(FillLock::Fresh(entry))) => {
            tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: already refreshed");
            fill.found(entry);
            return Ok(());
        }
        StoreOp::Ready(Ok(FillLock::HeldElsewhere)) => {
            tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: another process is refreshing it");
            return Ok(());
        }
        StoreOp::Ready(Ok(FillLock::Acquired(token))) => fill.holding_lock(token),
        StoreOp::Ready(Ok(FillLock::NotShared)) => {}
        // A refresh that could not take the lock could not store its answer either: the stale
        // entry is served meanwhile, and a later request tries again.
        StoreOp::Ready(Err(e)) => {
            shared.backend_failed("lock", &e);
            return Ok(());
        }
        StoreOp::Pending(lock) => {
            // The call is made now (the service is ready now) but only polled once the lock is
            // known; if another process holds it (or it cannot be had), the call is dropped
            // unpolled.
            let call = svc.call(req);
            let shared = Arc::clone(shared);
            drop(runtime.spawn(async move {
                match lock.await {
                    Ok(FillLock::HeldElsewhere) => return,
                    Ok(FillLock::Fresh(entry)) => {
                        fill.found(entry);
                        return;
                    }
                    Ok(FillLock::Acquired(token)) => fill.holding_lock(token),
                    Ok(FillLock::NotShared) => {}
                    Err(e) => {
                        shared.backend_failed("lock", &e);
                        return;
                    }
                }
                Refresh::<S::Future, A::Capture, X, St, A, A::Stored, Req>::new(call, fill).await;
            }));
            return Ok(());
        }
    }
    tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: refreshing in the background");
    let refresh =
        Refresh::<S::Future, A::Capture, X, St, A, A::Stored, Req>::new(svc.call(req), fill);
    drop(runtime.spawn(refresh));
    Ok(())
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
        let _ = meter;
    }

    /// A stored entry the mode could not turn back into a response: a miss, reported.
    #[cold]
    fn unusable(&self, key: &super::CacheKey) {
        if let Some(suppressed) = self.backend_log.check() {
            tracing::warn!(cache = self.name, key = %key.for_logs(), suppressed, "cached entry could not be used; treating it as a miss");
        }
        self.count(Meter::Unusable);
    }
}
