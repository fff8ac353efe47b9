use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::fallback::{FallbackFn, NoFallback};
use super::handle::CircuitHandle;
use super::key::PerKey;
use super::keyed::CircuitMap;
use super::service::CircuitBreaker;
use super::state::{Breaker, Config, Hook, MAX_PROBES, SlowCalls, Wait, WindowConfig};
#[cfg(feature = "redis")]
use super::store::SharedWith;
use super::store::{DEFAULT_SYNC_INTERVAL, NotShared};
use super::transition::Transition;
use crate::classify::ErrorsAreFailures;
#[cfg(feature = "http")]
use crate::classify::{GrpcClassifier, HttpClassifier};
use crate::error::ConfigError;
use crate::key::{GlobalKey, KeyExtractor, KeyLabel};
use crate::rejection::AsError;

/// The most per-key circuits a layer may be given room for.
const MAX_CIRCUITS: usize = 1_000_000;

/// Stops calling an upstream that keeps failing, and probes it until it recovers.
///
/// The layer holds its circuit (or, [per key](super::key), its circuits) in an `Arc`: every clone
/// of the layer and every service it makes share it, and [`handle`](Self::handle) reads and
/// steers it. Build it with
/// [`CircuitBreakerLayer::builder`]. See the [module documentation](super).
pub struct CircuitBreakerLayer<C = ErrorsAreFailures, M = AsError, F = NoFallback, X = GlobalKey>
where
    X: KeyExtractor,
{
    pub(crate) shared: Arc<Shared<C, M, F, X>>,
}

pub(crate) struct Shared<C, M, F, X: KeyExtractor> {
    pub(crate) circuits: Circuits<X::Key>,
    pub(crate) key: X,
    pub(crate) classifier: C,
    pub(crate) mode: M,
    pub(crate) fallback: F,
    /// For circuits shared through a store: the sync task's state, kept alive by the layer.
    #[cfg(feature = "redis")]
    pub(crate) sync: Option<SyncGuard>,
}

/// Keeps a shared layer's sync task's state alive, and starts the task.
#[cfg(feature = "redis")]
pub(crate) struct SyncGuard {
    _driver: Arc<dyn std::any::Any + Send + Sync>,
    signal: Arc<super::shared::Signal>,
}

/// One circuit, or one per key.
pub(crate) enum Circuits<K> {
    One(Arc<Breaker>),
    PerKey(Arc<CircuitMap<K>>),
}

impl<K> fmt::Debug for Circuits<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(b) => b.fmt(f),
            Self::PerKey(map) => map.fmt(f),
        }
    }
}

impl<C, M, F, X: KeyExtractor> Clone for CircuitBreakerLayer<C, M, F, X> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: fmt::Debug, M: fmt::Debug, F: fmt::Debug, X: KeyExtractor + fmt::Debug> fmt::Debug
    for CircuitBreakerLayer<C, M, F, X>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("circuits", &self.shared.circuits)
            .field("key", &self.shared.key)
            .field("classifier", &self.shared.classifier)
            .field("mode", &self.shared.mode)
            .field("fallback", &self.shared.fallback)
            .finish()
    }
}

impl<S, C, M, F, X: KeyExtractor> Layer<S> for CircuitBreakerLayer<C, M, F, X> {
    type Service = CircuitBreaker<S, C, M, F, X>;

    fn layer(&self, inner: S) -> Self::Service {
        #[cfg(feature = "redis")]
        if let Some(sync) = &self.shared.sync {
            sync.signal.ensure_started();
        }
        CircuitBreaker::new(inner, Arc::clone(&self.shared))
    }
}

impl<C, M, F, X: KeyExtractor> CircuitBreakerLayer<C, M, F, X> {
    /// Whether the layer's circuits are shared by the replicas through a store
    /// ([`backend`](CircuitBreakerBuilder::backend)).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.shared.sync.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// For a shared layer: whether its sync task is running. It starts by itself on the first
    /// call (or `build`, `layer`, or handle command) made inside a Tokio runtime, and stops when
    /// the layer, its clones and its services are dropped.
    pub fn is_syncing(&self) -> bool {
        #[cfg(feature = "redis")]
        return self
            .shared
            .sync
            .as_ref()
            .is_some_and(|s| s.signal.is_running());
        #[cfg(not(feature = "redis"))]
        false
    }
}

