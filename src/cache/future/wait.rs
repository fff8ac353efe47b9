//! Requests that wait: for the call in flight for their key in this process, or for another
//! process's fill lock (Redis), then serve its entry or call through.

use super::*;

/// A request waiting for the call in flight for its key.
pub(crate) struct Waiting<S, Req, X, St, A, V> {
    pub(crate) flight: Arc<Flight>,
    pub(crate) slot: Option<usize>,
    pub(crate) svc: Option<S>,
    pub(crate) req: Option<Req>,
    pub(crate) key: CacheKey,
    pub(crate) fallback: Option<CacheEntry<V>>,
    /// How the request would take the fill lock, should it come to lead (a forced refresh or not).
    pub(crate) mode: LockMode,
    /// Whether `req` carries validators: a stored answer they match is served as the mode's
    /// `not_modified`.
    pub(crate) conditional: bool,
    pub(crate) shared: Arc<Shared<X, St, A>>,
}

/// What a waiting request does once the flight ends.
pub(crate) enum Next<F, R, Fl, St> {
    Done(R),
    Pass(F),
    Lead(F, Fl),
    /// Start over from this state (a waiting request that now leads, with a fill lock to take).
    Restart(St),
}

/// What waiting on a shared store's fill lock came to.
pub(crate) enum Locked<V> {
    /// Lead the fill, with this standing with the lock.
    Lead(Lease),
    /// Another process stored the entry meanwhile.
    Found(CacheEntry<V>),
}

/// The first pause between two checks while another process fills a key; each pause doubles, up
/// to [`WAIT_POLL_MAX`].
pub(super) const WAIT_POLL_FIRST: std::time::Duration = std::time::Duration::from_millis(5);

/// The longest pause between two checks while another process fills a key.
pub(super) const WAIT_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// How far apart two reads of one shared entry's `stored_at` may come (see `wait_for_fill`).
const SAME_FILL: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits for a shared store's fill lock (`lock`, when the store answered through a future), and
/// while another process holds it, for the entry it is filling. Until the layer's lock wait is
/// over, the store is checked after 5 ms, 10 ms, 20 ms, then every 50 ms: for the entry, and
/// (when it is not there yet) for the lock, which this process takes if it has come free (the
/// holder's call failed or was not storable, or its lock lapsed). The lock is asked for in the
/// caller's `mode`: with [`LockMode::UnlessFresh`] (a lookup), were the holder to store and
/// release it between the check and the lock, the store answers the entry instead of the lock;
/// with [`LockMode::Always`] (a forced refresh, which the old entry, still fresh, does not
/// satisfy) the lock is taken once free (a holder that stored and released in between then costs
/// one more upstream call). Then this process leads the fill: holding the lock if it got it,
/// without it (so without storing) if the wait ran out.
///
/// An entry the store answers (from `lock` or a later one) is served only if it is fresh by this
/// process's clock; one a hair from the end of its freshness is waited past like a held lock.
pub(crate) async fn wait_for_fill<X, St, A, V>(
    shared: Arc<Shared<X, St, A>>,
    key: CacheKey,
    lock: Option<St::Future<FillLock<V>>>,
    mode: LockMode,
) -> Locked<V>
where
    X: Send + Sync + 'static,
    A: Send + Sync + 'static,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    /// The store's entry for `key` if it is fresh.
    async fn fresh<St: CacheStore<V>, V: Send + Sync + 'static>(
        store: &St,
        key: &CacheKey,
    ) -> Result<Option<CacheEntry<V>>, crate::backend::BackendError> {
        let found = match store.get(key) {
            StoreOp::Ready(found) => found,
            StoreOp::Pending(f) => f.await,
        }?;
        Ok(found.filter(is_fresh))
    }
    fn is_fresh<V>(entry: &CacheEntry<V>) -> bool {
        entry.freshness(Instant::now()) == Freshness::Fresh
    }
    // A forced refresh (`no-cache`, or an entry outside a request's bounds) asked for a new
    // answer: the entry stored before it, still fresh, is not one. It is told apart by when it
    // was stored, read once here. A shared store keeps milliseconds of its wall clock and maps
    // them to this process's clock at each read, through the offset to Redis's `TIME` (learnt
    // from replies, so moved by their latency) and a clock read after the task resumed: two
    // reads of one entry on a loaded host came 3 ms and more apart, and the old answer was
    // served (the `redis_cache` test `a_reload_waiting_on_another_replicas_fill_gets_the_new_
    // answer`, with both cores busy). So [`SAME_FILL`] either way is the same fill. An entry
    // stored that soon after the old one is waited past too: the wait takes the lock once it is
    // free, or ends calling through; slower, never the old answer.
    let old = match mode {
        LockMode::Always => match shared.store.get(&key) {
            StoreOp::Ready(found) => found,
            StoreOp::Pending(f) => f.await,
        }
        .ok()
        .flatten()
        .map(|entry| entry.timing().stored_at),
        LockMode::UnlessFresh => None,
    };
    let new = |entry: &CacheEntry<V>| {
        let at = entry.timing().stored_at;
        is_fresh(entry) && old.is_none_or(|old| at.max(old) - at.min(old) > SAME_FILL)
    };
    if let Some(lock) = lock {
        match lock.await {
            Ok(FillLock::NotShared) => return Locked::Lead(Lease::NotShared),
            Ok(FillLock::Acquired(token)) => return Locked::Lead(Lease::Held(token)),
            Ok(FillLock::Fresh(entry)) if new(&entry) => return Locked::Found(entry),
            Ok(FillLock::HeldElsewhere | FillLock::Fresh(_)) => {}
            Err(e) => {
                shared.backend_failed("lock", &e);
                return Locked::Lead(Lease::Missing);
            }
        }
    }
    if tokio::runtime::Handle::try_current().is_err() {
        return Locked::Lead(Lease::Missing);
    }
    let deadline = Instant::now() + shared.lock_wait;
    let mut pause = WAIT_POLL_FIRST;
    tracing::debug!(cache = shared.name, key = %key.for_logs(), "another process is filling this key; waiting for its entry");
    loop {
        let now = Instant::now();
        if now >= deadline {
            tracing::debug!(cache = shared.name, key = %key.for_logs(), "no entry from the other process in time; calling through (the answer is not stored)");
            return Locked::Lead(Lease::Missing);
        }
        tokio::time::sleep_until(deadline.min(now + pause)).await;
        pause = (pause * 2).min(WAIT_POLL_MAX);
        match fresh(&shared.store, &key).await {
            Ok(Some(entry)) if new(&entry) => return Locked::Found(entry),
            Ok(_) => {}
            Err(e) => {
                shared.backend_failed("get", &e);
                return Locked::Lead(Lease::Missing);
            }
        }
        // The lock may be free because its holder has just stored its entry and released it,
        // between the check above and this lock: the lock then answers the entry.
        // In the caller's mode: a forced refresh's `Always` takes the lock even while the old
        // entry is fresh (`UnlessFresh` would answer that entry, waited past until the wait ran
        // out); a lookup's `UnlessFresh` gets the entry a fill has just stored.
        let lock = match shared.store.lock(&key, shared.lock_hold, mode) {
            StoreOp::Ready(lock) => lock,
            StoreOp::Pending(f) => f.await,
        };
        match lock {
            Ok(FillLock::Acquired(token)) => {
                tracing::trace!(cache = shared.name, key = %key.for_logs(), "took the fill lock another process held");
                return Locked::Lead(Lease::Held(token));
            }
            Ok(FillLock::Fresh(entry)) if new(&entry) => return Locked::Found(entry),
            Ok(FillLock::NotShared) => return Locked::Lead(Lease::NotShared),
            Ok(FillLock::HeldElsewhere | FillLock::Fresh(_)) => {}
            Err(e) => {
                shared.backend_failed("lock", &e);
                return Locked::Lead(Lease::Missing);
            }
        }
    }
}

