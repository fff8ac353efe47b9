use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tower_layer::Layer;

use super::entry::Lifetimes;
use super::event::CacheEvent;
use super::flight::Flights;
use super::handle::{CacheHandle, HandleImpl};
use super::key::NoKey;
use super::mode::{Cloned, PredicateFn, WeigherFn};
use super::service::Cache;
use super::store::{CacheBackend, CacheSpec};
use crate::error::ConfigError;
use crate::hooks::Hooks;
use crate::key::KeyExtractor;
use crate::throttle::LogThrottle;

#[cfg(feature = "memory")]
type DefaultBackend = crate::backend::MemoryBackend;
#[cfg(not(feature = "memory"))]
type DefaultBackend = crate::backend::NoBackend;

pub use crate::backend::NoBackend;

/// The default bound of the in-memory store: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// The default number of background refreshes (stale-while-revalidate) running at once per layer.
pub const DEFAULT_MAX_REFRESHES: usize = 64;

/// A read-through response cache, with single-flight misses and stale-while-revalidate.
///
/// The layer holds its store in an `Arc`: every clone of the layer, and every service it makes,
/// share one cache, one set of in-flight fills and one [`CacheHandle`]. Build it with
/// [`CacheLayer::builder`], or [`CacheLayer::http`] for an axum router. See the
/// [module documentation](super).
pub struct CacheLayer<X, St, A = Cloned> {
    pub(crate) shared: Arc<Shared<X, St, A>>,
}

/// Everything the services of one layer share.
pub(crate) struct Shared<X, St, A> {
    pub(crate) key: X,
    pub(crate) store: St,
    pub(crate) mode: A,
    pub(crate) lifetimes: Lifetimes,
    pub(crate) name: &'static str,
    pub(crate) flights: Arc<Flights>,
    /// Bumped by every invalidation through a handle: a fill that began under an older epoch
    /// does not store.
    pub(crate) epoch: AtomicU64,
    /// Bumped by a write's invalidation of its resource, the stripe of the resource's keys only
    /// ([`Shared::stripe`]): fills of other resources, running meanwhile, still store.
    pub(crate) write_epochs: Box<[AtomicU64]>,
    /// Background refreshes running now, and the most allowed.
    pub(crate) refreshing: Arc<AtomicUsize>,
    pub(crate) max_refreshes: usize,
    /// Shared stores' fill lock: held at most this long...
    pub(crate) lock_hold: Duration,
    /// ...and waited for at most this long before calling through.
    pub(crate) lock_wait: Duration,
    /// Keeps a failing store (every request would warn) from flooding the logs.
    pub(crate) backend_log: LogThrottle,
    /// Told of hits, misses, stale answers and failures.
    pub(crate) hooks: Hooks<CacheEvent>,
    /// Counter handles, registered on first use.
    #[cfg(feature = "metrics")]
    pub(crate) meters: [std::sync::OnceLock<metrics::Counter>; Meter::COUNT],
}

/// How many stripes the write epochs have: two writes in flight at once to resources of one
/// stripe each keep the other's concurrent fills from storing (a miss more), so enough that
/// this is rare, few enough to stay in a few cache lines.
const WRITE_STRIPES: usize = 64;

/// The counters of the request path.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Meter {
    Hits,
    Misses,
    Stale,
    StaleIfError,
    Coalesced,
    Unusable,
}

impl Meter {
    /// The event a request counted under this meter is.
    pub(crate) fn event(self, name: &'static str) -> CacheEvent {
        match self {
            Self::Hits => CacheEvent::Hit { name },
            Self::Misses => CacheEvent::Miss { name },
            Self::Stale => CacheEvent::Stale { name },
            Self::StaleIfError => CacheEvent::StaleIfError { name },
            Self::Coalesced => CacheEvent::Coalesced { name },
            Self::Unusable => CacheEvent::Unusable { name },
        }
    }

    #[cfg(feature = "metrics")]
    pub(crate) const COUNT: usize = 6;