impl<C, M, F, X: KeyExtractor> CircuitBreakerLayer<C, M, F, X> {
    /// A handle to the layer's circuits: state, counts, and forcing a circuit open, closed or
    /// disabled. For a layer with one circuit, a [`CircuitHandle`] of that circuit; for
    /// [per-key circuits](super::key), a `CircuitHandle<Key>` that reaches each key's circuit
    /// ([`circuit`](CircuitHandle::circuit), [`get`](CircuitHandle::get)).
    pub fn handle(&self) -> CircuitHandle<X::Key> {
        match &self.shared.circuits {
            Circuits::One(breaker) => CircuitHandle::new_one(
                self.shared
                    .key
                    .fixed_key()
                    .expect("a layer with one circuit has one key"),
                Arc::clone(breaker),
            ),
            Circuits::PerKey(map) => CircuitHandle::per_key(Arc::clone(map)),
        }
    }
}

impl CircuitBreakerLayer {
    /// Starts configuring a circuit breaker.
    ///
    /// Defaults: trips at a failure rate of 50% over the last 100 calls (once at least 20 were
    /// made), stays open 30 seconds, then lets 1 probe through; errors are failures; refusals are
    /// `Err(BoxError)` holding [`CircuitOpen`](super::error::CircuitOpen).
    pub fn builder() -> CircuitBreakerBuilder {
        // Tell the metrics recorder (if any) what each metric means.
        #[cfg(feature = "metrics")]
        crate::metrics::describe();
        CircuitBreakerBuilder {
            name: "default",
            failure_rate: None,
            slow_calls: None,
            window: WindowConfig::Count(100),
            minimum_calls: None,
            consecutive_failures: None,
            wait: Wait {
                initial: Duration::from_secs(30),
                multiplier: 1.0,
                max: Duration::from_secs(30),
            },
            half_open_probes: 1,
            classifier: ErrorsAreFailures,
            mode: AsError,
            fallback: NoFallback,
            key: GlobalKey,
            max_circuits: 1_000,
            hooks: Vec::new(),
            store: NotShared,
            sync_interval: DEFAULT_SYNC_INTERVAL,
        }
    }
}

/// Configures a [`CircuitBreakerLayer`]. Made by [`CircuitBreakerLayer::builder`].
///
/// Type parameters: `C` the classifier, `M` the rejection mode, `F` the fallback, `X` the circuit
/// key, `S` where the state lives ([`NotShared`], or [`SharedWith`] a store).
#[must_use = "a builder does nothing until `build` is called"]
pub struct CircuitBreakerBuilder<
    C = ErrorsAreFailures,
    M = AsError,
    F = NoFallback,
    X = GlobalKey,
    S = NotShared,
> {
    name: &'static str,
    failure_rate: Option<f64>,
    slow_calls: Option<SlowCalls>,
    window: WindowConfig,
    minimum_calls: Option<u32>,
    consecutive_failures: Option<u32>,
    wait: Wait,
    half_open_probes: u32,
    classifier: C,
    mode: M,
    fallback: F,
    key: X,
    max_circuits: usize,
    hooks: Vec<Hook>,
    store: S,
    sync_interval: Duration,
}

impl<C: fmt::Debug, M: fmt::Debug, F: fmt::Debug, X: fmt::Debug, S: fmt::Debug> fmt::Debug
    for CircuitBreakerBuilder<C, M, F, X, S>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("name", &self.name)
            .field("failure_rate", &self.failure_rate)
            .field("slow_calls", &self.slow_calls)
            .field("window", &self.window)
            .field("minimum_calls", &self.minimum_calls)
            .field("consecutive_failures", &self.consecutive_failures)
            .field("wait", &self.wait)
            .field("half_open_probes", &self.half_open_probes)
            .field("classifier", &self.classifier)
            .field("mode", &self.mode)
            .field("fallback", &self.fallback)
            .field("key", &self.key)
            .field("max_circuits", &self.max_circuits)
            .field("hooks", &self.hooks.len())
            .field("store", &self.store)
            .field("sync_interval", &self.sync_interval)
            .finish()
    }
}

