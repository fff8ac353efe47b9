//! Leased quotas: a replica decides a hot key's requests in memory, from a slice of its quota leased
//! from Redis, with a bound on what that costs in exactness (issue #20).
//!
//! Exact mode (the default, [`RedisBackend`] as it is) costs one Redis round trip per decision, so a
//! hot key (one global limit, one big tenant) is capped at what one Redis shard runs, whatever the
//! number of replicas. Leased mode, opt-in per limiter, takes a key's units from Redis in batches:
//!
//! ```no_run
//! use tower_rampart::backend::RedisBackend;
//! use tower_rampart::backend::redis::LeaseConfig;
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! # async fn run() -> Result<(), tower_rampart::BoxError> {
//! let redis = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
//! let limit = RateLimitLayer::builder()
//!     .name("api") // a global limit: every replica together, 200,000 a second
//!     .quota(Quota::per_second(200_000))
//!     .backend(redis.leased(LeaseConfig::new()))
//!     .build()?;
//! # let _ = limit; Ok(()) }
//! ```
//!
//! # How a lease is taken
//!
//! One script call (`lease.lua`) carves up to `n` units from the key's GCRA state: it advances the
//! key's theoretical arrival time by `k` emission intervals, `k` being `n` or as many as the quota
//! holds now, which is exactly what `k` exact decisions at that instant would write. The state is
//! the exact mode's, at the same key, so exact and leased replicas share one quota, and a lease of
//! one unit *is* an exact decision. Like every decision script, it reads Redis `TIME` and writes
//! nothing when it starts after the caller has given up on it (see
//! [a request is counted once](super#a-request-is-counted-once-even-when-redis-answers-late)): a
//! lease given up on never counts.
//!
//! # How decisions are made
//!
//! A replica keeps, per key, the units left in its lease and the lease's expiry: the time the lease
//! was asked for plus its [time to live](LeaseConfig::ttl) (1 s by default), on the replica's clock.
//! A request takes a unit with one compare-and-swap and is admitted: no I/O, no lock but the
//! bounded map's read lock, at in-memory speed. When the units left fall to a quarter of the lease,
//! one call renews it in the background (units still held are carried over, under the new expiry),
//! so a key under steady load never waits. A request that finds no live unit waits for the call in
//! flight, or makes it.
//!
//! A spent quota is refused locally, as in exact mode: when Redis refuses a lease, or grants fewer
//! units than asked for (the quota ran out at that instant, so exact mode would refuse the next
//! request too), the replica refuses the key's requests that find no unit left until the retry
//! time Redis gave, plus the time the quota takes to earn a quarter of the lease the replica would
//! ask for (nothing for a cold key). Meanwhile the units it leaves accrue in Redis for the other
//! replicas or its next lease: a replica asks for a key at a spent quota at most once per quarter
//! lease, rather than once per unit earned.
//!
//! **A lease's size follows the key's rate**: enough units for half a time to live at the rate the
//! replica just saw, moving by at most 4 times up or 2 times down per lease, at most
//! [`max_units`](LeaseConfig::max_units). A key a replica sees less than 4 times a second (with the
//! default time to live) gets leases of one unit, taken and used by the request that asked: **cold
//! keys stay exact**, one round trip per decision, as in exact mode.
//!
//! Decisions carry the same `RateLimit` fields as exact mode's: remaining is what Redis had left
//! after the last lease (plus what time has earned since) plus the units this replica holds, so
//! it is this replica's view, not the sum of every replica's.
//!
//! # The bounds
//!
//! - **Over-admission: none in count.** Every unit admitted was carved from the quota in Redis
//!   first, so the replicas together never admit more than exact mode would have counted: over
//!   any run counted from its first lease, admitted ≤ burst + rate × duration, as exact. What
//!   leasing moves is *when*: a unit counted at its lease is admitted later, while the replica
//!   holds it. So over any window the replicas admit at most what exact mode admits in that
//!   window plus the units held in leases at its start: at most `1.25 × max_units` per replica
//!   (a lease and the quarter carried into its renewal).
//! - **Under-admission: bounded and temporary.** Units a replica holds are counted in Redis and
//!   not available to others. Units of a lease that expires unused are dropped (counted in
//!   `rampart_rate_limit_lease_stranded_units_total`); a replica that dies or is cut off from Redis
//!   strands at most its leases, `1.25 × max_units` units per key. Stranded units come back as
//!   every counted unit does, at the quota's rate: `u` units within `u` emission intervals. The
//!   default `max_units` is what the quota earns in one time to live (and at most a quarter of
//!   the burst), so a dead replica's quota is back within 1.25 times to live (1.25 s by default).
//!   At a spent quota, a replica that refuses locally leaves what the quota earns meanwhile in
//!   Redis (at most a quarter lease per replica before it asks again): requests refused then that
//!   exact mode might have admitted, never more than that.
//!
//! # When Redis is slow or gone
//!
//! Outstanding leases keep serving until they are spent or expire (at most a time to live):
//! admissions from them were counted before the outage. Then decisions fall to the backend's
//! [`FailurePolicy`](super::FailurePolicy), as in exact mode (the same probe every 100 ms, the same
//! timeout, the same metrics), and leases resume when Redis answers again. A renewal that fails
//! does not wait for anything: the replica serves what it holds. A request waits at most one
//! timeout for other requests' calls on its key, then makes its own (only while Redis answers):
//! never more than twice the backend's timeout, as in exact mode.
//!
//! # Metrics
//!
//! Those of exact mode (`rampart_rate_limit_rejected_total`,
//! `rampart_rate_limit_backend_fallback_total`, `rampart_rate_limit_backend_repaired_total`), and,
//! labelled `name`:
//!
//! | metric | what |
//! |---|---|
//! | `rampart_rate_limit_lease_calls_total` | lease round trips (Redis calls made by leased decisions, cold keys' included) |
//! | `rampart_rate_limit_lease_units_total` | units carved from quotas by those calls |
//! | `rampart_rate_limit_lease_stranded_units_total` | units of leases that expired unused in this replica: counted in Redis, never admitted |
//!
//! # Limits
//!
//! - GCRA only (the default algorithm): a sliding window's counts cannot be carved ahead of time
//!   without moving its window; building a leased limiter with
//!   [`Algorithm::SlidingWindow`](crate::rate_limit::Algorithm::SlidingWindow) is a
//!   [`ConfigError`](crate::ConfigError).
//! - The layer's own quota (`.quota(..)`), one unit per request: leases serve exactly that. Any
//!   other decision the layer asks (a tier's or a key's own limits, several limits at once, a cost
//!   per request, a peek) goes to the exact path, one script call, on the same keys (a limit named
//!   after the layer shares its state with the leases). A layer whose default limits are several
//!   (`.limits(..)`) or a shadow limit could never be served by leases: building it in leased mode
//!   is a [`ConfigError`](crate::ConfigError). A quota changed while the layer runs
//!   ([`RateLimitHandle::set_default`](crate::rate_limit::RateLimitHandle::set_default) with one
//!   limit of the layer's name) is leased from at once: units leased under the old quota serve
//!   until their lease expires (at most its time to live, the bound above), and refusals this
//!   replica remembered under the old quota are forgotten. (Default limits renamed or made several
//!   take the exact path, as above.)
//! - Rate limiters only. A [`LeasedRedisBackend`] is given to a limiter's `.backend(..)` as it
//!   is, or as the run-time [`Backend`](crate::backend::Backend)
//!   (`Backend::from(redis.leased(config))`), whose other layers then use the Redis backend
//!   underneath.
//! - Units left in a lease are not given back to Redis: they serve until the lease expires, then
//!   are dropped (stranded, within the bounds above). Giving them back on a graceful shutdown
//!   would need the lease call to return the arrival time it wrote, the replica to keep it per
//!   key, and a second script that moves the time back by the units left only when the key
//!   still holds that value (no other replica has leased since, or the units would be counted
//!   twice): on a hot key shared by several replicas the compare fails almost always, so it
//!   would shorten the under-admission only for keys one replica had to itself. Not done yet.
//! - **Redis keeps no record of who holds what**, so neither an operator nor the surviving
//!   replicas can see a dead replica's stranded units; each replica reports its own
//!   (`rampart_rate_limit_lease_stranded_units_total`, and what it holds, via
//!   [`RedisLeasedStore::held_units`]). A record would be a per-key hash of owner → units granted
//!   and expiry, written by the lease script: no extra round trip, but two more writes
//!   (`HSET`, `PEXPIRE`) in every lease call, a second key that must share the limiter key's
//!   cluster slot (a hash tag, so a change of key names), and what it could say is only *granted*,
//!   not *left*: units are taken in memory with no I/O, so Redis cannot tell a spent lease from
//!   a stranded one without a call per unit or per flush, which is what leasing removes. The
//!   record's upper bound, at most 1.25 leases per replica for at most 1.25 times to live, is
//!   the bound stated above, known without it.