    #[cfg(feature = "metrics")]
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Hits => "rampart_cache_hits_total",
            Self::Misses => "rampart_cache_misses_total",
            Self::Stale => "rampart_cache_stale_total",
            Self::StaleIfError => "rampart_cache_stale_if_error_total",
            Self::Coalesced => "rampart_cache_coalesced_total",
            Self::Unusable => "rampart_cache_unusable_total",
        }
    }
}

impl<X, St, A> Clone for CacheLayer<X, St, A> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<X: fmt::Debug, St: fmt::Debug, A: fmt::Debug> fmt::Debug for CacheLayer<X, St, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared
            .fmt_fields(f.debug_struct("CacheLayer"))
            .finish()
    }
}

impl<X: fmt::Debug, St: fmt::Debug, A: fmt::Debug> Shared<X, St, A> {
    pub(crate) fn fmt_fields<'a, 'b>(
        &self,
        mut d: fmt::DebugStruct<'a, 'b>,
    ) -> fmt::DebugStruct<'a, 'b> {
        d.field("name", &self.name)
            .field("key", &self.key)
            .field("store", &self.store)
            .field("mode", &self.mode)
            .field("lifetimes", &self.lifetimes)
            .field("in_flight", &self.flights.len());
        d
    }
}

impl<S, X, St, A> Layer<S> for CacheLayer<X, St, A> {
    type Service = Cache<S, X, St, A>;

    fn layer(&self, inner: S) -> Self::Service {
        Cache::new(inner, Arc::clone(&self.shared))
    }
}

impl<X, St, A> CacheLayer<X, St, A> {
    /// The layer's store, shared by all its services (for example to read
    /// [`MemoryCacheStore::bytes`](crate::backend::memory::MemoryCacheStore::bytes)).
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// A handle to invalidate entries of a layer whose mode stores values of type `V` (for a mode
    /// of your own; the built-in modes have [`handle`](CacheLayer::handle)).
    pub fn handle_for<V>(&self) -> CacheHandle
    where
        X: Send + Sync + 'static,
        A: Send + Sync + 'static,
        St: super::CacheStore<V>,
        V: Send + Sync + 'static,
    {
        CacheHandle::new(Arc::new(HandleImpl {
            shared: Arc::clone(&self.shared),
            _value: PhantomData::<fn() -> V>,
        }))
    }
}

#[cfg(feature = "http")]
impl<X, St> CacheLayer<X, St, super::HttpMode>
where
    X: Send + Sync + 'static,
    St: super::CacheStore<super::CachedResponse>,
{
    /// A handle to invalidate entries: one key, a prefix, or all. Cheap to clone; keep it in the
    /// application's state and call it after writes.
    pub fn handle(&self) -> CacheHandle {
        self.handle_for::<super::CachedResponse>()
    }
}

impl<X, St, P, W, G> CacheLayer<X, St, Cloned<P, W, G>>
where
    X: Send + Sync + 'static,
    Cloned<P, W, G>: Send + Sync + 'static,
{
    /// A handle to invalidate entries: one key, a prefix, or all. Cheap to clone; keep it in the
    /// application's state and call it after writes. `V` is the cached response type (inferred
    /// where the layer wraps a service, or named: `handle::<MyResponse>()`).
    pub fn handle<V>(&self) -> CacheHandle
    where
        St: super::CacheStore<V>,
        V: Send + Sync + 'static,
    {
        self.handle_for::<V>()
    }
}

impl CacheLayer<NoKey, (), Cloned> {
    /// Starts configuring a cache: in memory (64 MiB), for services with `Clone` responses
    /// ([`Cloned`]) until [`http`](CacheBuilder::http) is called. A TTL and, for the clone
    /// mode, a key extractor are required.
    pub fn builder() -> CacheBuilder {
        // Tell the metrics recorder (if any) what each metric means.
        #[cfg(feature = "metrics")]
        crate::metrics::describe();
        CacheBuilder {
            key: NoKey,
            backend: DefaultBackend::default(),
            mode: Cloned::new(),
            ttl: None,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            max_bytes: DEFAULT_MAX_BYTES,
            max_refreshes: DEFAULT_MAX_REFRESHES,
            lock_hold: DEFAULT_LOCK_HOLD,
            lock_wait: DEFAULT_LOCK_WAIT,
            name: "default",
            hooks: Hooks::new(),
        }
    }
}