impl<C, M, F, X, S> CircuitBreakerBuilder<C, M, F, X, S> {
    /// The circuit's name, in logs, hooks and snapshots (default `"default"`). Letters, digits and
    /// `-_.:` only; checked by `build`. A `&'static str`, or a `String` read from configuration
    /// (kept once per distinct name for the life of the process: build layers at start-up).
    pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.name = crate::name::intern(name);
        self
    }

    /// Opens when at least this share of the calls in the window failed (greater than 0, at most
    /// 1). The default, 0.5, applies unless [`consecutive_failures`](Self::consecutive_failures) or
    /// [`slow_calls`](Self::slow_calls) is set without it.
    pub fn failure_rate(mut self, rate: f64) -> Self {
        self.failure_rate = Some(rate);
        self
    }

    /// Measures the rates over the last `calls` calls (the default, with 100).
    pub fn window(mut self, calls: u32) -> Self {
        self.window = WindowConfig::Count(calls);
        self
    }

    /// Measures the rates over the calls of the last `span`, kept in `buckets` buckets (the
    /// window slides by `span / buckets` at a time). Recording then reads the clock.
    pub fn time_window(mut self, span: Duration, buckets: u32) -> Self {
        self.window = WindowConfig::Time { span, buckets };
        self
    }

    /// Calls taking at least `threshold` are slow; the circuit opens when at least `rate` (greater
    /// than 0, at most 1) of the window's calls were slow. A half-open probe that is slow counts as
    /// failed. Each call then reads the clock twice.
    pub fn slow_calls(mut self, threshold: Duration, rate: f64) -> Self {
        self.slow_calls = Some(SlowCalls { threshold, rate });
        self
    }

    /// Calls the window must hold before a rate can open the circuit (default 20, or the window
    /// size if smaller).
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = Some(calls);
        self
    }

    /// Also opens after this many failures in a row. Set alone, it is the only condition (the
    /// failure rate is then off unless set too).
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = Some(failures);
        self
    }

    /// How long the circuit stays open before letting probes through (default 30 s).
    pub fn wait_duration(mut self, wait: Duration) -> Self {
        self.wait = Wait {
            initial: wait,
            multiplier: 1.0,
            max: wait,
        };
        self
    }

    /// Stays open `initial` the first time, `multiplier` times longer each time it reopens without
    /// having closed in between, at most `max`.
    pub fn exponential_wait(mut self, initial: Duration, multiplier: f64, max: Duration) -> Self {
        self.wait = Wait {
            initial,
            multiplier,
            max,
        };
        self
    }

    /// Probe calls let through when half-open (default 1). Exactly this many are admitted, however
    /// many callers arrive at once; the rest are refused at once, not queued.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// Calls `hook` on every change of state (after the change, outside any lock).
    pub fn on_state_change<H>(mut self, hook: H) -> Self
    where
        H: Fn(&Transition) + Send + Sync + 'static,
    {
        self.hooks.push(Arc::new(hook));
        self
    }

    /// What counts as a failure (default [`ErrorsAreFailures`]: errors do, responses do not): any
    /// `Clone` classifier from [`classify`](crate::classify), retry's too. The circuit counts
    /// [failure](crate::classify::Verdict::Failure) and
    /// [transient](crate::classify::Verdict::Transient) verdicts as failures.
    pub fn classify<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2, M, F, X, S> {
        let (b, _, mode, fallback, key, store) = self.split();
        b.join(classifier, mode, fallback, key, store)
    }

    /// How refusals reach the caller (default [`AsError`]); see [`crate::rejection`].
    pub fn rejection<M2>(self, mode: M2) -> CircuitBreakerBuilder<C, M2, F, X, S> {
        let (b, classifier, _, fallback, key, store) = self.split();
        b.join(classifier, mode, fallback, key, store)
    }

    /// Answers refused calls with `fallback(&refusal)` instead of an error or refusal response (for
    /// example a cached or default answer). Calls that reach the upstream and fail are not affected.
    pub fn fallback<G, Res>(self, fallback: G) -> CircuitBreakerBuilder<C, M, FallbackFn<G>, X, S>
    where
        G: Fn(&super::error::CircuitOpen) -> Res + Clone + Send + Sync + 'static,
    {
        let (b, classifier, mode, _, key, store) = self.split();
        b.join(classifier, mode, FallbackFn { f: fallback }, key, store)
    }

    /// Keeps a circuit per key that `key` takes from each request (for example one per upstream
    /// host, [`UpstreamHost`](crate::key::UpstreamHost)), each with this configuration: any
    /// extractor from [`crate::key`]; see [per-key circuits](super::key). The layer's circuits are
    /// then read and steered through [`CircuitBreakerLayer::circuits`]. A call the extractor finds
    /// no key for goes straight to the inner service, through no circuit.
    ///
    /// Keys appear (as their [`KeyLabel`]) in logs, hooks, snapshots, refusals and metrics labels.
    pub fn key<X2>(self, key: X2) -> CircuitBreakerBuilder<C, M, F, PerKey<X2>, S>
    where
        X2: KeyExtractor,
        X2::Key: KeyLabel,
    {
        let (b, classifier, mode, fallback, _, store) = self.split();
        b.join(classifier, mode, fallback, PerKey { extractor: key }, store)
    }

    /// Where the circuits' state lives, as `.backend(..)` says on every layer: in each replica
    /// (the default, or [`MemoryBackend`](crate::backend::MemoryBackend)), or shared with every
    /// replica that builds a layer of the same [name](Self::name) on the same store, with a
    /// [`RedisBackend`](crate::backend::RedisBackend) (or a [`Backend`](crate::backend::Backend)
    /// chosen at run time): replicas protecting one upstream then open, probe and close the circuit
    /// (or, with [`key`](Self::key), each key's circuit) together. See
    /// [Shared circuit state](super#shared-circuit-state).
    ///
    /// Calls still never wait for the store: each replica runs the circuit in memory and syncs it
    /// every [`sync_interval`](Self::sync_interval) in the background. While the store is
    /// unreachable, each replica runs its circuit alone, and follows the shared one again when
    /// the store answers. The store's settings (prefix, timeout) are the backend's. (Feature
    /// `redis`: without it, circuits are always each replica's own.)
    #[cfg(feature = "redis")]
    pub fn backend<B>(self, backend: B) -> CircuitBreakerBuilder<C, M, F, X, SharedWith<B>> {
        let (b, classifier, mode, fallback, key, _) = self.split();
        b.join(classifier, mode, fallback, key, SharedWith { backend })
    }

    /// With a shared [`backend`](Self::backend): how often each replica reports its outcomes and reads the
    /// shared state (default [`DEFAULT_SYNC_INTERVAL`](super::store::DEFAULT_SYNC_INTERVAL),
    /// 250 ms), from 1 ms to 1 hour. A trip reaches every replica within about one interval plus a
    /// round trip; each replica makes one store call per circuit per interval.
    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }

    /// With [`key`](Self::key): the most circuits kept at once (default 1,000; rounded up
    /// to a multiple of the map's shard count). When full, a new key replaces a closed circuit not
    /// used lately (see [`key`](super::key)).
    pub fn max_circuits(mut self, max: usize) -> Self {
        self.max_circuits = max;
        self
    }

    /// Takes the builder apart into its untyped settings and its typed parts.
    fn split(self) -> (Settings, C, M, F, X, S) {
        (
            Settings {
                name: self.name,
                failure_rate: self.failure_rate,
                slow_calls: self.slow_calls,
                window: self.window,
                minimum_calls: self.minimum_calls,
                consecutive_failures: self.consecutive_failures,
                wait: self.wait,
                half_open_probes: self.half_open_probes,
                max_circuits: self.max_circuits,
                hooks: self.hooks,
                sync_interval: self.sync_interval,
            },
            self.classifier,
            self.mode,
            self.fallback,
            self.key,
            self.store,
        )
    }

    /// For HTTP services. Sets exactly:
    ///
    /// - `.classify(HttpClassifier::new())`: errors and `5xx` responses count as failures, other
    ///   responses (`429` included) as successes (see [`HttpClassifier`]);
    /// - `.rejection(AsHttp::new())`: refusals become `503` responses with `Retry-After`, and the
    ///   inner service's errors keep their type.
    ///
    /// Everything else keeps its value.
    #[cfg(feature = "http")]
    pub fn http(self) -> CircuitBreakerBuilder<HttpClassifier, crate::http::AsHttp, F, X, S> {
        self.classify(HttpClassifier::new())
            .rejection(crate::http::AsHttp::new())
    }

    /// For gRPC services. Sets exactly:
    ///
    /// - `.classify(GrpcClassifier::new())`: errors and responses whose `grpc-status` is
    ///   `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL` or `UNAVAILABLE` count as failures, others as
    ///   successes (see [`GrpcClassifier`]);
    /// - `.rejection(AsGrpc::new())`: refusals become trailers-only `UNAVAILABLE` responses with
    ///   retry information, and the inner service's errors keep their type.
    ///
    /// Everything else keeps its value.
    #[cfg(feature = "http")]
    pub fn grpc(self) -> CircuitBreakerBuilder<GrpcClassifier, crate::grpc::AsGrpc, F, X, S> {
        self.classify(GrpcClassifier::new())
            .rejection(crate::grpc::AsGrpc::new())
    }
}