// The configuration types exist with the `redis` feature alone, so that [`Backend`](crate::backend::Backend)
// has one shape whatever the features; the leased store needs the rate limiter.
#[cfg(feature = "rate-limit")]
mod cell;
#[cfg(feature = "rate-limit")]
mod store;

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

#[cfg(feature = "rate-limit")]
pub use self::store::{LeaseCheck, RedisLeasedStore};

use super::RedisBackend;

/// The default [time to live](LeaseConfig::ttl) of a lease.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(1);

/// How a leased limiter leases: the lifetime of a lease and the most units one holds. See the
/// [module documentation](self) for what they bound.
///
/// With the feature `serde` it reads and writes as the [configuration types](crate::config) do:
/// fields named after the setters, each optional (left out, the default), durations as strings
/// such as `"500ms"`, unknown fields refused: `{ "ttl": "500ms", "max_units": 1000 }`. The values
/// are checked when a layer is built, as when set in code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
#[must_use]
pub struct LeaseConfig {
    #[cfg_attr(
        feature = "serde",
        serde(default = "default_ttl", with = "crate::config::duration")
    )]
    ttl: Duration,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    max_units: Option<NonZeroU32>,
}

#[cfg(feature = "serde")]
fn default_ttl() -> Duration {
    DEFAULT_LEASE_TTL
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseConfig {
    /// A time to live of [`DEFAULT_LEASE_TTL`] (1 s), and leases of at most what the quota earns in
    /// one time to live (at most a quarter of its burst, at least 1).
    pub const fn new() -> Self {
        Self {
            ttl: DEFAULT_LEASE_TTL,
            max_units: None,
        }
    }

    /// How long a lease is used after it was asked for (default 1 s; 10 ms to 60 s, and at least
    /// twice the backend's [timeout](RedisBackend::timeout); checked when a layer is built).
    /// Longer leases cost fewer round trips; shorter ones bound the time a unit is admitted after
    /// it was counted, and the time a dead replica's units take to come back.
    pub const fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The most units one lease holds (default: what the quota earns in one time to live, at most
    /// a quarter of its burst). Larger leases cost fewer round trips; smaller ones bound what a
    /// replica holds (and strands if it dies). Capped at the burst.
    pub const fn max_units(mut self, units: NonZeroU32) -> Self {
        self.max_units = Some(units);
        self
    }

    /// The time to live.
    pub const fn get_ttl(&self) -> Duration {
        self.ttl
    }

    /// The most units one lease holds, if set.
    pub const fn get_max_units(&self) -> Option<NonZeroU32> {
        self.max_units
    }
}

/// A [`RedisBackend`] whose rate limiters lease their hot keys' quotas: built by
/// [`RedisBackend::leased`]; give it to a limiter's `.backend(..)`. See the
/// [module documentation](self).
#[derive(Clone)]
pub struct LeasedRedisBackend {
    backend: RedisBackend,
    config: LeaseConfig,
}

impl fmt::Debug for LeasedRedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeasedRedisBackend")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .finish()
    }
}

