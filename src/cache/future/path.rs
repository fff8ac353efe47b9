//! The request path after the lookup: a hit is served, a miss leads a fill or joins the flight
//! in progress, a stale entry is served and refreshed.

use super::*;

/// Moves the service that `poll_ready` readied out, leaving a clone in its place.
pub(crate) fn take_ready<S: Clone>(inner: &mut S) -> S {
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
    pub(crate) fn call<Req>(self, req: Req) -> S::Future
    where
        S: Service<Req>,
    {
        match self {
            Self::Borrowed(s) => s.call(req),
            Self::Owned(mut s) => s.call(req),
        }
    }

    pub(crate) fn into_owned(self) -> S {
        match self {
            Self::Borrowed(s) => take_ready(s),
            Self::Owned(s) => s,
        }
    }
}

/// Decides what to do with a request once the store has answered (or was skipped, `found` =
/// `None`: a forced refresh, whose fill replaces whatever is stored): serve a hit, serve stale and
/// refresh in the background, or miss (lead a flight or wait for one). `now` is the instant the
/// lookup was made at, if the caller read it (else the clock is read here). A `conditional`
/// request ([`RequestPolicy::Conditional`](crate::cache::RequestPolicy::Conditional)) whose
/// validators match a fresh or revalidating entry is answered by the mode's `not_modified`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn dispatch<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    key: super::CacheKey,
    found: Option<Result<Option<CacheEntry<A::Stored>>, BackendError>>,
    now: Option<Instant>,
    conditional: bool,
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
            // The fresh and the revalidating answer are written out apart: one closure for both
            // cost the Redis hit about 30 instructions (`INSTRUCTIONS_ONLY=1 INSTRUCTIONS_CALLS=2000
            // cargo bench --bench instructions --all-features -- redis64/r`: 17,035 written out,
            // 17,060 / 17,065 / 17,080 with the closure).
            match entry.freshness(now) {
                Freshness::Fresh => {
                    let not_modified = match conditional {
                        true => shared
                            .mode
                            .not_modified(&req, &entry, CacheStatus::Hit, now),
                        false => None,
                    };
                    if let Some(res) =
                        not_modified.or_else(|| shared.mode.replay(&entry, CacheStatus::Hit, now))
                    {
                        shared.count(Meter::Hits);
                        return StateOf::<S, Req, X, St, A>::done(Ok(res));
                    }
                    shared.unusable(&key);
                }
                Freshness::Revalidate => {
                    let not_modified = match conditional {
                        true => shared
                            .mode
                            .not_modified(&req, &entry, CacheStatus::Stale, now),
                        false => None,
                    };
                    if let Some(res) =
                        not_modified.or_else(|| shared.mode.replay(&entry, CacheStatus::Stale, now))
                    {
                        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                            // No runtime to refresh on: this request refreshes it itself (its
                            // validators kept for its own answer), falling back to the stale
                            // entry if that fails.
                            return miss(shared, svc, req, key, Some(entry), mode, conditional);
                        };
                        let req = match conditional {
                            true => shared.mode.unconditional(req),
                            false => req,
                        };
                        revalidate(shared, &runtime, svc, req, &key, entry);
                        shared.count(Meter::Stale);
                        return StateOf::<S, Req, X, St, A>::done(Ok(res));
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
    miss(shared, svc, req, key, fallback, mode, conditional)
}

/// [`dispatch`] for a request that says what stored answer it accepts
/// ([`RequestPolicy::Bounded`](crate::cache::mode::RequestPolicy::Bounded)): a fresh entry within
/// its bounds is served as any; one outside them (too old, too close to its end, stale) is
/// refreshed as for a reload; with `only_if_cached`, a request the cache cannot answer within its
/// bounds gets the mode's [`unsatisfiable`](CacheMode::unsatisfiable) answer (HTTP `504`) and no
/// call is made. Out of the way of the common path.
#[cold]
#[inline(never)]
pub(crate) fn dispatch_bounded<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    key: super::CacheKey,
    found: Result<Option<CacheEntry<A::Stored>>, BackendError>,
    now: Option<Instant>,
    bounds: Bounds,
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
    let now = now.unwrap_or_else(Instant::now);
    let within = |entry: &CacheEntry<A::Stored>| {
        entry.freshness(now) == Freshness::Fresh
            && bounds.max_age.is_none_or(|max| entry.age(now) <= max)
            && bounds
                .min_fresh
                .is_none_or(|min| entry.timing().fresh_until.saturating_duration_since(now) >= min)
    };
    if matches!(&found, Ok(Some(entry)) if within(entry)) {
        return dispatch(
            shared,
            svc,
            req,
            key,
            Some(found),
            Some(now),
            bounds.conditional,
        );
    }
    if bounds.only_if_cached
        && let Some(res) = shared.mode.unsatisfiable(&req)
    {
        if let Err(e) = &found {
            shared.backend_failed("get", e);
        }
        // Counted as a miss (nothing served from the cache), though no call was made.
        shared.count(Meter::Misses);
        return StateOf::<S, Req, X, St, A>::done(Ok(res));
    }
    match found {
        // Stored, but not as fresh as asked: fetched and stored again, for every client.
        Ok(Some(_)) => dispatch(shared, svc, req, key, None, None, bounds.conditional),
        other => dispatch(
            shared,
            svc,
            req,
            key,
            Some(other),
            Some(now),
            bounds.conditional,
        ),
    }
}

