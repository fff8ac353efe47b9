//! The cache's response future, and the background refresh.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::entry::{CacheEntry, Timing};
use super::flight::{Flight, FlightGuard, Joined, Outcome};
use super::key::CacheKey;
use super::layer::Shared;
use super::mode::{CacheMode, CacheStatus, Captured};
use super::service::{Svc, dispatch, lead};
use super::store::{CacheStore, FillLock, LockMode, StoreOp};
use crate::key::ExtractKey;

/// The state of a [`ResponseFuture`], with the types of one service filled in.
pub(crate) type StateOf<S, Req, X, St, A> = State<
    <S as Service<Req>>::Future,
    Pin<Box<<A as CacheMode<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Capture>>,
    Result<
        <A as CacheMode<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Response,
        <S as Service<Req>>::Error,
    >,
    Box<Fill<X, St, A, StoredOf<S, Req, A>>>,
    Arc<Shared<X, St, A>>,
    Box<Waiting<S, Req, X, St, A, StoredOf<S, Req, A>>>,
    Pin<Box<LookupOf<S, Req, X, St, A>>>,
    Box<Locking<S, Req, Box<Fill<X, St, A, StoredOf<S, Req, A>>>, StoredOf<S, Req, A>>>,
>;

type StoredOf<S, Req, A> =
    <A as CacheMode<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Stored;

type LookupOf<S, Req, X, St, A> = Lookup<
    <St as CacheStore<StoredOf<S, Req, A>>>::Future<Option<CacheEntry<StoredOf<S, Req, A>>>>,
    S,
    Req,
    Arc<Shared<X, St, A>>,
>;

pin_project! {
    /// Response future of [`Cache`](super::Cache).
    ///
    /// A hit is ready at once (no allocation). A miss is the inner call, then (in HTTP mode) the
    /// reading of its body; a request waiting for another's call, and a lookup in a store that
    /// does I/O, each take a boxed slow path.
    pub struct ResponseFuture<S, Req, X, St, A>
    where
        S: Service<Req>,
        A: CacheMode<Req, S::Response, S::Error>,
        St: CacheStore<A::Stored>,
    {
        #[pin]
        state: StateOf<S, Req, X, St, A>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<F, C, R, Fl, Sh, W, L, K> {
        Done { result: Option<R> },
        Passing { #[pin] fut: F, shared: Sh, status: Option<CacheStatus> },
        Leading { #[pin] fut: F, fill: Option<Fl> },
        Capturing { #[pin] capture: C, fill: Option<Fl> },
        Waiting { waiting: W },
        Looking { lookup: L },
        Locking { locking: K },
    }
}

impl<F, C, R, Fl, Sh, W, L, K> State<F, C, R, Fl, Sh, W, L, K> {
    #[inline]
    pub(crate) fn done(result: R) -> Self {
        Self::Done {
            result: Some(result),
        }
    }

    pub(crate) fn leading(fut: F, fill: Fl) -> Self {
        Self::Leading {
            fut,
            fill: Some(fill),
        }
    }
    // (Leading, Capturing: the fill and the capture are boxed, to keep the hit path's future small.)
}

impl<F, C, R, Fl, Sh, T, L, K> State<F, C, R, Fl, Sh, Box<T>, L, K> {
    pub(crate) fn waiting(waiting: T) -> Self {
        Self::Waiting {
            waiting: Box::new(waiting),
        }
    }
}

impl<S, Req, X, St, A> ResponseFuture<S, Req, X, St, A>
where
    S: Service<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    St: CacheStore<A::Stored>,
{
    #[inline]
    pub(crate) fn new(state: StateOf<S, Req, X, St, A>) -> Self {
        Self { state }
    }

    pub(crate) fn pass(
        fut: S::Future,
        shared: Arc<Shared<X, St, A>>,
        status: Option<CacheStatus>,
    ) -> Self {
        Self::new(State::Passing {
            fut,
            shared,
            status,
        })
    }

    pub(crate) fn looking(lookup: LookupOf<S, Req, X, St, A>) -> Self {
        Self::new(State::Looking {
            lookup: Box::pin(lookup),
        })
    }
}

impl<S, Req, X, St, A> Future for ResponseFuture<S, Req, X, St, A>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    type Output = Result<A::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Done { result } => {
                    return Poll::Ready(
                        result.take().expect("cache future polled after completion"),
                    );
                }
                StateProj::Passing {
                    fut,
                    shared,
                    status,
                } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(shared.mode.pass(res, *status)));
                }
                StateProj::Leading { fut, fill } => {
                    let result = ready!(fut.poll(cx));
                    let fill = fill.take().expect("cache future polled after completion");
                    match fill.on_result::<Req, _, _>(result) {
                        Step::Capture(capture, fill) => this.state.set(State::Capturing {
                            capture: Box::pin(capture),
                            fill: Some(fill),
                        }),
                        Step::Done(result) => {
                            this.state.set(State::Done { result: None });
                            return Poll::Ready(result);
                        }
                    }
                }
                StateProj::Capturing { capture, fill } => {
                    let captured = ready!(capture.poll(cx));
                    let fill = fill.take().expect("cache future polled after completion");
                    let res = fill.on_captured::<Req, S::Response, S::Error>(captured);
                    this.state.set(State::Done { result: None });
                    return Poll::Ready(Ok(res));
                }
                StateProj::Waiting { waiting } => match ready!(waiting.poll_next(cx)) {
                    Next::Done(result) => {
                        this.state.set(State::Done { result: None });
                        return Poll::Ready(result);
                    }
                    Next::Pass(fut) => {
                        let shared = Arc::clone(&waiting.shared);
                        this.state.set(State::Passing {
                            fut,
                            shared,
                            status: Some(CacheStatus::Miss),
                        });
                    }
                    Next::Lead(fut, fill) => this.state.set(State::Leading {
                        fut,
                        fill: Some(fill),
                    }),
                    Next::Restart(state) => this.state.set(state),
                },
                StateProj::Locking { locking } => match ready!(locking.poll_locked(cx)) {
                    Next::Done(result) => {
                        this.state.set(State::Done { result: None });
                        return Poll::Ready(result);
                    }
                    Next::Lead(fut, fill) => this.state.set(State::Leading {
                        fut,
                        fill: Some(fill),
                    }),
                    Next::Pass(_) | Next::Restart(()) => {
                        unreachable!("a lock wait leads or answers")
                    }
                },
                StateProj::Looking { lookup } => {
                    let next = ready!(lookup.as_mut().poll_lookup(cx));
                    this.state.set(next);
                }
            }
        }
    }
}

