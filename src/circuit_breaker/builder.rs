//! The builder: `CircuitBreakerLayer::builder()` and its setters (thresholds, window, wait, probes,
//! classifier, rejection, key, backend, hooks).

use std::fmt;
use std::time::Duration;

use super::fallback::{FallbackFn, NoFallback};
use super::key::PerKey;
use super::layer::CircuitBreakerLayer;
use super::state::{Hooks, SlowCalls, Wait, WindowConfig};
#[cfg(feature = "redis")]
use super::store::SharedWith;
use super::store::{DEFAULT_SYNC_INTERVAL, NotShared};
use super::transition::{CircuitEvent, Transition};
use crate::classify::ErrorsAreFailures;
#[cfg(feature = "http")]
use crate::classify::{GrpcClassifier, HttpClassifier};
use crate::key::{GlobalKey, KeyExtractor, KeyLabel};
use crate::rejection::AsError;
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
            key_in_metrics: false,
            classifier: ErrorsAreFailures,
            mode: AsError,
            fallback: NoFallback,
            key: GlobalKey,
            max_circuits: 1_000,
            hooks: Hooks::new(),
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
    pub(super) name: &'static str,
    pub(super) failure_rate: Option<f64>,
    pub(super) slow_calls: Option<SlowCalls>,
    pub(super) window: WindowConfig,
    pub(super) minimum_calls: Option<u32>,
    pub(super) consecutive_failures: Option<u32>,
    pub(super) wait: Wait,
    pub(super) half_open_probes: u32,
    pub(super) key_in_metrics: bool,
    pub(super) classifier: C,
    pub(super) mode: M,
    pub(super) fallback: F,
    pub(super) key: X,
    pub(super) max_circuits: usize,
    pub(super) hooks: Hooks,
    pub(super) store: S,
    pub(super) sync_interval: Duration,
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
            .field("key_in_metrics", &self.key_in_metrics)
            .field("classifier", &self.classifier)
            .field("mode", &self.mode)
            .field("fallback", &self.fallback)
            .field("key", &self.key)
            .field("max_circuits", &self.max_circuits)
            .field("hooks", &self.hooks)
            .field("store", &self.store)
            .field("sync_interval", &self.sync_interval)
            .finish()
    }
}

impl<C, M, F, X, S> CircuitBreakerBuilder<C, M, F, X, S> {
    /// The circuit's name, in logs, hooks and snapshots (default `"default"`). Letters, digits and
    /// `-_.:` only; checked by `build`. A `&'static str`, or a `String` read from configuration
    /// (kept once per distinct name for the life of the process: build layers at start-up).
    ///
    /// **Name every breaker that shares its state** through a [`backend`](Self::backend): the
    /// shared circuit is identified by the backend's prefix and this name, so two breakers of one
    /// application left with the default name share one circuit, and one upstream's failures open
    /// the other's (building a shared circuit named `"default"` logs a warning).
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
    ///
    /// A probe holds its permit until its call ends (a dropped call gives it back). A probe to an
    /// upstream that never answers therefore keeps the circuit half-open, refusing everyone else,
    /// for as long as it hangs: put a timeout *inside* the breaker
    /// (`ServiceBuilder::new().layer(breaker).timeout(d)`), so that such a probe ends as a failure
    /// and the circuit reopens.
    pub fn half_open_probes(mut self, probes: u32) -> Self {
        self.half_open_probes = probes;
        self
    }

    /// With per-key circuits ([`key`](Self::key)): whether each circuit's metrics carry its key as
    /// a `key` label (feature `metrics`; default `false`). Off, the counters of every key's
    /// circuit add up under the layer's `name`, and `rampart_circuit_state` (one circuit's state)
    /// is not reported for them. Turn it on only for keys from a small, fixed set (upstream hosts
    /// you configured): a key a client chooses (its IP, a header) would make a new series per
    /// key, kept by the recorder for good, whatever [`max_circuits`](Self::max_circuits) evicts.
    pub fn key_in_metrics(mut self, on: bool) -> Self {
        self.key_in_metrics = on;
        self
    }

    /// Calls `hook` on every [`CircuitEvent`] (today: every change of state, after the change,
    /// outside any lock). Hooks run in the order added; a panicking hook is caught and logged.
    /// See [`crate::hooks`].
    pub fn on_event<H>(mut self, hook: H) -> Self
    where
        H: Fn(&CircuitEvent) + Send + Sync + 'static,
    {
        self.hooks = self.hooks.with(hook);
        self
    }

    /// Calls `hook` on every change of state (after the change, outside any lock): shorthand for
    /// an [`on_event`](Self::on_event) hook that reads [`CircuitEvent::StateChanged`].
    pub fn on_state_change<H>(self, hook: H) -> Self
    where
        H: Fn(&Transition) + Send + Sync + 'static,
    {
        self.on_event(move |event| {
            #[allow(
                irrefutable_let_patterns,
                reason = "CircuitEvent is non_exhaustive: more events may come"
            )]
            if let CircuitEvent::StateChanged(transition) = event {
                hook(transition);
            }
        })
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
    /// then read and steered through [`CircuitBreakerLayer::handle`] (each key's circuit through
    /// [`CircuitHandle::circuit`](super::CircuitHandle::circuit)). A call the extractor finds
    /// no key for goes straight to the inner service, through no circuit.
    ///
    /// Keys appear (as their [`KeyLabel`]) in logs, hooks, snapshots and refusals, and in metrics
    /// labels with [`key_in_metrics`](Self::key_in_metrics).
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
    /// Give the breaker its own [`name`](Self::name) first: breakers of different upstreams that
    /// share a name (the default, `"default"`, included) and a backend share one circuit.
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

    /// For HTTP services. Sets exactly:
    ///
    /// - `.classify(HttpClassifier::new())`: errors and `5xx` responses count as failures, other
    ///   responses (`429` included) as successes (see [`HttpClassifier`]);
    /// - `.rejection(AsHttp::new())`: refusals become `503` responses, with `Retry-After` when the
    ///   wait's end is known (an open circuit's; not while half-open probes are out, nor for a
    ///   circuit forced open), and the inner service's errors keep their type.
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