#[cfg(all(feature = "memory", feature = "http"))]
impl
    CacheLayer<
        super::HttpKey,
        crate::backend::memory::MemoryCacheStore<super::CachedResponse>,
        super::HttpMode,
    >
{
    /// An HTTP cache in memory (64 MiB): `GET`/`HEAD` 200, 203 and 204 responses (and other 2xx
    /// that say how long they are fresh) keyed by method and URI, fresh for `ttl` (or the response's
    /// `s-maxage` / `max-age`), bodies up to 1 MiB, with `x-cache` and `age` on every answer. Ready for axum's `Router::layer` / `route_layer`.
    ///
    /// # Panics
    ///
    /// If `ttl` is zero, with the message `builder()...build()` would return as an error.
    pub fn http(ttl: Duration) -> Self {
        match CacheLayer::builder().http().ttl(ttl).build() {
            Ok(layer) => layer,
            Err(e) => panic!("CacheLayer::http: {e}"),
        }
    }
}

/// Configures a [`CacheLayer`]. Made by [`CacheLayer::builder`].
///
/// Type parameters: `X` the key extractor, `B` the backend, `A` the [mode](super::mode).
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone, Debug)]
pub struct CacheBuilder<X = NoKey, B = DefaultBackend, A = Cloned> {
    key: X,
    backend: B,
    pub(crate) mode: A,
    ttl: Option<Duration>,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    max_bytes: u64,
    max_refreshes: usize,
    lock_hold: Duration,
    lock_wait: Duration,
    name: &'static str,
    hooks: Hooks<CacheEvent>,
}

/// The default hold of a shared store's fill lock.
pub const DEFAULT_LOCK_HOLD: Duration = Duration::from_secs(10);

/// The default wait for another process's fill before calling through.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(5);