/// The builder's settings that do not change its type.
struct Settings {
    name: &'static str,
    failure_rate: Option<f64>,
    slow_calls: Option<SlowCalls>,
    window: WindowConfig,
    minimum_calls: Option<u32>,
    consecutive_failures: Option<u32>,
    wait: Wait,
    half_open_probes: u32,
    max_circuits: usize,
    hooks: Vec<Hook>,
    sync_interval: Duration,
}

impl Settings {
    fn join<C, M, F, X, S>(
        self,
        classifier: C,
        mode: M,
        fallback: F,
        key: X,
        store: S,
    ) -> CircuitBreakerBuilder<C, M, F, X, S> {
        CircuitBreakerBuilder {
            name: self.name,
            failure_rate: self.failure_rate,
            slow_calls: self.slow_calls,
            window: self.window,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            half_open_probes: self.half_open_probes,
            classifier,
            mode,
            fallback,
            key,
            max_circuits: self.max_circuits,
            hooks: self.hooks,
            store,
            sync_interval: self.sync_interval,
        }
    }

    /// Checks the settings of a shared circuit, beyond [`config`](Self::config)'s.
    #[cfg(feature = "redis")]
    fn shared_spec(&self, cfg: &Config) -> Result<super::store::CircuitSpec, ConfigError> {
        let interval = self.sync_interval;
        if interval < Duration::from_millis(1) || interval > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "sync_interval",
                format!("must be from 1 ms to 1 hour (got {interval:?})"),
            ));
        }
        if let WindowConfig::Time { span, .. } = cfg.window
            && span < interval * 2
        {
            return Err(ConfigError::new(
                "time_window",
                format!(
                    "a shared circuit's window of {span:?} must span at least two sync intervals \
                     ({:?}): outcomes reach it in batches, once per interval; lengthen the window \
                     or shorten sync_interval",
                    interval * 2
                ),
            ));
        }
        Ok(super::store::CircuitSpec {
            cfg: cfg.clone(),
            interval,
        })
    }

    /// Checks the settings.
    fn config(&self) -> Result<Config, ConfigError> {
        let err = |setting, reason: String| Err(ConfigError::new(setting, reason));
        if let Some(rate) = self.failure_rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            return err(
                "failure_rate",
                format!("must be greater than 0 and at most 1 (got {rate})"),
            );
        }
        if let Some(s) = self.slow_calls {
            if !(s.rate > 0.0 && s.rate <= 1.0) {
                return err(
                    "slow_calls",
                    format!(
                        "the rate must be greater than 0 and at most 1 (got {})",
                        s.rate
                    ),
                );
            }
            if s.threshold.is_zero() {
                return err(
                    "slow_calls",
                    "the threshold must be longer than zero".into(),
                );
            }
        }
        let window_calls = match self.window {
            WindowConfig::Count(n) => {
                if n == 0 || n > 1_000_000 {
                    return err(
                        "window",
                        format!("must be from 1 to 1000000 calls (got {n})"),
                    );
                }
                n
            }
            WindowConfig::Time { span, buckets } => {
                if buckets == 0 || buckets > 1_000 {
                    return err(
                        "time_window",
                        format!("buckets must be from 1 to 1000 (got {buckets})"),
                    );
                }
                if span.as_nanos() < u128::from(buckets) {
                    return err(
                        "time_window",
                        format!("a span of {span:?} cannot hold {buckets} buckets; lengthen it"),
                    );
                }
                u32::MAX
            }
        };
        let minimum_calls = self.minimum_calls.unwrap_or(window_calls.min(20));
        if minimum_calls == 0 || minimum_calls > window_calls {
            return err(
                "minimum_calls",
                format!("must be from 1 to the window size, {window_calls} (got {minimum_calls})"),
            );
        }
        if self.consecutive_failures == Some(0) {
            return err("consecutive_failures", "must be at least 1 (got 0)".into());
        }
        let w = self.wait;
        if w.initial.is_zero() {
            return err("wait_duration", "must be longer than zero".into());
        }
        if !(w.multiplier.is_finite() && w.multiplier >= 1.0) {
            return err(
                "exponential_wait",
                format!(
                    "the multiplier must be a finite number of at least 1 (got {})",
                    w.multiplier
                ),
            );
        }
        if w.max < w.initial {
            return err(
                "exponential_wait",
                format!(
                    "the maximum ({:?}) must not be shorter than the initial wait ({:?})",
                    w.max, w.initial
                ),
            );
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_PROBES {
            return err(
                "half_open_probes",
                format!(
                    "must be from 1 to {MAX_PROBES} (got {})",
                    self.half_open_probes
                ),
            );
        }
        crate::error::check_name(self.name)?;
        // With no condition set, the failure rate's default applies.
        let failure_rate = match (
            self.failure_rate,
            self.consecutive_failures,
            self.slow_calls,
        ) {
            (None, None, None) => Some(0.5),
            (rate, _, _) => rate,
        };
        let cfg = Config {
            name: self.name,
            failure_rate,
            slow_calls: self.slow_calls,
            window: self.window,
            minimum_calls,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            half_open_probes: self.half_open_probes,
        };
        Ok(cfg)
    }
}