/// A leader waiting for a shared store's fill lock, or for another process's entry.
pub(crate) struct Locking<S, Req, Fl, V> {
    pub(crate) wait: Pin<Box<dyn Future<Output = Locked<V>> + Send>>,
    pub(crate) svc: S,
    pub(crate) req: Option<Req>,
    pub(crate) fill: Option<Fl>,
    /// Whether `req` carries validators (see [`Waiting::conditional`]); they are taken off before
    /// the call that fills, and kept aside in the fill for this request's own answer.
    pub(crate) conditional: bool,
}

impl<S, Req, Fl, V> Locking<S, Req, Fl, V> {
    pub(crate) fn new(
        wait: Pin<Box<dyn Future<Output = Locked<V>> + Send>>,
        svc: S,
        req: Req,
        fill: Fl,
        conditional: bool,
    ) -> Self {
        Self {
            wait,
            svc,
            req: Some(req),
            fill: Some(fill),
            conditional,
        }
    }
}

impl<S, Req, X, St, A, V> Locking<S, Req, Box<Fill<X, St, A, V>>, V>
where
    S: Service<Req>,
    X: Send + Sync + 'static,
    A: CacheMode<Req, S::Response, S::Error, Stored = V>,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    #[allow(clippy::type_complexity)]
    pub(crate) fn poll_locked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Next<S::Future, Result<A::Response, S::Error>, Box<Fill<X, St, A, V>>, ()>> {
        let locked = ready!(self.wait.as_mut().poll(cx));
        let mut fill = self.fill.take().expect("lock wait polled after completion");
        let req = self.req.take().expect("lock wait polled after completion");
        let mode = &fill.shared.mode;
        let lease = match locked {
            Locked::Found(entry) => {
                let now = Instant::now();
                let served = match self.conditional {
                    true => mode.not_modified(&req, &entry, CacheStatus::Miss, now),
                    false => None,
                };
                if let Some(res) = served.or_else(|| mode.replay(&entry, CacheStatus::Miss, now)) {
                    fill.found(entry);
                    return Poll::Ready(Next::Done(Ok(res)));
                }
                // Another process's entry this one cannot use: answer without touching it.
                Lease::Missing
            }
            Locked::Lead(lease) => lease,
        };
        // What fills the cache for every client asks for the whole response; the request's
        // validators are kept to judge what it brings.
        let req = match self.conditional {
            true => {
                fill.validators = mode.validators(&req);
                mode.unconditional(req)
            }
            false => req,
        };
        fill.with_lease(lease);
        Poll::Ready(Next::Lead(self.svc.call(req), fill))
    }
}

