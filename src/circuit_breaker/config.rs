//! A whole circuit breaker's configuration, read from a file (feature `serde`).

use std::time::Duration;

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationVisitor;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum WindowConfig {
    /// The last `calls` calls ([`CircuitBreakerBuilder::window`]), written `{ calls = 100 }`.
    Count {
        /// How many calls.
        calls: u32,
    },
    /// The calls of the last `span`, in `buckets` buckets ([`CircuitBreakerBuilder::time_window`]),
    /// written `{ span = "1m", buckets = 12 }`.
    Time {
        /// How long, as `"1m"`.
        #[serde(with = "crate::config::duration")]
        span: Duration,
        /// How many buckets the span is kept in.
        buckets: u32,
    },
}

const WINDOW_SHAPES: &str = r#"a window of `{ calls = 100 }` or `{ span = "1m", buckets = 12 }`"#;

impl<'de> Deserialize<'de> for WindowConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // One table with every field, so typos are named; then the shape is chosen.
        #[derive(Deserialize)]
        #[serde(
            deny_unknown_fields,
            expecting = "a window of `{ calls = 100 }` or `{ span = \"1m\", buckets = 12 }`"
        )]
        struct Fields {
            calls: Option<u32>,
            #[serde(default, with = "crate::config::opt_duration")]
            span: Option<Duration>,
            buckets: Option<u32>,
        }
        match Fields::deserialize(d)? {
            Fields {
                calls: Some(calls),
                span: None,
                buckets: None,
            } => Ok(Self::Count { calls }),
            Fields {
                calls: None,
                span: Some(span),
                buckets: Some(buckets),
            } => Ok(Self::Time { span, buckets }),
            _ => Err(de::Error::custom(format_args!(
                "invalid window: write {WINDOW_SHAPES}"
            ))),
        }
    }
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
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum WaitConfig {
    /// The same wait every time ([`CircuitBreakerBuilder::wait_duration`]), written `"30s"`.
    Fixed(#[serde(with = "crate::config::duration")] Duration),
    /// Longer each time it reopens ([`CircuitBreakerBuilder::exponential_wait`]), written
    /// `{ initial = "5s", multiplier = 2.0, max = "2m" }`.
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

impl<'de> Deserialize<'de> for WaitConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Exponential {
            #[serde(with = "crate::config::duration")]
            initial: Duration,
            multiplier: f64,
            #[serde(with = "crate::config::duration")]
            max: Duration,
        }

        struct WaitVisitor;

        impl<'de> Visitor<'de> for WaitVisitor {
            type Value = WaitConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#"a wait of "30s" or `{ initial = "5s", multiplier = 2.0, max = "2m" }`"#,
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<WaitConfig, E> {
                DurationVisitor.visit_str(v).map(WaitConfig::Fixed)
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<WaitConfig, E> {
                DurationVisitor.visit_u64(v).map(WaitConfig::Fixed)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<WaitConfig, E> {
                DurationVisitor.visit_i64(v).map(WaitConfig::Fixed)
            }

            fn visit_f64<E: de::Error>(self, v: f64) -> Result<WaitConfig, E> {
                DurationVisitor.visit_f64(v).map(WaitConfig::Fixed)
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<WaitConfig, A::Error> {
                let e = Exponential::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(WaitConfig::Exponential {
                    initial: e.initial,
                    multiplier: e.multiplier,
                    max: e.max,
                })
            }
        }

        d.deserialize_any(WaitVisitor)
    }
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