impl<X, B, A> CacheBuilder<X, B, A> {
    /// How long a stored response is fresh (required; more than zero). In HTTP mode a response's
    /// `s-maxage` or `max-age` takes precedence unless
    /// [`honor_cache_control`](CacheBuilder::honor_cache_control) is off.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// After the TTL, serve the stale entry for up to `window` more while one background call
    /// refreshes it (default: zero, off).
    ///
    /// The refresh runs on the current tokio runtime (`tokio::spawn`); the inner service's
    /// future and the mode's capture must be `Send + 'static`, as they are for axum and tonic.
    /// Outside a runtime, the request that finds the entry stale refreshes it itself instead. At
    /// most [`max_background_refreshes`](Self::max_background_refreshes) run at once; beyond that
    /// stale entries are served without starting a refresh. A refresh that has not answered
    /// within the [`fill_lock`](Self::fill_lock) hold (10 s by default) is dropped, whatever the
    /// store: no caller is there to cancel it, and requests that miss the key wait for it.
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = window;
        self
    }

    /// After the TTL, when a call to refresh an entry fails (an error, or in HTTP mode a 5xx
    /// response), serve the stale entry instead, for up to `window` (default: zero, off). Requests
    /// that found the entry stale and waited for another's call (one asking for a fresh answer,
    /// which has no stale one) are answered from it too when that call fails.
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = window;
        self
    }

    /// The most bytes the store holds (default 64 MiB). Entries are weighed by their value (see
    /// [`weigher`](CacheBuilder::weigher)), key and header; the in-memory store counts its
    /// tables too, and when full evicts entries not read recently (CLOCK).
    ///
    /// In Redis (`RedisCacheStore`, features `redis` and `cache`) it bounds the cache shared by
    /// every replica: each of its slots holds at most `max_bytes / cache_slots`, counting an
    /// entry's stored bytes, Redis name, key (three times) and 256 bytes of bookkeeping, and a
    /// write that needs room evicts the entries that expire soonest (at most 16 per write). The
    /// local fallback holds at most `max_bytes` on its own.
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// The most background refreshes running at once (default 64).
    pub fn max_background_refreshes(mut self, n: usize) -> Self {
        self.max_refreshes = n;
        self
    }

    /// With a store shared by several processes (Redis): a miss takes the store's fill lock for
    /// its key for at most `hold` (default 10 s), so that of many replicas missing one key only
    /// one calls its upstream; the others check the store for its entry every few milliseconds
    /// for up to `wait` (default 5 s), then call through themselves. `hold` should exceed the
    /// slowest fill; past it the lock lapses and another replica may fill too. The in-memory
    /// store needs no lock; with every store, `hold` also bounds a background refresh
    /// ([`stale_while_revalidate`](Self::stale_while_revalidate)), dropped if it runs longer.
    pub fn fill_lock(mut self, hold: Duration, wait: Duration) -> Self {
        self.lock_hold = hold;
        self.lock_wait = wait;
        self
    }

    /// The cache's name, in logs and metrics labels (default `"default"`). Letters, digits and
    /// `-_.:` only; checked by `build`. A `&'static str`, or a `String` read from configuration
    /// (kept once per distinct name for the life of the process: build layers at start-up).
    pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.name = crate::name::intern(name);
        self
    }

    /// Calls `hook` on every [`CacheEvent`]: hits, misses, stale answers, failed fills and
    /// store operations. Hooks run in the order added; a panicking hook is caught and logged.
    /// See [`crate::hooks`].
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&CacheEvent) + Send + Sync + 'static,
    {
        self.hooks = self.hooks.with(hook);
        self
    }

    /// Which requests share a response (required in the clone mode; method and URI in HTTP mode):
    /// any extractor from [`crate::key`] whose keys convert into a
    /// [`CacheKey`](super::CacheKey). A request it finds no key for is not cached: it goes
    /// straight to the inner service.
    pub fn key<X2>(self, key: X2) -> CacheBuilder<X2, B, A>
    where
        X2: KeyExtractor,
        X2::Key: Into<super::CacheKey>,
    {
        CacheBuilder {
            key,
            backend: self.backend,
            mode: self.mode,
            ttl: self.ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            max_bytes: self.max_bytes,
            max_refreshes: self.max_refreshes,
            lock_hold: self.lock_hold,
            lock_wait: self.lock_wait,
            name: self.name,
            hooks: self.hooks,
        }
    }

    /// Where entries live (default: in memory).
    pub fn backend<B2>(self, backend: B2) -> CacheBuilder<X, B2, A> {
        CacheBuilder {
            key: self.key,
            backend,
            mode: self.mode,
            ttl: self.ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            max_bytes: self.max_bytes,
            max_refreshes: self.max_refreshes,
            lock_hold: self.lock_hold,
            lock_wait: self.lock_wait,
            name: self.name,
            hooks: self.hooks,
        }
    }

    /// How responses are kept and replayed ([`Cloned`] or [`HttpMode`](super::HttpMode), or a
    /// mode of your own); see [`mode`](super::mode). (Named apart from the other layers'
    /// `rejection`: a cache refuses nothing; this says what it stores.)
    pub fn cache_mode<A2>(self, mode: A2) -> CacheBuilder<X, B, A2> {
        self.map_mode(|_| mode)
    }

    pub(crate) fn map_mode<A2>(self, f: impl FnOnce(A) -> A2) -> CacheBuilder<X, B, A2> {
        CacheBuilder {
            key: self.key,
            backend: self.backend,
            mode: f(self.mode),
            ttl: self.ttl,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            max_bytes: self.max_bytes,
            max_refreshes: self.max_refreshes,
            lock_hold: self.lock_hold,
            lock_wait: self.lock_wait,
            name: self.name,
            hooks: self.hooks,
        }
    }

    /// For HTTP services: buffers bodies (up to [`max_body_bytes`](CacheBuilder::max_body_bytes))
    /// so responses can be replayed, follows `Cache-Control`, adds `x-cache` and `age`, and keys
    /// by method and URI ([`HttpKey`](super::HttpKey); call [`key`](Self::key) after this to key
    /// differently).
    #[cfg(feature = "http")]
    pub fn http(self) -> CacheBuilder<super::HttpKey, B, super::HttpMode> {
        self.cache_mode(super::HttpMode::new())
            .key(super::HttpKey::new())
    }

    /// Checks the configuration and builds the layer, with its store.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting when the TTL is missing or zero, no key extractor was
    /// set in the clone mode, `max_bytes` or `max_background_refreshes` is zero, an HTTP body cap
    /// is zero or larger than the whole cache, the name has characters logs cannot carry, or the
    /// backend refuses the configuration.
    ///
    /// This is `build` for a mode of your own, whose stored value is `V`; the built-in modes have
    /// `build` ([`HttpMode`](super::HttpMode): no type to name; [`Cloned`]: the response type,
    /// inferred where the layer wraps a service).
    pub fn build_for<V>(self) -> Result<CacheLayer<X, B::Store, A>, ConfigError>
    where
        X: KeyExtractor,
        A: ModeConfig,
        B: CacheBackend<V>,
        V: Send + Sync + 'static,
    {
        let ttl = self.ttl.ok_or_else(|| {
            ConfigError::new(
                "ttl",
                "no TTL was set; call .ttl(Duration::from_secs(60)) or similar",
            )
        })?;
        if ttl.is_zero() {
            return Err(ConfigError::new(
                "ttl",
                "must be longer than zero; to turn caching off, leave the layer out",
            ));
        }
        if self.max_bytes == 0 {
            return Err(ConfigError::new(
                "max_bytes",
                "the cache must be allowed at least 1 byte (got 0)",
            ));
        }
        if self.lock_hold.is_zero() {
            return Err(ConfigError::new(
                "fill_lock",
                "the hold must be longer than zero (and longer than the slowest fill)",
            ));
        }
        if self.max_refreshes == 0 {
            return Err(ConfigError::new(
                "max_background_refreshes",
                "must be at least 1 (got 0); without stale-while-revalidate none run anyway",
            ));
        }
        self.key.validate()?;
        self.mode.validate(self.max_bytes)?;
        crate::error::check_name(self.name)?;
        let spec = CacheSpec {
            name: self.name,
            max_bytes: self.max_bytes,
            max_entry_bytes: self.mode.max_entry_bytes(),
        };
        let store = self.backend.cache_store(&spec)?;
        Ok(CacheLayer {
            shared: Arc::new(Shared {
                key: self.key,
                store,
                mode: self.mode,
                lifetimes: Lifetimes {
                    ttl,
                    stale_while_revalidate: self.stale_while_revalidate,
                    stale_if_error: self.stale_if_error,
                    age: Duration::ZERO,
                },
                name: self.name,
                flights: Flights::new(),
                epoch: AtomicU64::new(0),
                write_epochs: (0..WRITE_STRIPES).map(|_| AtomicU64::new(0)).collect(),
                refreshing: Arc::new(AtomicUsize::new(0)),
                max_refreshes: self.max_refreshes,
                lock_hold: self.lock_hold,
                lock_wait: self.lock_wait,
                backend_log: LogThrottle::new(Duration::from_secs(10)),
                hooks: self.hooks,
                #[cfg(feature = "metrics")]
                meters: Default::default(),
            }),
        })
    }
}

