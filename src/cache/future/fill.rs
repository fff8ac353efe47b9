//! The leader's side of a miss: its fill, which stores what the call brings back and hands it
//! to the requests waiting on the flight, and the store writes that follow.

use super::*;
use crate::cache::CacheEvent;

/// A permit for one background refresh; given back when dropped.
pub(crate) struct RefreshPermit(Arc<AtomicUsize>);

impl RefreshPermit {
    pub(crate) fn try_new(running: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        running
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(running)))
    }
}

impl Drop for RefreshPermit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The leader's side of a miss: stores what its call brings back and hands it to the waiters.
/// Dropped unfinished (a cancelled leader), its flight guard ends the flight as abandoned.
pub(crate) struct Fill<X, St, A, V> {
    pub(crate) shared: Arc<Shared<X, St, A>>,
    pub(crate) guard: Option<FlightGuard>,
    /// The invalidation epoch when the call began.
    pub(crate) epoch: u64,
    /// A stale entry to serve if the call fails.
    pub(crate) fallback: Option<CacheEntry<V>>,
    /// The call answered a response the mode calls a failure (told to waiters, which may hold a
    /// stale entry of their own to serve).
    pub(crate) failed: bool,
    /// Held by background refreshes.
    pub(crate) _permit: Option<RefreshPermit>,
    /// Releases a shared store's fill lock, when this fill holds one: run when the fill ends
    /// without storing, however it ends (a `Drop` impl cannot name the store's trait, so the
    /// release is a closure made where it can). A fill that stores releases the lock after the
    /// write instead.
    pub(crate) unlock: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Whether this fill may store, as far as a shared store's fill lock goes.
    pub(crate) lease: Lease,
    /// The validators of the conditional request that leads this fill, kept when its call was
    /// made without them ([`CacheMode::validators`]): its answer is the mode's
    /// `kept_not_modified` when they match the entry stored (or the stale entry served).
    pub(crate) validators: Option<crate::cache::Validators<V>>,
    /// When the fill began (for `rampart_cache_fill_duration_seconds`).
    #[cfg(feature = "metrics")]
    pub(crate) started: Instant,
}

/// A fill's standing with a shared store's fill lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lease {
    /// The store is not shared: store freely.
    NotShared,
    /// This fill holds the lock, with this token: store, then release it.
    Held(u64),
    /// The store is shared but this fill does not hold the lock (the wait for another
    /// process's entry ran out, or the lock could not be asked for): answer, but do not store
    /// (the holder stores its own answer).
    Missing,
}

impl<X, St, A, V> Drop for Fill<X, St, A, V> {
    fn drop(&mut self) {
        if let Some(unlock) = self.unlock.take() {
            unlock();
        }
    }
}

/// What a leader does after its call returned.
pub(crate) enum Step<C, Fl, R> {
    Capture(C, Fl),
    Done(R),
}