impl<C, M, F> CircuitBreakerBuilder<C, M, F, GlobalKey, NotShared> {
    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting, when a rate is outside (0, 1], a window, minimum,
    /// threshold or probe count is zero (or the minimum exceeds the window), a wait is zero or
    /// shrinks, or the name has characters logs and headers cannot carry.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
        let (settings, classifier, mode, fallback, key, _) = self.split();
        build_one(settings, classifier, mode, fallback, key)
    }
}

/// A layer with one circuit, kept in this replica.
fn build_one<C, M, F>(
    settings: Settings,
    classifier: C,
    mode: M,
    fallback: F,
    key: GlobalKey,
) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
    let cfg = settings.config()?;
    let breaker = Breaker::new(cfg, None, Arc::from(settings.hooks));
    Ok(CircuitBreakerLayer {
        shared: Arc::new(Shared {
            circuits: Circuits::One(Arc::new(breaker)),
            key,
            classifier,
            mode,
            fallback,
            #[cfg(feature = "redis")]
            sync: None,
        }),
    })
}

#[cfg(feature = "redis")]
impl<C, M, F, B> CircuitBreakerBuilder<C, M, F, GlobalKey, SharedWith<B>>
where
    B: super::store::CircuitBackend<()>,
{
    /// Checks the configuration and builds the layer, whose circuit is shared through the store.
    ///
    /// The sync task starts here when called inside a Tokio runtime, or else with the first call
    /// made inside one.
    ///
    /// # Errors
    ///
    /// As for a layer that is not shared, and when `sync_interval` is outside 1 ms to 1 hour, a
    /// time window spans less than two sync intervals, or the backend's settings are invalid
    /// (for Redis: its prefix or timeout).
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
        let (settings, classifier, mode, fallback, key, store) = self.split();
        if !store.backend.shares() {
            return build_one(settings, classifier, mode, fallback, key);
        }
        let cfg = settings.config()?;
        let spec = settings.shared_spec(&cfg)?;
        let store = store.backend.circuit_store(&spec)?;
        let signal = Arc::new(super::shared::Signal::new());
        let breaker = Arc::new(Breaker::new_shared(
            cfg,
            None,
            Arc::from(settings.hooks),
            &signal,
        ));
        let driver = super::shared::driver(
            store,
            super::shared::Tracked::One((), Arc::clone(&breaker)),
            spec.interval,
            spec.cfg.name,
            Arc::clone(&signal),
        );
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                circuits: Circuits::One(breaker),
                key,
                classifier,
                mode,
                fallback,
                sync: Some(SyncGuard {
                    _driver: driver,
                    signal,
                }),
            }),
        })
    }
}

