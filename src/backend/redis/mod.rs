//! The Redis backend (feature `redis`; Redis Cluster with `redis-cluster`): limits shared by every
//! replica of an application, exactly.
//!
//! # How it decides
//!
//! Each decision is **one round trip**: a Lua script (run with `EVALSHA`, sent whole when the server
//! answers `NOSCRIPT`) that reads Redis's own `TIME`, so replicas with skewed clocks agree, and runs
//! the same arithmetic as the in-memory store: the same [`Decision`](crate::rate_limit::Decision),
//! headers included. Keys are `<prefix>:rl:<algorithm>:<quota>:{<limiter>/<key>}`, for example
//! `rampart:rl:gcra:10/60s:{default/203.0.113.9}`, and expire once their state is that of a fresh
//! key, so idle keys vanish. The braces are a Redis Cluster hash tag holding the limiter's name and
//! the key: on a cluster, the keys of differently named limiters spread over the slots (even the
//! one key of each global limiter, `{uploads/global}`, `{search/global}`), while everything one
//! limiter keeps for one key is in one slot. Names cannot hold `/`, so the first `/` ends the name
//! and no two limiters share a key. Raw header values (API keys) are hashed before they go to
//! Redis; see [`RedisKey`].
//!
//! Under load, decisions made while another is on its way to Redis share a round trip: they go as
//! one call of the script's batch form (up to 16), which decides each exactly as the script alone
//! does, each with its own deadline and its own answer or error, all at the one instant of the
//! batch's `TIME`; a lone decision goes out at once.
//! A cluster's decisions are never batched;
//! [`RedisBackend::batch_decisions(false)`](RedisBackend::batch_decisions) turns it off on a
//! single node (behind a proxy that shards by a command's first key).
//!
//! **Name your limiters.** In memory every layer counts on its own; in Redis a limiter is
//! identified by its prefix, [name](crate::rate_limit::RateLimitBuilder::name), algorithm and quota,
//! so that the replicas of one application share it. Two different limiters of one application with
//! the same quota (say, two routes each limited to 100 per minute per IP) share counts unless they
//! have distinct names: `.name("uploads")`, `.name("search")`. On Redis Cluster, distinct names also
//! put the limiters' keys in their own slots.
//!
//! A key found over its limit is remembered in the replica until its retry time: a client
//! hammering a refused key costs no Redis round trips at all.
//!
//! # Limits, tiers and live changes
//!
//! A layer's tiers, several limits at once, costs, peeks and shadow limits
//! ([`Limit`](crate::rate_limit::Limit), [`RateLimitHandle`](crate::rate_limit::RateLimitHandle))
//! are decided in Redis exactly as in memory, and still in **one round trip**: the script gets every limit of the set and decides them together,
//! all or nothing over the enforced ones.
//!
//! - **One key, one value.** Every limit of a key (the default set's, every tier's, the key's own)
//!   keeps its state in the one Redis key a single-quota limiter has,
//!   `<prefix>:rl:<algorithm>:<quota>:{<limiter>/<key>}` with the quota the layer was built with
//!   ([`RedisRateLimitStore::redis_key`]): a decision over any number of limits reads and writes
//!   one value (`TIME`, one `GET`, one `SET`), in one Cluster slot by construction. While the only
//!   live state is that of the limit named after the layer (the one
//!   [`quota`](crate::rate_limit::RateLimitBuilder::quota) sets), the value is that state alone,
//!   byte for byte what a single-quota limiter writes (a single-quota limiter's value is read as
//!   it is, and such a limiter reads what this one writes). Otherwise the value is *packed*:
//!   one entry per limit, `|<name>|<expires>|<state>` (the layer's own limit with an empty name;
//!   `<expires>` in ms on the Redis clock), each expiring on its own; the key's expiry is the
//!   longest entry's. An entry of a limit not in a decision (another tier the key was in, a limit
//!   removed at run time) is kept while it is live and dropped at the next write after it expires.
//!   The [leased store](#leased-quotas-for-hot-keys) reads and writes the own limit's state in the
//!   same value.
//! - **State follows the limit's name.** Two tiers with a limit named `minute` share a key's state
//!   under it, and a change of a limit's quota keeps the state (with GCRA the arrival time carries
//!   over, up to the new quota's tolerance). So a state ahead of what a limit's current quota
//!   allows is read, not repaired (it was written under a quota of a longer tolerance, and counts
//!   as spent in full under this one); only what no quota could write is
//!   [unreadable](#state-the-scripts-cannot-read).
//! - **The over-limit memory** answers only what Redis answered: a refusal is replayed for the same
//!   limits at the same cost (a refusal of 5 units says nothing about 1); peeks and sets with a
//!   shadow limit always go to Redis; an admission of the key forgets it.
//! - **The failure policy** gets the same question: [`Local`](FailurePolicy::Local) decides the
//!   set, cost and peek in memory.
//! - A limit the scripts cannot decide exactly (a GCRA burst spanning more than 52 days, a
//!   sliding window shorter than 1 µs or longer than 52 days) is a [`ConfigError`] when the layer
//!   is built if it is among the default limits (the store is built for those); in a tier or given
//!   through a handle, its decisions are left to the failure policy (the store sees those sets only
//!   when asked them).
//!
//! **Live changes reach every replica within [`policy_poll_interval`](RedisBackend::policy_poll_interval)
//! (1 s by default) plus the [timeout](RedisBackend::timeout).** A change made through a
//! [`RateLimitHandle`](crate::rate_limit::RateLimitHandle) applies at once in the replica that
//! made it, and is written to Redis under the limiter's own hash tag: the hash
//! `{<prefix>:rl:<limiter>}:policies` (a version, and each changed tier's, the default's and each
//! key's own limits) and the sorted set `{<prefix>:rl:<limiter>}:changes` (each field, scored with
//! the version of its last change), both in the slot of `<prefix>:rl:<limiter>`. Each replica asks
//! for what changed every interval (one `HMGET` of the version and its run when nothing did) and
//! applies it:
//!
//! - a tier's limits and the default limits at once;
//! - a key's own limits at that key's first request after the poll (that request is decided with
//!   the limits it had; every later one with the new): the replica learns a key's own limits under
//!   the key's Redis form, which cannot be turned back into the layer's key type, and holds them
//!   until it sees the key.
//!
//! The changes stay in Redis, so a replica started later applies them too (it polls right after it
//! is built); limits set in code apply to whatever no handle has changed. When two replicas change
//! the same tier or key, the change that reaches Redis last wins everywhere. While Redis is down, a
//! change waits in the replica that made it (applied there already) and is written when Redis
//! answers again; the others keep the limits they have. Data the replica cannot read there (not
//! limits, limits that cannot work, a newer release's format) is skipped, logged at most once per
//! 10 s and counted; the limits in force stay.
//!
//! (Per-key limits read by the script itself would reach every replica at once, but a key's own
//! limits must be known where the layer resolves the key, to build its headers, and keeping the
//! plain decision's call exactly as it was matters more than the interval: a key's change is
//! rare, every request is not.)
//!
//! # Leased quotas for hot keys
//!
//! Opt-in per limiter, `.backend(redis.leased(LeaseConfig::new()))` lets each replica lease slices
//! of a hot key's quota in one round trip and decide from them in memory, past what one Redis
//! shard runs; cold keys stay exact. No over-admission in count; see [`lease`] for the design and
//! the bounds.
//!
//! # Shared circuits
//!
//! With the `circuit-breaker` feature, the same backend shares circuit breakers between replicas:
//! `CircuitBreakerLayer::builder().name("payments").backend(redis.clone())`. Calls never wait for
//! Redis: each replica syncs its circuits in the background, one script call per circuit per sync
//! interval, on keys `<prefix>:cb:{<name>/<key>}`; a replica that cannot reach Redis runs its own
//! circuit until it can (the [`FailurePolicy`] does not apply to circuits). See
//! [Shared circuit state](crate::circuit_breaker#shared-circuit-state).
//!
//! # When Redis is slow or gone
//!
//! Every call has a timeout ([`RedisBackend::timeout`], 50 ms by default): no request waits longer
//! than that because of Redis. A call that fails or times out marks Redis as down; from then on
//! requests do not wait for it at all, one request per 100 ms probes it, and decisions go back to
//! Redis as soon as a probe succeeds (the connection reconnects by itself). Meanwhile each limiter
//! follows its [`FailurePolicy`]:
//!
//! | policy | while Redis is down |
//! |---|---|
//! | [`Local`](FailurePolicy::Local) (default) | limits in memory with the same quota, per replica |
//! | [`Open`](FailurePolicy::Open) | lets every request through, without `RateLimit` headers |
//! | [`Closed`](FailurePolicy::Closed) | refuses at once: HTTP 503, gRPC `UNAVAILABLE` ([`BackendUnavailable`](crate::backend::BackendUnavailable)) |
//!
//! The policy is part of the backend value given to a layer, so each layer chooses its own:
//! `.backend(redis.clone().failure_policy(FailurePolicy::Closed))`.
//!
//! ## When a connection goes silent
//!
//! A connection that stops answering without being closed (a dropped NAT or conntrack entry, a VIP
//! failover, a migrated VM: no RST, no FIN) only times out; the `redis` crate reconnects a closed
//! connection, not one that times out, so every call would time out until the kernel gave up on
//! the socket (some 15 minutes). So the first timeout makes the connection a suspect: one `PING`
//! goes down that connection (on a cluster, to every master), and when it is not answered within
//! the [liveness timeout](RedisBackend::liveness_timeout) (1 s by default) a new connection is
//! opened and put in its place; the old one closes once the calls waiting on it have given up. From
//! the first timeout, decisions go back to Redis within the liveness timeout, plus the time to open
//! a connection, plus at most one probe interval (100 ms). A connection that answers in time was only
//! slow, and is kept; a stall longer than the liveness timeout cannot be told from a dead connection
//! and replaces it (harmlessly, at most once per liveness timeout).
//!
//! A connection to one node that answers `READONLY` or `MASTERDOWN` (a primary demoted by a
//! failover, behind a virtual IP or DNS name that now leads to the new primary) still answers
//! `PING`, so it is replaced on that reply instead, at most once per liveness timeout; meanwhile
//! its decisions follow the failure policy. (A cluster connection follows the slots' new owners
//! itself.)
//!
//! The same rule serves every store built on the backend (rate limiters, shared circuits, caches)
//! and the application's own commands sent through [`RedisBackend::connection`].
//!
//! The knobs, and what each does:
//!
//! | knob | what it catches |
//! |---|---|
//! | [`timeout`](RedisBackend::timeout) (50 ms) | a call that waits too long: the failure policy decides, and the connection becomes a suspect |
//! | [`liveness_timeout`](RedisBackend::liveness_timeout) (1 s) | a suspect that does not answer `PING`: replaced |
//! | [`CONNECT_TIMEOUT`] (2 s) | opening a connection (at start-up, and each attempt to replace one, tried again until it succeeds) |
//! | TCP keepalive (5 s idle, then every 1 s, 3 probes) | an idle connection to a host that is gone: closed by the kernel |
//! | `TCP_USER_TIMEOUT` (5 s, Linux) | data unacknowledged that long: closed by the kernel |
//!
//! The TCP settings apply to the connections [`connect`](RedisBackend::connect),
//! [`connect_lazy`](RedisBackend::connect_lazy) and `connect_cluster` open; a client given with
//! [`from_client`](RedisBackend::from_client) or `from_cluster_client` keeps its own.
//!
//! ## A request is counted once, even when Redis answers late
//!
//! Giving up on a call does not take it back: Redis runs what it has received, perhaps long after
//! (at the end of a stall, say). Were that call to count, a request the failure policy answered
//! would count in Redis as well: a client refused with 503 under `Closed` would find its quota
//! spent by the refused requests, and under `Open` or `Local` its requests would count twice.
//!
//! So each call tells its script the time, on Redis's clock, after which the caller will have
//! given up; a script that starts later writes nothing. The backend learns how Redis's clock
//! relates to its own from the `TIME` each reply carries (and from [`connect`](RedisBackend::connect)
//! and [`ping`](RedisBackend::ping)): a reply received at local time `r` from a script that ran at
//! Redis time `t` shows that Redis's clock is at least `t - r` ahead, and the largest such bound of
//! the last 10 to 20 s is the estimate. The deadline therefore errs early, by about the travel
//! time of the fastest recent reply, which is the time a reply needs to get back before the caller
//! gives up. No clock needs to be synchronised, and nothing is configured. (Sending this host's
//! wall-clock deadline with a fixed allowance for skew would not do: a host whose clock is behind
//! Redis's by more than the allowance would see every call refused as late, and one ahead by more
//! would be protected from nothing.)
//!
//! Counting is exactly once, except (at least once, as a store without the bound would be):
//!
//! - before anything has come back from Redis: the first calls of a
//!   [`connect_lazy`](RedisBackend::connect_lazy) backend or one made from an existing
//!   connection, until its first decision or `ping`, carry no bound;
//! - a script that starts just before the deadline and whose reply travels back slower than the
//!   fastest recent one;
//! - on Redis Cluster, nodes whose clocks differ: one estimate serves every node and follows the one
//!   furthest ahead, so a node behind by `d` runs calls up to `d` late (NTP keeps that to a
//!   millisecond or so);
//! - for 10 to 20 s after Redis's clock is stepped back.
//!
//! When Redis's clock is stepped forward, scripts take calls the caller still waits for as late;
//! the reply corrects the estimate at once and the call is sent once more.
//!
//! ## State the scripts cannot read
//!
//! A limiter's key holding something its script cannot read was written by something else (most
//! likely a leftover, or another program's keys under the same prefix): another type of value,
//! text that is not a state, or a state no decision writes, such as a GCRA arrival time further
//! ahead than any quota allows (2^52 ns, about 52 days, and 1 s more, which leaves room for the
//! clocks of failed-over nodes) or sliding-window counts of 2^32 or more. (A state beyond what the
//! limit's own quota allows was written under a quota of a longer tolerance before a change at run
//! time: it is read, as spent in full under the limit's quota and no more, as in memory. A sliding
//! window's state names the period it
//! was counted under: after a change of the period each count goes to the window of the new
//! period holding the latest instant it can have been made at, as in memory, and is written back
//! so moved on any decision but a peek; a state without it, as builds before it wrote, is read in
//! the decision's period. A period no limit can have is unreadable.) By default the script
//! replaces it with a fresh state and decides as for a new key, and the store logs a warning
//! (naming the key and what was wrong, at most once per 10 s per limiter) and counts the repair.
//! With
//! [`repair_corrupt_data(false)`](RedisBackend::repair_corrupt_data) the data is left for someone
//! to look at, and every decision on that key is a [`BackendError`](crate::backend::BackendError) that
//! [`is_corrupt_data`](crate::backend::BackendError::is_corrupt_data), handled by the failure policy and counted,
//! until the key is deleted.
//!
//! ## Health and metrics
//!
//! [`is_connected`](RedisBackend::is_connected) says whether the last call reached Redis (an error
//! reply such as `READONLY` or `OOM` counts: the connection is up); it is `false` until something
//! has. With the `metrics` feature:
//!
//! | metric | what |
//! |---|---|
//! | `rampart_redis_up{server}` | gauge: 1 while calls reach Redis, 0 while they fail; absent until known |
//! | `rampart_redis_errors_total{server,kind}` | calls that failed: `unreachable`, `timeout`, `data`, `other` |
//! | `rampart_rate_limit_backend_fallback_total{name,policy}` | decisions left to the failure policy |
//! | `rampart_rate_limit_backend_repaired_total{name}` | unreadable states replaced with fresh ones |
//! | `rampart_rate_limit_policy_errors_total{name}` | live changes read from Redis that could not apply (see [above](#limits-tiers-and-live-changes)) |
//! | `rampart_rate_limit_lease_calls_total{name}`, `_lease_units_total`, `_lease_stranded_units_total` | a [leased](lease) limiter's round trips, units leased, units expired unused |
//! | `rampart_redis_reconnects_total{server}` | connections replaced because they went silent, or reached a node that takes no writes |
//!
//! `server` is the URL without credentials (`redis://10.0.0.5:6379/0`; the node list for a
//! cluster), or `external` for a backend made from an existing connection.
//!
//! # Example
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use tower_rampart::backend::{FailurePolicy, RedisBackend};
//! use tower_rampart::key::PeerIp;
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! # async fn run() -> Result<(), tower_rampart::BoxError> {
//! let redis = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
//! let limit = RateLimitLayer::builder()
//!     .name("metrics") // identifies the limiter in Redis, shared by every replica
//!     .quota(Quota::per_minute(10))
//!     .key(PeerIp::new())
//!     .backend(redis.clone().failure_policy(FailurePolicy::Local))
//!     .http()
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/api/metrics", post(|| async { "stored" }))
//!     .layer(limit);
//! // For a health endpoint: `redis.is_connected()`, or `redis.ping().await.is_ok()`.
//! # let _ = app; Ok(()) }
//! ```
//!
//! # Caches
//!
//! Given to a [`CacheLayer`](crate::cache::CacheLayer) (feature `cache`), the backend makes every
//! replica share one cache, with single flight across replicas and invalidation seen by all; see
//! [`RedisCacheStore`] (what is stored, the bound on upstream calls, invalidation's cost, what
//! happens while Redis is down).
//!
//! ```no_run
//! # #[cfg(feature = "cache")]
//! # async fn run() -> Result<(), tower_rampart::BoxError> {
//! use std::time::Duration;
//! use tower_rampart::backend::RedisBackend;
//! use tower_rampart::cache::CacheLayer;
//!
//! let redis = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
//! let summaries = CacheLayer::builder()
//!     .http()
//!     .name("summaries") // part of its keys in Redis: shared by the replicas that use the name
//!     .ttl(Duration::from_secs(300))
//!     .backend(redis)
//!     .build()?; // HTTP mode stores `CachedResponse`s: no type to name
//! let handle = summaries.handle(); // invalidations reach every replica
//! # let _ = handle; Ok(()) }
//! ```