impl<S, Req, X, St, A, V> Waiting<S, Req, X, St, A, V> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        flight: Arc<Flight>,
        svc: S,
        req: Req,
        key: CacheKey,
        fallback: Option<CacheEntry<V>>,
        mode: LockMode,
        conditional: bool,
        shared: Arc<Shared<X, St, A>>,
    ) -> Self {
        Self {
            flight,
            slot: None,
            svc: Some(svc),
            req: Some(req),
            key,
            fallback,
            mode,
            conditional,
            shared,
        }
    }
}

impl<S, Req, X, St, A, V> Drop for Waiting<S, Req, X, St, A, V> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.flight.leave(slot);
        }
    }
}

#[allow(clippy::type_complexity)]
impl<S, Req, X, St, A> Waiting<S, Req, X, St, A, StoredOf<S, Req, A>>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<
        Next<
            S::Future,
            Result<A::Response, S::Error>,
            Box<Fill<X, St, A, StoredOf<S, Req, A>>>,
            StateOf<S, Req, X, St, A>,
        >,
    > {
        loop {
            let outcome = ready!(self.flight.poll_outcome(cx, &mut self.slot));
            self.slot = None; // the flight is over: nothing to leave
            let shared = Arc::clone(&self.shared);
            // The call waited for failed: a stale entry this request found is served, as the
            // leader would have (a leader asked for a fresh answer, or whose lookup failed, has
            // none of its own; the waiters calling again would meet the same failure).
            let failed = matches!(
                outcome,
                Outcome::Error(_) | Outcome::CallThrough { failed: true }
            );
            if failed && let Some(res) = self.serve_stale() {
                return Poll::Ready(Next::Done(Ok(res)));
            }
            match outcome {
                Outcome::Entry(entry, status) => {
                    let now = Instant::now();
                    if let Some(entry) = CacheEntry::<A::Stored>::from_any(entry)
                        && let Some(res) = self
                            .not_modified(&entry, status, now)
                            .or_else(|| shared.mode.replay(&entry, status, now))
                    {
                        return Poll::Ready(Next::Done(Ok(res)));
                    }
                    return Poll::Ready(Next::Pass(self.call()));
                }
                Outcome::Error(e) => {
                    if let Some(e) = shared.mode.shared_error(&e) {
                        return Poll::Ready(Next::Done(Err(e)));
                    }
                    return Poll::Ready(Next::Pass(self.call()));
                }
                Outcome::CallThrough { .. } => {
                    tracing::trace!(cache = shared.name, key = %self.key.for_logs(), "the call waited for was not stored; calling through");
                    return Poll::Ready(Next::Pass(self.call()));
                }
                Outcome::Abandoned => match shared.flights.join(&self.key) {
                    Joined::Leader(guard) => {
                        tracing::debug!(cache = shared.name, key = %self.key.for_logs(), "the call waited for was cancelled; leading a new one");
                        let svc = self.svc.take().expect("a waiting request calls once");
                        let req = self.req.take().expect("a waiting request calls once");
                        return Poll::Ready(Next::Restart(lead(
                            &self.shared,
                            Svc::Owned(svc),
                            req,
                            guard,
                            self.fallback.take(),
                            self.mode,
                            self.conditional,
                        )));
                    }
                    Joined::Waiter(flight) => self.flight = flight,
                },
            }
        }
    }

    /// Stale-if-error for a waiter: its stale entry, if it found one still allowed.
    fn serve_stale(&mut self) -> Option<A::Response> {
        let now = Instant::now();
        let entry = self.fallback.take()?;
        if !entry.usable_if_error(now) {
            return None;
        }
        let res = self
            .not_modified(&entry, CacheStatus::Stale, now)
            .or_else(|| self.shared.mode.replay(&entry, CacheStatus::Stale, now))?;
        tracing::debug!(cache = self.shared.name, key = %self.key.for_logs(), "the call waited for failed: serving the stale entry");
        self.shared.count(Meter::StaleIfError);
        Some(res)
    }

    /// The mode's `not_modified` for `entry`, when this request carries validators that match it.
    fn not_modified(
        &self,
        entry: &CacheEntry<A::Stored>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<A::Response> {
        let req = self.req.as_ref().filter(|_| self.conditional)?;
        self.shared.mode.not_modified(req, entry, status, now)
    }

    /// Calls the inner service with the request as it came (validators kept: its answer is not
    /// stored, and the origin may answer `304` itself).
    fn call(&mut self) -> S::Future {
        let req = self.req.take().expect("a waiting request calls once");
        self.svc
            .as_mut()
            .expect("a waiting request calls once")
            .call(req)
    }
}
