//! A whole rate limiter's configuration, read from a file (feature `serde`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RateLimitLayer;
use super::key::MissingKey;
use super::layer::RateLimitBuilder;
use super::limit::Limit;
use super::quota::{Algorithm, Quota};

/// A [`RateLimitLayer`]'s settings as data, for configuration files (feature `serde`).
///
/// Fields are named after [`RateLimitBuilder`]'s setters; the default limits are either one
/// `quota` or a list of named `limits` (see [`Limit`]), and a field left out keeps the builder's
/// default. `tiers` maps a tier's name to its limits; which tier a key belongs to is code
/// ([`tier_of`](RateLimitBuilder::tier_of)), added with the key. `shadow` puts the whole layer in
/// shadow mode. [`into_builder`](Self::into_builder) gives the builder, where the key and backend
/// are added in code; its `build()` checks the values with the same
/// [`ConfigError`](crate::ConfigError)s as when they are set in code (neither or both of `quota`
/// and `limits`, a limit or tier that cannot work). Unknown fields are refused. See
/// [`crate::config`] for the format shared by every layer.
///
/// ```
/// use tower_rampart::key::PeerIp;
/// use tower_rampart::rate_limit::RateLimitConfig;
///
/// let config: RateLimitConfig = toml::from_str(r#"
///     name = "api"
///     quota = { limit = 100, period = "1m", burst = 20 }
///     on_missing_key = "allow"
/// "#)?;
/// let layer = config.into_builder().key(PeerIp::new()).http().build()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
///
/// Several limits at once, and tiers:
///
/// ```
/// use tower_rampart::key::HeaderKey;
/// use tower_rampart::rate_limit::RateLimitConfig;
///
/// let config: RateLimitConfig = toml::from_str(r#"
///     limits = [
///         { name = "minute", limit = 10, period = "1m" },
///         { name = "day", limit = 1000, period = "1d", shadow = true },
///     ]
///
///     [tiers]
///     pro = [{ name = "minute", limit = 1000, period = "1m", burst = 100 }]
/// "#)?;
/// let layer = config
///     .into_builder()
///     .key(HeaderKey::new("x-api-key"))
///     .tier_of(|key: &http::HeaderValue| key.as_bytes().starts_with(b"pro_").then_some("pro"))
///     .http()
///     .build()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// The quota, `{ limit = 100, period = "1m", burst = 20 }` (see [`Quota`]): the default set
    /// is then one limit named after the layer. This or [`limits`](Self::limits) is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quota>,
    /// The default set as named limits decided at once, all or nothing, instead of
    /// [`quota`](Self::quota): `[{ name = "minute", limit = 10, period = "1m" }, ..]` (see
    /// [`Limit`] and [`RateLimitBuilder::limits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Vec<Limit>>,
    /// Tiers: a tier's name and its limits, `pro = [{ name = "minute", limit = 1000, period = "1m" }]`
    /// (see [`RateLimitBuilder::tier`]). Keys are sent to a tier by
    /// [`tier_of`](RateLimitBuilder::tier_of), in code; a key with no tier gets the default set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<String, Vec<Limit>>,
    /// Shadow mode for the whole layer (default `false`): refusals are counted and admitted; see
    /// [`RateLimitBuilder::shadow`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    /// The counting algorithm, `"gcra"` (the default) or `"sliding_window"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<Algorithm>,
    /// The limiter's name (see [`RateLimitBuilder::name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `"reject"` (the default) or `"allow"` requests the key extractor finds no key for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_missing_key: Option<MissingKey>,
    /// Also send the legacy `X-RateLimit-*` headers (default `false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub legacy_headers: Option<bool>,
    /// Add the `RateLimit` fields to admitted responses too (default `true`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_on_success: Option<bool>,
    /// Waiting mode, for client stacks: wait up to this long for quota (default: refuse at once);
    /// see [`RateLimitBuilder::wait_up_to`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub wait_up_to: Option<Duration>,
}

impl RateLimitConfig {
    /// A configuration with this quota and every other setting at its default.
    pub fn new(quota: Quota) -> Self {
        Self {
            quota: Some(quota),
            ..Self::empty()
        }
    }

    /// A configuration whose default set is these named limits (see
    /// [`RateLimitBuilder::limits`]), every other setting at its default.
    pub fn with_limits(limits: impl IntoIterator<Item = Limit>) -> Self {
        Self {
            limits: Some(limits.into_iter().collect()),
            ..Self::empty()
        }
    }

    fn empty() -> Self {
        Self {
            quota: None,
            limits: None,
            tiers: BTreeMap::new(),
            shadow: None,
            algorithm: None,
            name: None,
            on_missing_key: None,
            legacy_headers: None,
            headers_on_success: None,
            wait_up_to: None,
        }
    }

    /// The builder with these settings, for the key, backend and rejection mode to be added in
    /// code before [`build`](RateLimitBuilder::build).
    pub fn into_builder(self) -> RateLimitBuilder {
        let mut b = RateLimitLayer::builder();
        // Both or neither are passed on as they are: `build()` says what is wrong.
        if let Some(quota) = self.quota {
            b = b.quota(quota);
        }
        if let Some(limits) = self.limits {
            b = b.limits(limits);
        }
        for (name, limits) in self.tiers {
            b = b.tier(name, limits);
        }
        if let Some(on) = self.shadow {
            b = b.shadow(on);
        }
        if let Some(algorithm) = self.algorithm {
            b = b.algorithm(algorithm);
        }
        if let Some(name) = self.name {
            b = b.name(name);
        }
        if let Some(missing_key) = self.on_missing_key {
            b = b.on_missing_key(missing_key);
        }
        if let Some(on) = self.legacy_headers {
            b = b.legacy_headers(on);
        }
        if let Some(on) = self.headers_on_success {
            b = b.headers_on_success(on);
        }
        if let Some(max) = self.wait_up_to {
            b = b.wait_up_to(max);
        }
        b
    }
}