#[cfg(feature = "circuit-breaker")]
mod circuit;
// The stores that use all of the connection's machinery are behind their layers' features.
mod backend;
#[cfg(feature = "cache")]
mod cache;
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
mod clock;
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
mod conn;
mod connection;
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
mod error;
mod key;
pub mod lease;
#[cfg(feature = "rate-limit")]
mod over_limit;
#[cfg(feature = "rate-limit")]
mod policy_sync;
#[cfg(feature = "rate-limit")]
mod rate_limit;
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
mod script;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use self::backend::RedisBackend;

#[cfg(feature = "cache")]
pub use self::cache::{
    CacheCodec, DEFAULT_CACHE_SLOTS, MAX_CACHE_SLOTS, RedisCacheFuture, RedisCacheStore,
    RedisCacheValue, UndecodableEntry,
};
#[cfg(feature = "circuit-breaker")]
pub use self::circuit::{RedisCircuitStore, RedisSync, circuit_script_sha};
pub use self::conn::DEFAULT_LIVENESS_TIMEOUT;
pub use self::connection::{FencedScript, RedisConnection};
pub use self::key::{Hashed, RedisKey};
pub use self::lease::{DEFAULT_LEASE_TTL, LeaseConfig, LeasedRedisBackend};
#[cfg(feature = "rate-limit")]
pub use self::lease::{LeaseCheck, RedisLeasedStore};
#[cfg(feature = "rate-limit")]
pub use self::rate_limit::{
    RedisCheck, RedisRateLimitStore, batch_script_sha, batch_script_source, script_sha,
    script_source,
};

