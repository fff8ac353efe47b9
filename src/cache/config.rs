//! A whole cache's configuration, read from a file (feature `serde`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{CacheBuilder, CacheLayer};

/// A [`CacheLayer`]'s settings as data, for configuration files (feature `serde`).
///
/// Fields are named after [`CacheBuilder`]'s setters; only `ttl` is required, and a field left out
/// keeps the builder's default. [`into_builder`](Self::into_builder) gives the builder, where the
/// mode (`.http()`), key and backend are added in code; its `build()` checks the values with the
/// same [`ConfigError`](crate::ConfigError)s as when they are set in code. Unknown fields are
/// refused. See [`crate::config`] for the format shared by every layer.
///
/// ```
/// use tower_rampart::cache::CacheConfig;
///
/// let config: CacheConfig = toml::from_str(r#"
///     name = "summaries"
///     ttl = "30s"
///     stale_while_revalidate = "1m"
///     max_bytes = 16_777_216
/// "#)?;
/// let layer = config.into_builder().http().build()?;
/// # let _ = layer;
/// # Ok::<_, Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// How long a stored response is fresh (required).
    #[serde(with = "crate::config::duration")]
    pub ttl: Duration,
    /// The cache's name (see [`CacheBuilder::name`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Serve stale entries this long past the TTL while one refresh runs (default: off).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub stale_while_revalidate: Option<Duration>,
    /// Serve stale entries this long past the TTL when a refresh fails (default: off).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::config::opt_duration"
    )]
    pub stale_if_error: Option<Duration>,
    /// The most bytes the store holds (default 64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// The most background refreshes running at once (default 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_background_refreshes: Option<usize>,
    /// With a shared store: `{ hold = "10s", wait = "5s" }`; see [`CacheBuilder::fill_lock`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_lock: Option<FillLockConfig>,
}

/// The fill lock of a [`CacheConfig`] ([`CacheBuilder::fill_lock`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct FillLockConfig {
    /// How long a miss holds its key's lock at most.
    #[serde(with = "crate::config::duration")]
    pub hold: Duration,
    /// How long other replicas wait for the fill before calling through.
    #[serde(with = "crate::config::duration")]
    pub wait: Duration,
}

impl FillLockConfig {
    /// A lock held at most `hold`, waited for at most `wait`.
    pub fn new(hold: Duration, wait: Duration) -> Self {
        Self { hold, wait }
    }
}

impl CacheConfig {
    /// A configuration with this TTL and every other setting at its default.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            name: None,
            stale_while_revalidate: None,
            stale_if_error: None,
            max_bytes: None,
            max_background_refreshes: None,
            fill_lock: None,
        }
    }

    /// The builder with these settings, for the mode, key and backend to be added in code before
    /// `build`.
    pub fn into_builder(self) -> CacheBuilder {
        let mut b = CacheLayer::builder().ttl(self.ttl);
        if let Some(name) = self.name {
            b = b.name(name);
        }
        if let Some(window) = self.stale_while_revalidate {
            b = b.stale_while_revalidate(window);
        }
        if let Some(window) = self.stale_if_error {
            b = b.stale_if_error(window);
        }
        if let Some(bytes) = self.max_bytes {
            b = b.max_bytes(bytes);
        }
        if let Some(n) = self.max_background_refreshes {
            b = b.max_background_refreshes(n);
        }
        if let Some(lock) = self.fill_lock {
            b = b.fill_lock(lock.hold, lock.wait);
        }
        b
    }
}