impl LeasedRedisBackend {
    /// The backend leases are taken through.
    pub fn backend(&self) -> &RedisBackend {
        &self.backend
    }

    /// The lease configuration.
    pub fn config(&self) -> LeaseConfig {
        self.config
    }
}

impl RedisBackend {
    /// This backend in leased mode, for rate limiters with hot keys: each replica leases slices of
    /// a key's quota and decides from them in memory; cold keys stay exact. Opt-in per limiter
    /// (exact mode, one round trip per decision, is the default): `.backend(redis.clone().leased(LeaseConfig::new()))`.
    /// See [the lease module](crate::backend::redis::lease) for the bounds on exactness.
    pub fn leased(self, config: LeaseConfig) -> LeasedRedisBackend {
        LeasedRedisBackend {
            backend: self,
            config,
        }
    }
}

#[cfg(feature = "rate-limit")]
impl<K> crate::rate_limit::RateLimitBackend<K> for LeasedRedisBackend
where
    K: super::RedisKey + std::hash::Hash + Eq + Clone + Send + Sync + 'static,
{
    type Store = RedisLeasedStore<K>;

    fn rate_limit_store(
        &self,
        spec: &crate::rate_limit::RateLimitSpec,
    ) -> Result<Self::Store, crate::error::ConfigError> {
        use crate::error::ConfigError;
        use crate::rate_limit::quota::Algorithm;

        if spec.algorithm != Algorithm::Gcra {
            return Err(ConfigError::new(
                "algorithm",
                "leased mode supports GCRA only (a sliding window's counts cannot be taken ahead \
                 of time); use exact mode for a sliding window",
            ));
        }
        let ttl = self.config.ttl;
        let timeout = self.backend.settings.timeout;
        if ttl < Duration::from_millis(10) || ttl > Duration::from_secs(60) || ttl < 2 * timeout {
            return Err(ConfigError::new(
                "lease_ttl",
                format!(
                    "the lease time to live must be between 10 ms and 60 s and at least twice \
                     the redis timeout ({timeout:?}); got {ttl:?}"
                ),
            ));
        }
        if !matches!(spec.set.limits(), [one] if !one.is_shadow() && one.name() == spec.name()) {
            return Err(ConfigError::new(
                "limits",
                "leased mode leases the layer's own quota (`.quota(..)`): a default set of several \
                 limits or of a shadow limit is decided exactly, so use exact mode for it",
            ));
        }
        // The exact store validates the settings and the quota for the script, and names the keys.
        let exact = self.backend.rate_limit_store(spec)?;
        Ok(RedisLeasedStore::new(
            &self.backend,
            spec,
            self.config,
            exact,
        ))
    }
}

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::{DEFAULT_LEASE_TTL, LeaseConfig};

    fn read(json: &str) -> Result<LeaseConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn fields_left_out_keep_the_defaults() {
        assert_eq!(read("{}").unwrap(), LeaseConfig::new());
        let ttl_only = read(r#"{ "ttl": "250ms" }"#).unwrap();
        assert_eq!(ttl_only.get_ttl(), Duration::from_millis(250));
        assert_eq!(ttl_only.get_max_units(), None);
        let units_only = read(r#"{ "max_units": 500 }"#).unwrap();
        assert_eq!(units_only.get_ttl(), DEFAULT_LEASE_TTL);
        assert_eq!(units_only.get_max_units(), NonZeroU32::new(500));
    }

    #[test]
    fn durations_are_human_strings_or_seconds() {
        assert_eq!(
            read(r#"{ "ttl": "1m 30s" }"#).unwrap().get_ttl(),
            Duration::from_secs(90)
        );
        assert_eq!(
            read(r#"{ "ttl": 0.5 }"#).unwrap().get_ttl(),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn round_trips_in_the_human_format() {
        let config = LeaseConfig::new()
            .ttl(Duration::from_millis(1500))
            .max_units(NonZeroU32::new(64).unwrap());
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(json, r#"{"ttl":"1s 500ms","max_units":64}"#);
        assert_eq!(read(&json).unwrap(), config);
        // The default writes its time to live and leaves the unset maximum out.
        assert_eq!(
            serde_json::to_string(&LeaseConfig::new()).unwrap(),
            r#"{"ttl":"1s"}"#
        );
    }

    #[test]
    fn mistakes_are_refused_when_read() {
        let typo = read(r#"{ "max_unit": 5 }"#).unwrap_err();
        assert!(typo.contains("unknown field `max_unit`"), "{typo}");
        let zero = read(r#"{ "max_units": 0 }"#).unwrap_err();
        assert!(zero.contains("nonzero"), "{zero}");
        let bad = read(r#"{ "ttl": "fast" }"#).unwrap_err();
        assert!(bad.contains("invalid duration"), "{bad}");
    }
}