/// A miss: lead the key's flight (call the inner service now) or wait for the one in progress.
///
/// A `conditional` request keeps its validators while it waits: a stored answer it is served
/// (the flight's entry, a stale one, another process's) is the mode's `not_modified` when they
/// match it. What it sends to the inner service to fill the key asks for the whole response
/// ([`CacheMode::unconditional`]), as does a leader's call made without the fill lock (its answer,
/// not stored, still goes to this process's waiters), the leader keeping them aside
/// ([`CacheMode::validators`]) for its own answer; a waiter's call through (not stored, not
/// shared) keeps them, so that the origin can answer `304` itself.
#[allow(clippy::too_many_arguments)]
pub(super) fn miss<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    key: super::CacheKey,
    fallback: Option<CacheEntry<A::Stored>>,
    mode: LockMode,
    conditional: bool,
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
        Joined::Leader(guard) => lead(shared, svc, req, guard, fallback, mode, conditional),
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
                conditional,
                Arc::clone(shared),
            ))
        }
    }
}

/// Leads the flight `guard` holds: with a store shared between processes, takes its fill lock
/// first (or waits for the entry another process is filling); then calls the inner service.
/// Unless `mode` forces a refresh, an entry the store finds fresh as it is asked for the lock
/// (stored since this request's lookup, by another process or another request's fill) is
/// served instead (the mode's `not_modified` for a `conditional` request it matches). The call
/// that fills asks for the whole response; a `conditional` request keeps its validators aside in
/// the fill, to be answered `kept_not_modified` when they match what the fill brings.
pub(crate) fn lead<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    svc: Svc<'_, S>,
    req: Req,
    guard: FlightGuard,
    fallback: Option<CacheEntry<A::Stored>>,
    mode: LockMode,
    conditional: bool,
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
                && let Some(res) = conditional
                    .then(|| {
                        shared
                            .mode
                            .not_modified(&req, &entry, CacheStatus::Miss, now)
                    })
                    .flatten()
                    .or_else(|| shared.mode.replay(&entry, CacheStatus::Miss, now))
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
        None => {
            // What fills the cache for every client asks for the whole response; the request's
            // validators are kept to judge what it brings.
            let req = match conditional {
                true => {
                    fill.validators = shared.mode.validators(&req);
                    shared.mode.unconditional(req)
                }
                false => req,
            };
            StateOf::<S, Req, X, St, A>::leading(svc.call(req), fill)
        }
        Some(lock) => {
            let wait = Box::pin(wait_for_fill::<X, St, A, A::Stored>(
                Arc::clone(shared),
                key,
                lock,
                mode,
            ));
            StateOf::<S, Req, X, St, A>::Locking {
                locking: Box::new(Locking::new(wait, svc.into_owned(), req, fill, conditional)),
            }
        }
    }
}

/// Stale-while-revalidate: starts one background refresh of `key` on `runtime` unless one is
/// running or the budget is spent.
pub(super) fn revalidate<S, Req, X, St, A>(
    shared: &Arc<Shared<X, St, A>>,
    runtime: &tokio::runtime::Handle,
    svc: Svc<'_, S>,
    req: Req,
    key: &super::CacheKey,
    entry: CacheEntry<A::Stored>,
) where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    let (hold, name) = (shared.lock_hold, shared.name);
    let Some(permit) = RefreshPermit::try_new(&shared.refreshing, shared.max_refreshes) else {
        tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: background refresh budget spent; not refreshing now");
        return;
    };
    let Some(guard) = shared.flights.lead(key) else {
        return; // a refresh (or a fill) is already in flight
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
            return;
        }
        StoreOp::Ready(Ok(FillLock::HeldElsewhere)) => {
            tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: another process is refreshing it");
            return;
        }
        StoreOp::Ready(Ok(FillLock::Acquired(token))) => fill.holding_lock(token),
        StoreOp::Ready(Ok(FillLock::NotShared)) => {}
        // A refresh that could not take the lock could not store its answer either: the stale
        // entry is served meanwhile, and a later request tries again.
        StoreOp::Ready(Err(e)) => {
            shared.backend_failed("lock", &e);
            return;
        }
        StoreOp::Pending(lock) => {
            // The call is made now (the service is ready now) but only polled once the lock is
            // known; if another process holds it (or it cannot be had), the call is dropped
            // unpolled.
            let call = svc.call(req);
            let shared = Arc::clone(shared);
            drop(runtime.spawn(bounded(hold, name, async move {
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
            })));
            return;
        }
    }
    tracing::debug!(cache = shared.name, key = %key.for_logs(), "stale: refreshing in the background");
    let refresh =
        Refresh::<S::Future, A::Capture, X, St, A, A::Stored, Req>::new(svc.call(req), fill);
    drop(runtime.spawn(bounded(hold, name, refresh)));
}

/// A background refresh, dropped if it takes longer than `hold` (the fill lock's hold, "longer
/// than the slowest fill"): no caller is there to cancel it, and until it ends, requests that miss
/// the key wait for it. Dropped, its fill ends the flight as abandoned (a waiting request leads a
/// new one), releases a shared store's lock and gives its refresh permit back.
async fn bounded(
    hold: std::time::Duration,
    cache: &'static str,
    refresh: impl Future<Output = ()>,
) {
    if tokio::time::timeout(hold, refresh).await.is_err() {
        tracing::debug!(
            cache,
            ?hold,
            "a background refresh took longer than the fill lock's hold: dropped"
        );
    }
}