impl<X, St, A, V> Fill<X, St, A, V>
where
    X: Send + Sync + 'static,
    A: Send + Sync + 'static,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    pub(crate) fn new(
        shared: Arc<Shared<X, St, A>>,
        guard: FlightGuard,
        fallback: Option<CacheEntry<V>>,
        permit: Option<RefreshPermit>,
    ) -> Self {
        let epoch = shared.epoch_of(guard.key().as_bytes());
        Self {
            shared,
            guard: Some(guard),
            epoch,
            fallback,
            failed: false,
            _permit: permit,
            unlock: None,
            lease: Lease::NotShared,
            validators: None,
            #[cfg(feature = "metrics")]
            started: Instant::now(),
        }
    }

    /// This fill holds the shared store's lock for its key, with `token`: release it when done.
    pub(crate) fn holding_lock(&mut self, token: u64) {
        let shared = Arc::clone(&self.shared);
        let key = self.key().clone();
        self.lease = Lease::Held(token);
        self.unlock = Some(Box::new(move || {
            run_write(&shared, "unlock", shared.store.unlock(&key, token));
        }));
    }

    /// Sets this fill's standing with the store's fill lock.
    pub(crate) fn with_lease(&mut self, lease: Lease) {
        match lease {
            Lease::Held(token) => self.holding_lock(token),
            Lease::NotShared | Lease::Missing => self.lease = lease,
        }
    }

    /// Ends the flight with `entry` found in the store (filled by another process, or by another
    /// request's fill since this one's lookup).
    pub(crate) fn found(&mut self, entry: CacheEntry<V>) {
        self.finish(Outcome::Entry(entry.into_any(), CacheStatus::Miss));
    }

    fn key(&self) -> &CacheKey {
        self.guard.as_ref().expect("flight not finished").key()
    }

    /// Records how long the fill took, its upstream call answered (or failed).
    fn timed(&self) {
        #[cfg(feature = "metrics")]
        crate::metrics::histogram(&crate::metrics::key(
            "rampart_cache_fill_duration_seconds",
            self.shared.name,
            &[],
        ))
        .record(self.started.elapsed().as_secs_f64());
    }

    fn finish(&mut self, outcome: Outcome) {
        if let Some(guard) = self.guard.take() {
            guard.finish(outcome);
        }
    }

    /// The inner call returned.
    pub(crate) fn on_result<Req, Res, E>(
        mut self: Box<Self>,
        result: Result<Res, E>,
    ) -> Step<A::Capture, Box<Self>, Result<A::Response, E>>
    where
        X: crate::key::KeyExtractor,
        A: CacheMode<Req, Res, E, Stored = V>,
    {
        let shared = Arc::clone(&self.shared);
        match result {
            Ok(res) => {
                if shared.mode.is_failure(&res) {
                    if let Some(stale) = self.serve_stale::<Req, Res, E>() {
                        return Step::Done(Ok(stale));
                    }
                    self.failed = true;
                }
                let capture = shared.mode.capture(res, shared.lifetimes, &shared.key);
                Step::Capture(capture, self)
            }
            Err(e) => {
                self.timed();
                let name = shared.name;
                shared.hooks.emit(|| CacheEvent::FillFailed { name });
                if let Some(stale) = self.serve_stale::<Req, Res, E>() {
                    return Step::Done(Ok(stale));
                }
                tracing::debug!(cache = shared.name, key = %self.key().for_logs(), "miss: the inner call failed; nothing stored");
                let outcome = match shared.mode.share_error(&e) {
                    Some(shared_error) => Outcome::Error(shared_error),
                    None => Outcome::CallThrough { failed: true },
                };
                self.finish(outcome);
                Step::Done(Err(e))
            }
        }
    }

    /// The mode's `kept_not_modified` for `entry`, when the leading request's kept validators
    /// match it.
    fn not_modified<Req, Res, E>(
        &self,
        entry: &CacheEntry<V>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<A::Response>
    where
        A: CacheMode<Req, Res, E, Stored = V>,
    {
        if !self.validators.as_ref()?.matches(entry) {
            return None;
        }
        self.shared.mode.kept_not_modified(entry, status, now)
    }

    /// Stale-if-error: the stale entry, if there is one still allowed, for this request and for
    /// those waiting for it.
    fn serve_stale<Req, Res, E>(&mut self) -> Option<A::Response>
    where
        A: CacheMode<Req, Res, E, Stored = V>,
    {
        let now = Instant::now();
        let entry = self.fallback.take()?;
        if !entry.usable_if_error(now) {
            return None;
        }
        let res = self
            .not_modified::<Req, Res, E>(&entry, CacheStatus::Stale, now)
            .or_else(|| self.shared.mode.replay(&entry, CacheStatus::Stale, now))?;
        tracing::debug!(cache = self.shared.name, key = %self.key().for_logs(), "refresh failed: serving the stale entry");
        self.shared.count(crate::cache::layer::Meter::StaleIfError);
        self.finish(Outcome::Entry(entry.into_any(), CacheStatus::Stale));
        Some(res)
    }

    /// The response was captured: store it (or not) and answer.
    #[allow(
        clippy::boxed_local,
        reason = "the fill lives in a box; unboxing would copy it"
    )]
    pub(crate) fn on_captured<Req, Res, E>(
        mut self: Box<Self>,
        captured: Captured<V, A::Response>,
    ) -> A::Response
    where
        A: CacheMode<Req, Res, E, Stored = V>,
    {
        self.timed();
        match captured {
            Captured::Store {
                value,
                weight,
                lifetimes,
                response,
            } => {
                let now = Instant::now();
                let entry = CacheEntry::new(value, Timing::new(now, lifetimes), weight);
                self.store(&entry);
                let res = self.not_modified::<Req, Res, E>(&entry, CacheStatus::Miss, now);
                self.finish(Outcome::Entry(entry.into_any(), CacheStatus::Miss));
                res.unwrap_or(response)
            }
            Captured::Pass { response, reason } => {
                tracing::debug!(cache = self.shared.name, key = %self.key().for_logs(), reason, "response not stored");
                #[cfg(feature = "metrics")]
                crate::metrics::counter(&crate::metrics::key(
                    "rampart_cache_not_stored_total",
                    self.shared.name,
                    &[("reason", reason)],
                ))
                .increment(1);
                self.finish(Outcome::CallThrough {
                    failed: self.failed,
                });
                response
            }
        }
    }

    /// Puts `entry` in the store, unless an invalidation happened since the call began (the call
    /// may have read what the invalidation was about). If one happens while the entry is being
    /// put, it is taken back out: the invalidation bumps the epoch before it clears the store, so
    /// either it sees the entry, or this sees the new epoch.
    ///
    /// With a shared store, only the holder of the key's fill lock stores, and it releases the
    /// lock once the write is done (never before: another process would find the lock free and
    /// the entry missing, and fill the key again).
    fn store(&mut self, entry: &CacheEntry<V>) {
        let shared = &*self.shared;
        let key = self.key();
        if shared.epoch_of(key.as_bytes()) != self.epoch {
            tracing::debug!(cache = shared.name, key = %key.for_logs(), "invalidated while fetching; not stored");
            return;
        }
        match self.lease {
            Lease::NotShared => {}
            Lease::Missing => {
                tracing::debug!(cache = shared.name, key = %key.for_logs(), "not stored: this fill does not hold the key's fill lock (its holder stores)");
                return;
            }
            Lease::Held(token) => {
                let key = key.clone();
                // The release goes with the write, after it, rather than from `Drop`.
                self.unlock = None;
                let (write, unlock) = match shared.store.put_locked(&key, entry, token) {
                    Some(write) => (write, None),
                    None => (shared.store.put(key.clone(), entry.clone()), Some(token)),
                };
                write_then_unlock(&self.shared, key, self.epoch, write, unlock);
                return;
            }
        }
        match shared.store.put(key.clone(), entry.clone()) {
            StoreOp::Ready(Ok(())) => {
                if shared.epoch_of(key.as_bytes()) != self.epoch {
                    run_write(&self.shared, "invalidate", shared.store.invalidate(key));
                }
            }
            StoreOp::Ready(Err(e)) => shared.backend_failed("put", &e),
            StoreOp::Pending(put) => {
                let shared = Arc::clone(&self.shared);
                let key = key.clone();
                let epoch = self.epoch;
                spawn_write(async move {
                    match put.await {
                        Ok(()) if shared.epoch_of(key.as_bytes()) != epoch => {
                            let result = match shared.store.invalidate(&key) {
                                StoreOp::Ready(result) => result,
                                StoreOp::Pending(f) => f.await,
                            };
                            if let Err(e) = result {
                                shared.backend_failed("invalidate", &e);
                            }
                        }
                        Ok(()) => {}
                        Err(e) => shared.backend_failed("put", &e),
                    }
                });
            }
        }
    }
}