pub(crate) use self::clock::StoreClock;
use crate::error::ConfigError;

/// The default per-call timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// How often a rate limiter asks Redis for live changes made by other replicas, by default (see
/// [`RedisBackend::policy_poll_interval`]).
pub const DEFAULT_POLICY_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "rampart";

/// How long [`RedisBackend::connect`] waits for the server to answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What a limiter does when Redis cannot decide (unreachable, too slow, or holding data it cannot
/// read). Recovery is automatic whichever is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Fall back to an in-memory limiter with the same quota (the default): limits still hold, per
    /// replica (so N replicas admit up to N times the quota between them) until Redis returns.
    #[default]
    Local,
    /// Let requests through, uncounted and without `RateLimit` header fields.
    Open,
    /// Refuse requests with [`BackendUnavailable`](crate::backend::BackendUnavailable)
    /// (HTTP 503, gRPC `UNAVAILABLE`), at once.
    Closed,
}

impl FailurePolicy {
    /// `"local"`, `"open"` or `"closed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Open => "open",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FailurePolicy {
    type Err = ConfigError;

    /// Parses `local`, `open` or `closed` (any case), as from an environment variable.
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "local" => Ok(Self::Local),
            "open" => Ok(Self::Open),
            "closed" => Ok(Self::Closed),
            _ => Err(ConfigError::new(
                "failure_policy",
                format!("{s:?} is not one of \"local\", \"open\", \"closed\""),
            )),
        }
    }
}