#[cfg(feature = "http")]
impl<X: KeyExtractor, B> CacheBuilder<X, B, super::HttpMode> {
    /// Checks the configuration and builds the layer, with its store, which keeps
    /// [`CachedResponse`](super::CachedResponse)s.
    ///
    /// # Errors
    ///
    /// As [`build_for`](CacheBuilder::build_for).
    pub fn build(
        self,
    ) -> Result<
        CacheLayer<X, <B as CacheBackend<super::CachedResponse>>::Store, super::HttpMode>,
        ConfigError,
    >
    where
        B: CacheBackend<super::CachedResponse>,
    {
        self.build_for::<super::CachedResponse>()
    }
}

impl<X: KeyExtractor, B, P, W, G> CacheBuilder<X, B, Cloned<P, W, G>>
where
    Cloned<P, W, G>: ModeConfig,
{
    /// Checks the configuration and builds the layer, with its store, which keeps the wrapped
    /// service's responses (`V`: inferred where the layer wraps a service, or named:
    /// `build::<MyResponse>()`).
    ///
    /// # Errors
    ///
    /// As [`build_for`](CacheBuilder::build_for).
    #[allow(clippy::type_complexity)]
    pub fn build<V>(self) -> Result<CacheLayer<X, B::Store, Cloned<P, W, G>>, ConfigError>
    where
        B: CacheBackend<V>,
        V: Send + Sync + 'static,
    {
        self.build_for::<V>()
    }
}