/// Completes a fill's write under its fill lock, then (when the store did not release the lock
/// with the write) releases the lock, in that order; takes the entry back out if an invalidation
/// came in meanwhile (see [`Fill::store`]).
pub(super) fn write_then_unlock<X, St, A, V>(
    shared: &Arc<Shared<X, St, A>>,
    key: CacheKey,
    epoch: u64,
    write: StoreOp<(), St::Future<()>>,
    unlock: Option<u64>,
) where
    X: Send + Sync + 'static,
    A: Send + Sync + 'static,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    match write {
        StoreOp::Ready(result) => {
            match result {
                Ok(()) if shared.epoch_of(key.as_bytes()) != epoch => {
                    run_write(shared, "invalidate", shared.store.invalidate(&key));
                }
                Ok(()) => {}
                Err(e) => shared.backend_failed("put", &e),
            }
            if let Some(token) = unlock {
                run_write(shared, "unlock", shared.store.unlock(&key, token));
            }
        }
        StoreOp::Pending(write) => {
            let shared = Arc::clone(shared);
            spawn_write(async move {
                let complete = |op: StoreOp<(), St::Future<()>>| async move {
                    match op {
                        StoreOp::Ready(result) => result,
                        StoreOp::Pending(f) => f.await,
                    }
                };
                match write.await {
                    Ok(()) if shared.epoch_of(key.as_bytes()) != epoch => {
                        if let Err(e) = complete(shared.store.invalidate(&key)).await {
                            shared.backend_failed("invalidate", &e);
                        }
                    }
                    Ok(()) => {}
                    Err(e) => shared.backend_failed("put", &e),
                }
                if let Some(token) = unlock
                    && let Err(e) = complete(shared.store.unlock(&key, token)).await
                {
                    shared.backend_failed("unlock", &e);
                }
            });
        }
    }
}

/// Completes a store write: at once, or on the runtime.
pub(super) fn run_write<X, St, A, V>(
    shared: &Arc<Shared<X, St, A>>,
    op: &'static str,
    write: StoreOp<(), St::Future<()>>,
) where
    X: Send + Sync + 'static,
    A: Send + Sync + 'static,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    match write {
        StoreOp::Ready(Ok(())) => {}
        StoreOp::Ready(Err(e)) => shared.backend_failed(op, &e),
        StoreOp::Pending(f) => {
            let shared = Arc::clone(shared);
            spawn_write(async move {
                if let Err(e) = f.await {
                    shared.backend_failed(op, &e);
                }
            });
        }
    }
}

/// Runs a store write in the background on the current runtime (a shared store's write after a
/// miss must not delay the answer). Without a runtime the write is dropped, with a warning.
pub(super) fn spawn_write(fut: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(fut)),
        Err(_) => tracing::warn!("cache store write needs a tokio runtime; dropped"),
    }
}
