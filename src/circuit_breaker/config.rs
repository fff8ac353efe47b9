//! A whole circuit breaker's configuration, read from a file (feature `serde`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CircuitBreakerBuilder, CircuitBreakerLayer};

/// A [`CircuitBreakerLayer`]'s settings as data, for configuration files (feature `serde`).
///
/// Fields are named after [`CircuitBreakerBuilder`]'s setters; every one is optional, and a field
/// left out keeps the builder's default. [`into_builder`](Self::into_builder) gives the builder,
/// where the classifier, rejection mode (`.http()`, `.grpc()`), key, backend and hooks are added
/// in code; its `build()` checks the values with the same [`ConfigError`](crate::ConfigError)s
/// as when they are set in code. Unknown fields are refused. See [`crate::config`] for the format
/// shared by every layer.
///
/// ```
/// use tower_rampart::circuit_breaker::CircuitBreakerConfig;
///
/// let config: CircuitBreakerConfig = toml::from_str(r#"
///     name = "payments"
///     failure_rate = 0.25
///     window = { span = "1m", buckets = 12 }
///     slow_calls = { threshold = "2s", rate = 0.5 }
///     wait = { initial = "5s", multiplier = 2.0, max = "2m" }
/// "#)?;
/// let layer = config.into_builder().http().build()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// The circuit's name (see [`CircuitBreakerBuilder::name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Opens at this share of failed calls (see [`CircuitBreakerBuilder::failure_rate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// The window the rates are measured over: `{ calls = 100 }` or
    /// `{ span = "1m", buckets = 12 }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowConfig>,
    /// Slow calls: `{ threshold = "2s", rate = 0.5 }` (see [`CircuitBreakerBuilder::slow_calls`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slow_calls: Option<SlowCallsConfig>,
    /// Calls the window must hold before a rate can open the circuit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_calls: Option<u32>,
    /// Also opens after this many failures in a row.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// How long the circuit stays open: `"30s"`, or `{ initial = "5s", multiplier = 2.0, max = "2m" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitConfig>,
    /// Probe calls let through when half-open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
    /// With a key: the most circuits kept at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_circuits: Option<usize>,
    /// With a shared backend: how often each replica syncs with it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub sync_interval: Option<Duration>,
}

/// The window of a [`CircuitBreakerConfig`]: a number of calls or a span of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = r#"a window of `{ calls = 100 }` or `{ span = "1m", buckets = 12 }`"#
)]
#[non_exhaustive]
pub enum WindowConfig {
    /// The last `calls` calls ([`CircuitBreakerBuilder::window`]).
    Count {
        /// How many calls.
        calls: u32,
    },
    /// The calls of the last `span`, in `buckets` buckets ([`CircuitBreakerBuilder::time_window`]).
    Time {
        /// How long, as `"1m"`.
        #[serde(with = "crate::config::duration")]
        span: Duration,
        /// How many buckets the span is kept in.
        buckets: u32,
    },
}

/// The slow-call condition of a [`CircuitBreakerConfig`] ([`CircuitBreakerBuilder::slow_calls`]).
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SlowCallsConfig {
    /// Calls taking at least this long are slow.
    #[serde(with = "crate::config::duration")]
    pub threshold: Duration,
    /// The share of slow calls that opens the circuit.
    pub rate: f64,
}

impl SlowCallsConfig {
    /// Calls of at least `threshold` are slow; `rate` of them open the circuit.
    pub fn new(threshold: Duration, rate: f64) -> Self {
        Self { threshold, rate }
    }
}

/// How long the circuit of a [`CircuitBreakerConfig`] stays open: fixed or growing.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(
    untagged,
    deny_unknown_fields,
    expecting = r#"a wait of "30s" or `{ initial = "5s", multiplier = 2.0, max = "2m" }`"#
)]
#[non_exhaustive]
pub enum WaitConfig {
    /// The same wait every time ([`CircuitBreakerBuilder::wait_duration`]).
    Fixed(#[serde(with = "crate::config::duration")] Duration),
    /// Longer each time it reopens ([`CircuitBreakerBuilder::exponential_wait`]).
    Exponential {
        /// The first wait.
        #[serde(with = "crate::config::duration")]
        initial: Duration,
        /// How much longer each next wait is.
        multiplier: f64,
        /// The longest wait.
        #[serde(with = "crate::config::duration")]
        max: Duration,
    },
}

impl CircuitBreakerConfig {
    /// The builder with these settings, for the classifier, rejection mode, key, backend and
    /// hooks to be added in code before `build`.
    pub fn into_builder(self) -> CircuitBreakerBuilder {
        let mut b = CircuitBreakerLayer::builder();
        if let Some(name) = self.name {
            b = b.name(name);
        }
        if let Some(rate) = self.failure_rate {
            b = b.failure_rate(rate);
        }
        match self.window {
            Some(WindowConfig::Count { calls }) => b = b.window(calls),
            Some(WindowConfig::Time { span, buckets }) => b = b.time_window(span, buckets),
            None => {}
        }
        if let Some(s) = self.slow_calls {
            b = b.slow_calls(s.threshold, s.rate);
        }
        if let Some(calls) = self.minimum_calls {
            b = b.minimum_calls(calls);
        }
        if let Some(failures) = self.consecutive_failures {
            b = b.consecutive_failures(failures);
        }
        match self.wait {
            Some(WaitConfig::Fixed(wait)) => b = b.wait_duration(wait),
            Some(WaitConfig::Exponential {
                initial,
                multiplier,
                max,
            }) => b = b.exponential_wait(initial, multiplier, max),
            None => {}
        }
        if let Some(probes) = self.half_open_probes {
            b = b.half_open_probes(probes);
        }
        if let Some(max) = self.max_circuits {
            b = b.max_circuits(max);
        }
        if let Some(interval) = self.sync_interval {
            b = b.sync_interval(interval);
        }
        b
    }
}
