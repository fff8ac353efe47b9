use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::classify::ErrorsAreFailures;
use super::fallback::{FallbackFn, NoFallback};
use super::handle::{CircuitHandle, Transition};
use super::service::CircuitBreaker;
use super::state::{Breaker, Config, MAX_PROBES, SlowCalls, Wait, WindowConfig};
use crate::error::ConfigError;
use crate::rejection::AsError;

/// Stops calling an upstream that keeps failing, and probes it until it recovers.
///
/// The layer holds one circuit in an `Arc`: every clone of the layer and every service it makes
/// share it, and [`handle`](Self::handle) reads and steers it. Build it with
/// [`CircuitBreakerLayer::builder`]. See the [module documentation](super).
pub struct CircuitBreakerLayer<C = ErrorsAreFailures, M = AsError, F = NoFallback> {
    pub(crate) shared: Arc<Shared<C, M, F>>,
}

pub(crate) struct Shared<C, M, F> {
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) classifier: C,
    pub(crate) mode: M,
    pub(crate) fallback: F,
}

impl<C, M, F> Clone for CircuitBreakerLayer<C, M, F> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: fmt::Debug, M: fmt::Debug, F: fmt::Debug> fmt::Debug for CircuitBreakerLayer<C, M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.shared.breaker)
            .field("classifier", &self.shared.classifier)
            .field("mode", &self.shared.mode)
            .field("fallback", &self.shared.fallback)
            .finish()
    }
}

impl<S, C, M, F> Layer<S> for CircuitBreakerLayer<C, M, F> {
    type Service = CircuitBreaker<S, C, M, F>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, Arc::clone(&self.shared))
    }
}

impl<C, M, F> CircuitBreakerLayer<C, M, F> {
    /// A handle to the circuit: state, counts, and forcing it open, closed or disabled.
    pub fn handle(&self) -> CircuitHandle {
        CircuitHandle {
            breaker: Arc::clone(&self.shared.breaker),
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
            hooks: Vec::new(),
        }
    }
}

type Hook = Arc<dyn Fn(&Transition) + Send + Sync>;

/// Configures a [`CircuitBreakerLayer`]. Made by [`CircuitBreakerLayer::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct CircuitBreakerBuilder<C = ErrorsAreFailures, M = AsError, F = NoFallback> {
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
    hooks: Vec<Hook>,
}

impl<C: fmt::Debug, M: fmt::Debug, F: fmt::Debug> fmt::Debug for CircuitBreakerBuilder<C, M, F> {
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
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl<C, M, F> CircuitBreakerBuilder<C, M, F> {
    /// The circuit's name, in logs, hooks and snapshots (default `"default"`). Letters, digits and
    /// `-_.:` only; checked by `build`.
    pub fn name(mut self, name: &'static str) -> Self {
        self.name = name;
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

    /// How results count (default [`ErrorsAreFailures`]); see [`classify`](super::classify).
    pub fn classifier<C2>(self, classifier: C2) -> CircuitBreakerBuilder<C2, M, F> {
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
            mode: self.mode,
            fallback: self.fallback,
            hooks: self.hooks,
        }
    }

    /// How refusals reach the caller (default [`AsError`]); see [`crate::rejection`].
    pub fn rejection<M2>(self, mode: M2) -> CircuitBreakerBuilder<C, M2, F> {
        CircuitBreakerBuilder {
            name: self.name,
            failure_rate: self.failure_rate,
            slow_calls: self.slow_calls,
            window: self.window,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            half_open_probes: self.half_open_probes,
            classifier: self.classifier,
            mode,
            fallback: self.fallback,
            hooks: self.hooks,
        }
    }

    /// Answers refused calls with `fallback(&refusal)` instead of an error or refusal response (for
    /// example a cached or default answer). Calls that reach the upstream and fail are not affected.
    pub fn fallback<G, Res>(self, fallback: G) -> CircuitBreakerBuilder<C, M, FallbackFn<G>>
    where
        G: Fn(&super::error::CircuitOpen) -> Res + Clone + Send + Sync + 'static,
    {
        CircuitBreakerBuilder {
            name: self.name,
            failure_rate: self.failure_rate,
            slow_calls: self.slow_calls,
            window: self.window,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            half_open_probes: self.half_open_probes,
            classifier: self.classifier,
            mode: self.mode,
            fallback: FallbackFn { f: fallback },
            hooks: self.hooks,
        }
    }

    /// For HTTP services: refusals become 503 responses, 5xx responses count as failures.
    #[cfg(feature = "http")]
    pub fn http(
        self,
    ) -> CircuitBreakerBuilder<super::classify::HttpClassifier, crate::http::AsHttp, F> {
        self.classifier(super::classify::HttpClassifier::new())
            .rejection(crate::http::AsHttp::new())
    }

    /// For gRPC services: refusals become `UNAVAILABLE`, failing statuses count as failures.
    #[cfg(feature = "http")]
    pub fn grpc(
        self,
    ) -> CircuitBreakerBuilder<super::classify::GrpcClassifier, crate::grpc::AsGrpc, F> {
        self.classifier(super::classify::GrpcClassifier)
            .rejection(crate::grpc::AsGrpc::new())
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting, when a rate is outside (0, 1], a window, minimum,
    /// threshold or probe count is zero (or the minimum exceeds the window), a wait is zero or
    /// shrinks, or the name has characters logs and headers cannot carry.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
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
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                breaker: Arc::new(Breaker::new(cfg, self.hooks)),
                classifier: self.classifier,
                mode: self.mode,
                fallback: self.fallback,
            }),
        })
    }
}