impl<C, M, F, X> CircuitBreakerBuilder<C, M, F, PerKey<X>, NotShared>
where
    X: KeyExtractor,
    X::Key: KeyLabel,
{
    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// As for a layer with one circuit, and when `max_circuits` is 0 or over 1,000,000.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F, PerKey<X>>, ConfigError> {
        let (settings, classifier, mode, fallback, key, _) = self.split();
        build_per_key(settings, classifier, mode, fallback, key)
    }
}

/// A layer with a circuit per key, kept in this replica.
fn build_per_key<C, M, F, X>(
    settings: Settings,
    classifier: C,
    mode: M,
    fallback: F,
    key: PerKey<X>,
) -> Result<CircuitBreakerLayer<C, M, F, PerKey<X>>, ConfigError>
where
    X: KeyExtractor,
    X::Key: KeyLabel,
{
    let cfg = settings.config()?;
    settings.check_max_circuits()?;
    let map = CircuitMap::new(
        settings.max_circuits,
        cfg,
        Arc::from(settings.hooks),
        label::<X::Key>,
    );
    Ok(CircuitBreakerLayer {
        shared: Arc::new(Shared {
            circuits: Circuits::PerKey(Arc::new(map)),
            key,
            classifier,
            mode,
            fallback,
            #[cfg(feature = "redis")]
            sync: None,
        }),
    })
}

