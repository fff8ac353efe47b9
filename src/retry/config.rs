//! A whole retry layer's configuration, read from a file (feature `serde`).

use std::time::Duration;

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::{Backoff, Budget, Jitter, RetryBuilder, RetryLayer};

/// A [`RetryLayer`]'s settings as data, for configuration files (feature `serde`).
///
/// Fields are named after [`RetryBuilder`]'s setters; every one is optional, and a field left out
/// keeps the builder's default. [`into_builder`](Self::into_builder) gives the builder, where the
/// classifier, request copier and rejection mode (`.http()`, `.grpc()`) are added in code; its
/// `build()` checks the values with the same [`ConfigError`](crate::ConfigError)s as when they are
/// set in code. Unknown fields are refused. See [`crate::config`] for the format shared by every
/// layer.
///
/// ```
/// use tower_rampart::retry::RetryConfig;
///
/// let config: RetryConfig = toml::from_str(r#"
///     max_attempts = 4
///     backoff = { initial = "50ms", multiplier = 3.0, max = "2s" }
///     jitter = "equal"
///     deadline = "10s"
///     budget = { percent = 10.0 }
/// "#)?;
/// let layer = config.into_builder().http().build()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// The layer's name (see [`RetryBuilder::name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The most attempts per request, the first included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// The delay schedule: `{ initial = "100ms", multiplier = 2.0, max = "5s", jitter = "full" }`,
    /// each field optional; see [`Backoff`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
    /// The longest wait between two attempts (overrides the schedule's `max`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub max_delay: Option<Duration>,
    /// The jitter (overrides the schedule's): `"none"`, `"full"`, `"equal"` or `"decorrelated"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Jitter>,
    /// Each attempt may take at most this long.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub attempt_timeout: Option<Duration>,
    /// The whole request may take at most this long.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub deadline: Option<Duration>,
    /// Whether an attempt that timed out may be retried (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_timeouts: Option<bool>,
    /// The retry budget: `{ percent = 20.0, min_per_second = 10, period = "10s" }` (each field
    /// optional; see [`Budget`]), or `"off"` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
}

/// The retry budget of a [`RetryConfig`]: a [`Budget`], or `"off"`.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum BudgetConfig {
    /// A budget of the layer's own ([`RetryBuilder::budget`]), written
    /// `{ percent = 20.0, min_per_second = 10, period = "10s" }` (each field optional).
    Budget(Budget),
    /// No budget ([`RetryBuilder::no_budget`]), written `"off"`.
    Off,
}

impl Serialize for BudgetConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Budget(budget) => budget.serialize(s),
            Self::Off => s.serialize_str("off"),
        }
    }
}

const BUDGET_SHAPES: &str =
    r#"a budget such as `{ percent = 20.0, min_per_second = 10, period = "10s" }`, or "off""#;

impl<'de> Deserialize<'de> for BudgetConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct BudgetVisitor;

        impl<'de> Visitor<'de> for BudgetVisitor {
            type Value = BudgetConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(BUDGET_SHAPES)
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<BudgetConfig, E> {
                if v == "off" {
                    Ok(BudgetConfig::Off)
                } else {
                    Err(E::custom(format_args!(
                        "invalid budget {v:?}: write {BUDGET_SHAPES}"
                    )))
                }
            }

            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<BudgetConfig, A::Error> {
                Budget::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(BudgetConfig::Budget)
            }
        }

        d.deserialize_any(BudgetVisitor)
    }
}

impl RetryConfig {
    /// The builder with these settings, for the classifier, request copier and rejection mode to
    /// be added in code before [`build`](RetryBuilder::build).
    pub fn into_builder(self) -> RetryBuilder {
        let mut b = RetryLayer::builder();
        if let Some(name) = self.name {
            b = b.name(name);
        }
        if let Some(attempts) = self.max_attempts {
            b = b.max_attempts(attempts);
        }
        if let Some(backoff) = self.backoff {
            b = b.backoff(backoff);
        }
        if let Some(max) = self.max_delay {
            b = b.max_delay(max);
        }
        if let Some(jitter) = self.jitter {
            b = b.jitter(jitter);
        }
        if let Some(timeout) = self.attempt_timeout {
            b = b.attempt_timeout(timeout);
        }
        if let Some(deadline) = self.deadline {
            b = b.deadline(deadline);
        }
        if let Some(yes) = self.retry_timeouts {
            b = b.retry_timeouts(yes);
        }
        match self.budget {
            Some(BudgetConfig::Budget(budget)) => b = b.budget(budget),
            Some(BudgetConfig::Off) => b = b.no_budget(),
            None => {}
        }
        b
    }
}