impl<X, B, P, W, G> CacheBuilder<X, B, Cloned<P, W, G>> {
    /// Stores only the responses `f` accepts (default: every successful one).
    pub fn predicate<F>(self, f: F) -> CacheBuilder<X, B, Cloned<PredicateFn<F>, W, G>> {
        self.map_mode(|m| Cloned {
            predicate: PredicateFn(f),
            weigher: m.weigher,
            errors: m.errors,
        })
    }

    /// Weighs stored responses with `f`, in bytes, heap data included (default:
    /// `size_of::<Response>()`, which undercounts strings, vectors and other owned data).
    pub fn weigher<F>(self, f: F) -> CacheBuilder<X, B, Cloned<P, WeigherFn<F>, G>> {
        self.map_mode(|m| Cloned {
            predicate: m.predicate,
            weigher: WeigherFn(f),
            errors: m.errors,
        })
    }

    /// When the call that concurrent requests for one key waited for fails, give each of them a
    /// clone of its error (the inner error type must be `Clone`, as `tonic::Status` is), instead of
    /// having each call the inner service itself (the default, [`CallThrough`](super::mode::CallThrough)).
    pub fn share_errors(self) -> CacheBuilder<X, B, Cloned<P, W, super::mode::ShareErrors>> {
        self.map_mode(|m| Cloned {
            predicate: m.predicate,
            weigher: m.weigher,
            errors: super::mode::ShareErrors,
        })
    }
}

/// Settings a mode checks when the layer is built.
pub trait ModeConfig {
    /// Checks the mode's settings against the cache's byte bound.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting that cannot work.
    fn validate(&self, max_bytes: u64) -> Result<(), ConfigError> {
        let _ = max_bytes;
        Ok(())
    }

    /// The largest value the mode stores, when it knows one (default: it does not): the HTTP
    /// mode's body cap. A store that splits the cache's bound checks each part can hold one.
    fn max_entry_bytes(&self) -> Option<u64> {
        None
    }
}

impl<P, W, G> ModeConfig for Cloned<P, W, G> {}

impl<X, St, A> Shared<X, St, A> {
    /// Reports a store failure (throttled): the request goes on as a miss.
    pub(crate) fn backend_failed(&self, op: &'static str, e: &crate::backend::BackendError) {
        if let Some(suppressed) = self.backend_log.check() {
            tracing::warn!(cache = self.name, op, error = %e, suppressed, "cache store failed; going on without it");
        }
        #[cfg(feature = "metrics")]
        crate::metrics::count(
            "rampart_cache_backend_errors_total",
            self.name,
            &[("op", op)],
        );
        self.hooks.emit(|| CacheEvent::StoreFailed {
            name: self.name,
            op,
            error: e.to_string(),
        });
    }

    /// The invalidations `key` has seen: the handle's, and writes' to its resource. A fill
    /// that began under another value does not store.
    pub(crate) fn epoch_of(&self, key: &[u8]) -> u64 {
        let global = self.epoch.load(Ordering::SeqCst);
        global.wrapping_add(self.stripe(key).load(Ordering::SeqCst))
    }

    /// The write epoch of `key`'s stripe, chosen by the key up to its first newline: an HTTP
    /// key's method and resource, without the variant's fields. A write's invalidation bumps the
    /// stripe of each key it removes exactly (`GET resource`); every key its prefixes remove
    /// (`GET resource\n...`) has that stripe too, whatever bytes the resource holds, since its
    /// first newline is within the prefix.
    pub(crate) fn stripe(&self, key: &[u8]) -> &AtomicU64 {
        use std::hash::BuildHasher;
        let head = key.split(|&b| b == b'\n').next().unwrap_or(key);
        let hash = foldhash::quality::FixedState::with_seed(0x5eed).hash_one(head);
        &self.write_epochs[(hash % WRITE_STRIPES as u64) as usize]
    }
}