impl<S, Req, X, St, A> fmt::Debug for ResponseFuture<S, Req, X, St, A>
where
    S: Service<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    St: CacheStore<A::Stored>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Done { .. } => "done",
            State::Passing { .. } => "passing",
            State::Leading { .. } => "leading",
            State::Capturing { .. } => "capturing",
            State::Waiting { .. } => "waiting",
            State::Looking { .. } => "looking",
            State::Locking { .. } => "locking",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

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
    shared: Arc<Shared<X, St, A>>,
    guard: Option<FlightGuard>,
    /// The invalidation epoch when the call began.
    epoch: u64,
    /// A stale entry to serve if the call fails.
    fallback: Option<CacheEntry<V>>,
    /// Held by background refreshes.
    _permit: Option<RefreshPermit>,
    /// Releases a shared store's fill lock, when this fill holds one: run when the fill ends
    /// without storing, however it ends (a `Drop` impl cannot name the store's trait, so the
    /// release is a closure made where it can). A fill that stores releases the lock after the
    /// write instead.
    unlock: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Whether this fill may store, as far as a shared store's fill lock goes.
    lease: Lease,
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
        let epoch = shared.epoch();
        Self {
            shared,
            guard: Some(guard),
            epoch,
            fallback,
            _permit: permit,
            unlock: None,
            lease: Lease::NotShared,
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
                if self.fallback.is_some()
                    && shared.mode.is_failure(&res)
                    && let Some(stale) = self.serve_stale::<Req, Res, E>()
                {
                    return Step::Done(Ok(stale));
                }
                let capture = shared.mode.capture(res, shared.lifetimes, &shared.key);
                Step::Capture(capture, self)
            }
            Err(e) => {
                if let Some(stale) = self.serve_stale::<Req, Res, E>() {
                    return Step::Done(Ok(stale));
                }
                tracing::debug!(cache = shared.name, key = %self.key().for_logs(), "miss: the inner call failed; nothing stored");
                let outcome = match shared.mode.share_error(&e) {
                    Some(shared_error) => Outcome::Error(shared_error),
                    None => Outcome::CallThrough,
                };
                self.finish(outcome);
                Step::Done(Err(e))
            }
        }
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
        let res = self.shared.mode.replay(&entry, CacheStatus::Stale, now)?;
        tracing::debug!(cache = self.shared.name, key = %self.key().for_logs(), "refresh failed: serving the stale entry");
        self.shared.count(super::layer::Meter::StaleIfError);
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
        match captured {
            Captured::Store {
                value,
                weight,
                lifetimes,
                response,
            } => {
                let entry = CacheEntry::new(value, Timing::new(Instant::now(), lifetimes), weight);
                self.store(&entry);
                self.finish(Outcome::Entry(entry.into_any(), CacheStatus::Miss));
                response
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
                self.finish(Outcome::CallThrough);
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
        if shared.epoch() != self.epoch {
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
                if shared.epoch() != self.epoch {
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
                        Ok(()) if shared.epoch() != epoch => {
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
fn write_then_unlock<X, St, A, V>(
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
                Ok(()) if shared.epoch() != epoch => {
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
                    Ok(()) if shared.epoch() != epoch => {
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
fn run_write<X, St, A, V>(
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
fn spawn_write(fut: impl Future<Output = ()> + Send + 'static) {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) => drop(rt.spawn(fut)),
        Err(_) => tracing::warn!("cache store write needs a tokio runtime; dropped"),
    }
}

pin_project! {
    /// A background refresh (stale-while-revalidate): the leader's side of a miss, spawned, its
    /// answer dropped.
    pub(crate) struct Refresh<F, C, X, St, A, V, Req> {
        #[pin]
        phase: Phase<F, C, Box<Fill<X, St, A, V>>>,
        _req: PhantomData<fn(Req)>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F, C, Fl> {
        Calling { #[pin] fut: F, fill: Option<Fl> },
        Capturing { #[pin] capture: C, fill: Option<Fl> },
        Done,
    }
}

impl<F, C, X, St, A, V, Req> Refresh<F, C, X, St, A, V, Req> {
    pub(crate) fn new(fut: F, fill: Fill<X, St, A, V>) -> Self {
        Self {
            phase: Phase::Calling {
                fut,
                fill: Some(Box::new(fill)),
            },
            _req: PhantomData,
        }
    }
}

impl<F, C, X, St, A, V, Req, Res, E> Future for Refresh<F, C, X, St, A, V, Req>
where
    F: Future<Output = Result<Res, E>>,
    C: Future<Output = Captured<V, A::Response>>,
    X: crate::key::KeyExtractor,
    A: CacheMode<Req, Res, E, Stored = V, Capture = C>,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut phase = self.project().phase;
        loop {
            match phase.as_mut().project() {
                PhaseProj::Calling { fut, fill } => {
                    let result = ready!(fut.poll(cx));
                    let fill = fill.take().expect("refresh polled after completion");
                    match fill.on_result::<Req, Res, E>(result) {
                        Step::Capture(capture, fill) => phase.set(Phase::Capturing {
                            capture,
                            fill: Some(fill),
                        }),
                        Step::Done(_) => {
                            phase.set(Phase::Done);
                            return Poll::Ready(());
                        }
                    }
                }
                PhaseProj::Capturing { capture, fill } => {
                    let captured = ready!(capture.poll(cx));
                    let fill = fill.take().expect("refresh polled after completion");
                    drop(fill.on_captured::<Req, Res, E>(captured));
                    phase.set(Phase::Done);
                    return Poll::Ready(());
                }
                PhaseProj::Done => return Poll::Ready(()),
            }
        }
    }
}

/// A request waiting for the call in flight for its key.
pub(crate) struct Waiting<S, Req, X, St, A, V> {
    flight: Arc<Flight>,
    slot: Option<usize>,
    svc: Option<S>,
    req: Option<Req>,
    key: CacheKey,
    fallback: Option<CacheEntry<V>>,
    /// How the request would take the fill lock, should it come to lead (a forced refresh or not).
    mode: LockMode,
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
const WAIT_POLL_FIRST: std::time::Duration = std::time::Duration::from_millis(5);

/// The longest pause between two checks while another process fills a key.
const WAIT_POLL_MAX: std::time::Duration = std::time::Duration::from_millis(50);

/// Waits for a shared store's fill lock (`lock`, when the store answered through a future), and
/// while another process holds it, for the entry it is filling. Until the layer's lock wait is
/// over, the store is checked after 5 ms, 10 ms, 20 ms, then every 50 ms: for the entry, and
/// (when it is not there yet) for the lock, which this process takes if it has come free (the
/// holder's call failed or was not storable, or its lock lapsed). The lock is asked for with
/// [`LockMode::UnlessFresh`]: were the holder to store and release it between the check and the
/// lock, the store answers the entry instead of the lock. Then this process leads the fill:
/// holding the lock if it got it, without it (so without storing) if the wait ran out.
///
/// An entry the store answers (from `lock` or a later one) is served only if it is fresh by this
/// process's clock; one a hair from the end of its freshness is waited past like a held lock.
pub(crate) async fn wait_for_fill<X, St, A, V>(
    shared: Arc<Shared<X, St, A>>,
    key: CacheKey,
    lock: Option<St::Future<FillLock<V>>>,
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
        entry.freshness(Instant::now()) == super::entry::Freshness::Fresh
    }
    if let Some(lock) = lock {
        match lock.await {
            Ok(FillLock::NotShared) => return Locked::Lead(Lease::NotShared),
            Ok(FillLock::Acquired(token)) => return Locked::Lead(Lease::Held(token)),
            Ok(FillLock::Fresh(entry)) if is_fresh(&entry) => return Locked::Found(entry),
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
            Ok(Some(entry)) => return Locked::Found(entry),
            Ok(None) => {}
            Err(e) => {
                shared.backend_failed("get", &e);
                return Locked::Lead(Lease::Missing);
            }
        }
        // The lock may be free because its holder has just stored its entry and released it,
        // between the check above and this lock: the lock then answers the entry.
        let lock = match shared
            .store
            .lock(&key, shared.lock_hold, LockMode::UnlessFresh)
        {
            StoreOp::Ready(lock) => lock,
            StoreOp::Pending(f) => f.await,
        };
        match lock {
            Ok(FillLock::Acquired(token)) => {
                tracing::trace!(cache = shared.name, key = %key.for_logs(), "took the fill lock another process held");
                return Locked::Lead(Lease::Held(token));
            }
            Ok(FillLock::Fresh(entry)) if is_fresh(&entry) => return Locked::Found(entry),
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
    wait: Pin<Box<dyn Future<Output = Locked<V>> + Send>>,
    svc: S,
    req: Option<Req>,
    fill: Option<Fl>,
}

impl<S, Req, Fl, V> Locking<S, Req, Fl, V> {
    pub(crate) fn new(
        wait: Pin<Box<dyn Future<Output = Locked<V>> + Send>>,
        svc: S,
        req: Req,
        fill: Fl,
    ) -> Self {
        Self {
            wait,
            svc,
            req: Some(req),
            fill: Some(fill),
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
    fn poll_locked(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Next<S::Future, Result<A::Response, S::Error>, Box<Fill<X, St, A, V>>, ()>> {
        let locked = ready!(self.wait.as_mut().poll(cx));
        let mut fill = self.fill.take().expect("lock wait polled after completion");
        let req = self.req.take().expect("lock wait polled after completion");
        match locked {
            Locked::Found(entry) => {
                let now = Instant::now();
                if let Some(res) = fill.shared.mode.replay(&entry, CacheStatus::Miss, now) {
                    fill.found(entry);
                    return Poll::Ready(Next::Done(Ok(res)));
                }
                // Another process's entry this one cannot use: answer without touching it.
                fill.with_lease(Lease::Missing);
                Poll::Ready(Next::Lead(self.svc.call(req), fill))
            }
            Locked::Lead(lease) => {
                fill.with_lease(lease);
                Poll::Ready(Next::Lead(self.svc.call(req), fill))
            }
        }
    }
}

impl<S, Req, X, St, A, V> Waiting<S, Req, X, St, A, V> {
    pub(crate) fn new(
        flight: Arc<Flight>,
        svc: S,
        req: Req,
        key: CacheKey,
        fallback: Option<CacheEntry<V>>,
        mode: LockMode,
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
    fn poll_next(
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
            let shared = &*self.shared;
            match outcome {
                Outcome::Entry(entry, status) => {
                    let now = Instant::now();
                    if let Some(entry) = CacheEntry::<A::Stored>::from_any(entry)
                        && let Some(res) = shared.mode.replay(&entry, status, now)
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
                Outcome::CallThrough => {
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
                        )));
                    }
                    Joined::Waiter(flight) => self.flight = flight,
                },
            }
        }
    }

    fn call(&mut self) -> S::Future {
        let req = self.req.take().expect("a waiting request calls once");
        self.svc
            .as_mut()
            .expect("a waiting request calls once")
            .call(req)
    }
}

pin_project! {
    /// A lookup in a store that does I/O, holding what the request needs once it is answered.
    pub(crate) struct Lookup<G, S, Req, Sh> {
        #[pin]
        get: G,
        svc: Option<S>,
        req: Option<Req>,
        key: Option<CacheKey>,
        shared: Sh,
    }
}

impl<G, S, Req, Sh> Lookup<G, S, Req, Sh> {
    pub(crate) fn new(get: G, svc: S, req: Req, key: CacheKey, shared: Sh) -> Self {
        Self {
            get,
            svc: Some(svc),
            req: Some(req),
            key: Some(key),
            shared,
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
    fn poll_lookup(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<StateOf<S, Req, X, St, A>> {
        let this = self.project();
        let found = ready!(this.get.poll(cx));
        let svc = this.svc.take().expect("lookup polled after completion");
        let req = this.req.take().expect("lookup polled after completion");
        let key = this.key.take().expect("lookup polled after completion");
        Poll::Ready(dispatch(
            this.shared,
            Svc::Owned(svc),
            req,
            key,
            Some(found),
            None,
        ))
    }
}