#[cfg(feature = "redis")]
impl<C, M, F, X, B> CircuitBreakerBuilder<C, M, F, PerKey<X>, SharedWith<B>>
where
    X: KeyExtractor,
    X::Key: KeyLabel,
    B: super::store::CircuitBackend<X::Key>,
{
    /// Checks the configuration and builds the layer, whose per-key circuits are shared through
    /// the store (each key's circuit with the same key's on the other replicas).
    ///
    /// # Errors
    ///
    /// As for a shared layer with one circuit, and when `max_circuits` is 0 or over 1,000,000.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F, PerKey<X>>, ConfigError> {
        let (settings, classifier, mode, fallback, key, store) = self.split();
        if !store.backend.shares() {
            return build_per_key(settings, classifier, mode, fallback, key);
        }
        let cfg = settings.config()?;
        settings.check_max_circuits()?;
        let spec = settings.shared_spec(&cfg)?;
        let store = store.backend.circuit_store(&spec)?;
        let signal = Arc::new(super::shared::Signal::new());
        let map = Arc::new(
            CircuitMap::new(
                settings.max_circuits,
                cfg,
                Arc::from(settings.hooks),
                label::<X::Key>,
            )
            .with_signal(Arc::clone(&signal)),
        );
        let driver = super::shared::driver(
            store,
            super::shared::Tracked::PerKey(Arc::clone(&map)),
            spec.interval,
            spec.cfg.name,
            Arc::clone(&signal),
        );
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                circuits: Circuits::PerKey(map),
                key,
                classifier,
                mode,
                fallback,
                sync: Some(SyncGuard {
                    _driver: driver,
                    signal,
                }),
            }),
        })
    }
}

impl Settings {
    fn check_max_circuits(&self) -> Result<(), ConfigError> {
        if self.max_circuits == 0 || self.max_circuits > MAX_CIRCUITS {
            return Err(ConfigError::new(
                "max_circuits",
                format!(
                    "must be from 1 to {MAX_CIRCUITS} (got {})",
                    self.max_circuits
                ),
            ));
        }
        Ok(())
    }
}

/// A key as text, for logs and labels.
fn label<K: KeyLabel>(key: &K) -> Arc<str> {
    key.label()
}
