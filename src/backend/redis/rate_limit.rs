//! The Redis rate-limit store.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use redis::Value;

use super::conn::{Conn, Script};
use super::{FailurePolicy, RedisBackend, RedisKey, StoreClock};
use crate::backend::memory::MemoryRateLimitStore;
use crate::backend::memory::map::{BoundedMap, Expiring};
use crate::backend::{BackendError, ErrorKind, MemoryBackend};
use crate::clock::{Clock, Nanos};
use crate::error::ConfigError;
use crate::hooks::Hooks;
use crate::rate_limit::quota::{Algorithm, Limits};
use crate::rate_limit::{
    Ask, Check, Decision, LimitSet, RateLimitBackend, RateLimitEvent, RateLimitSpec, RateLimitStore,
};
use crate::throttle::LogThrottle;

/// The largest tolerance (GCRA) or period (sliding window) the scripts handle exactly: their Lua
/// numbers are doubles, exact below 2^53, and they add two such values at most.
const MAX_SCRIPT_NANOS: Nanos = 1 << 52;

/// The GCRA decision script as Redis runs it: the helpers every rate limit script shares
/// (`prelude.lua`), those of the GCRA state (`gcra_tat.lua`, shared with the lease script), then
/// its own body.
const GCRA_LUA: &str = concat!(
    include_str!("prelude.lua"),
    include_str!("gcra_tat.lua"),
    include_str!("gcra.lua")
);

/// The sliding-window decision script as Redis runs it: the shared helpers, then its body.
const WINDOW_LUA: &str = concat!(
    include_str!("prelude.lua"),
    include_str!("sliding_window.lua")
);

fn gcra_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(GCRA_LUA))
}

fn window_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(WINDOW_LUA))
}

/// The SHA1 of the script behind `algorithm`, as `EVALSHA` takes it (for benchmarks and tools that
/// call the script directly).
pub fn script_sha(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => gcra_script().sha(),
        Algorithm::SlidingWindow => window_script().sha(),
    }
}

/// The source of the script behind `algorithm`.
pub fn script_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => GCRA_LUA,
        Algorithm::SlidingWindow => WINDOW_LUA,
    }
}

/// A period as short text: `60s`, `250ms`, `1000000333ns`.
fn period_text(nanos: Nanos) -> String {
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", nanos / 1_000_000_000)
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", nanos / 1_000_000)
    } else {
        format!("{nanos}ns")
    }
}

/// A key known to be over its limit until `until`: refused locally, with no round trip.
#[derive(Debug, Default)]
pub(crate) struct OverLimit {
    until: AtomicU64,
    reset_at: AtomicU64,
}

impl Expiring for OverLimit {
    type Context = ();

    fn is_idle(&self, _: &(), now: Nanos) -> bool {
        now >= self.until.load(Ordering::Acquire)
    }

    fn due(&self, _: &()) -> Nanos {
        self.until.load(Ordering::Relaxed)
    }
}

/// The [`RateLimitStore`] kept in Redis: one script call per decision, shared by every replica.
/// Built by [`RedisBackend`].
///
/// - A refusal is remembered locally until its retry time: further requests for that key are
///   refused without a round trip (their decision is the one Redis would give, with the time
///   moved on). Another replica's traffic can only push a key's admission later, never earlier, so
///   this never refuses what Redis would admit.
/// - When Redis fails (unreachable, timed out, or unreadable data with
///   [`repair_corrupt_data(false)`](RedisBackend::repair_corrupt_data)), the store follows its
///   [`FailurePolicy`]. While Redis is known to be down, requests do not wait for it: one request
///   per 100 ms probes it, and decisions go back to Redis as soon as one succeeds. A call given
///   up on its timeout does not count when Redis runs it later (see the
///   [module documentation](super#a-request-is-counted-once-even-when-redis-answers-late)).
pub struct RedisRateLimitStore<K> {
    inner: Arc<Inner<K>>,
}

pub(super) struct Inner<K> {
    conn: Arc<Conn>,
    script: &'static Script,
    algorithm: Algorithm,
    limits: Limits,
    /// The layer's default set, the one this store decides.
    set: Arc<LimitSet>,
    name: Arc<str>,
    /// `<prefix>:rl:<name>:<algorithm>:{`, to which the key and `}` are appended.
    key_head: Vec<u8>,
    /// The script's first two arguments (emission and tolerance, or period and limit).
    params: [Vec<u8>; 2],
    timeout: Duration,
    policy: FailurePolicy,
    clock: StoreClock,
    /// The script's fifth argument: `1` to repair state it cannot read, `0` to report it.
    repair: &'static [u8],
    over_limit: BoundedMap<K, OverLimit>,
    local: Option<MemoryRateLimitStore<K, StoreClock>>,
    log: LogThrottle,
    repair_log: LogThrottle,
    /// The layer's hooks, told of fallbacks, and its name as events carry it.
    hooks: Hooks<RateLimitEvent>,
    event_name: &'static str,
    #[cfg(feature = "metrics")]
    meters: Meters,
}

/// The store's metric keys, made once (labels built per call would allocate).
#[cfg(feature = "metrics")]
struct Meters {
    fallback: metrics::Key,
    repaired: metrics::Key,
}

#[cfg(feature = "metrics")]
impl Meters {
    fn new(name: &str, policy: FailurePolicy) -> Self {
        Self {
            fallback: crate::metrics::key(
                "rampart_rate_limit_backend_fallback_total",
                name.to_string(),
                &[("policy", policy.as_str())],
            ),
            repaired: crate::metrics::key(
                "rampart_rate_limit_backend_repaired_total",
                name.to_string(),
                &[],
            ),
        }
    }

    fn count(key: &metrics::Key) {
        crate::metrics::counter(key).increment(1);
    }
}

impl<K> fmt::Debug for RedisRateLimitStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RedisRateLimitStore")
            .field("key_prefix", &String::from_utf8_lossy(&i.key_head))
            .field("algorithm", &i.algorithm)
            .field("limits", &i.limits)
            .field("timeout", &i.timeout)
            .field("failure_policy", &i.policy)
            .field("conn", &i.conn)
            .finish_non_exhaustive()
    }
}

impl<K> Clone for RedisRateLimitStore<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq + Clone + RedisKey> RedisRateLimitStore<K> {
    /// The shared part of the limiter's Redis state (its failure policy, its reply reader), for
    /// the leased store built on this one.
    pub(super) fn shared(&self) -> &Inner<K> {
        &self.inner
    }

    /// The Redis key holding `key`'s state.
    pub fn redis_key(&self, key: &K) -> Vec<u8> {
        self.inner.redis_key(key)
    }

    /// The failure policy this store follows.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// How many keys are remembered as over their limit right now (idle ones included until they
    /// are swept).
    pub fn over_limit_len(&self) -> usize {
        self.inner.over_limit.len()
    }
}

/// The error for a decision the Redis stores do not make yet.
pub(super) fn unserved(ask: &Ask<'_>) -> BackendError {
    BackendError::new(
        format!(
            "the redis rate limit store decides one enforced limit at a cost of 1, the layer's \
             own quota (asked: {} limit(s), cost {}, peek {}); several limits, costs, peeks, \
             tiers and live changes on Redis are not supported yet",
            ask.set().limits().len(),
            ask.units(),
            ask.is_peek()
        ),
        None,
    )
}

impl<K> Inner<K> {
    /// Whether this store can decide `ask`: the plain case for the quota it was built with.
    #[inline]
    pub(super) fn serves(&self, ask: &Ask<'_>) -> bool {
        ask.plain().is_some_and(|l| l.limits == self.limits)
    }
}

impl<K: Hash + Eq + Clone + RedisKey> Inner<K> {
    fn redis_key(&self, key: &K) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key_head.len() + 48);
        out.extend_from_slice(&self.key_head);
        key.write_redis_key(&mut out);
        out.push(b'}');
        out
    }

    /// A refusal remembered for `key`, as Redis would now give it.
    #[inline]
    fn remembered(&self, key: &K, now: Nanos) -> Option<Decision> {
        let (until, reset_at) = self.over_limit.get(key, |o| {
            (
                o.until.load(Ordering::Acquire),
                o.reset_at.load(Ordering::Acquire),
            )
        })?;
        (now < until).then(|| {
            Decision::refused(self.limits.limit, reset_at.saturating_sub(now), until - now)
        })
    }

    fn remember(&self, key: &K, sent: Nanos, d: &Decision) {
        let retry = crate::clock::duration_to_nanos(d.retry_after());
        if retry == 0 {
            return;
        }
        let reset = crate::clock::duration_to_nanos(d.reset());
        self.over_limit.with(key, &(), sent, |o| {
            o.reset_at
                .store(sent.saturating_add(reset), Ordering::Release);
            o.until.store(sent.saturating_add(retry), Ordering::Release);
        });
    }

    /// What the failure policy makes of a failed decision.
    /// What the failure policy makes of a decision Redis could not make: the exact store's and the
    /// leased store's (one policy, one local store, one warning, one event and metric per limiter).
    pub(super) fn fallback(&self, key: &K, error: BackendError) -> Result<Decision, BackendError> {
        #[cfg(feature = "metrics")]
        Meters::count(&self.meters.fallback);
        self.hooks.emit(|| RateLimitEvent::BackendFallback {
            name: self.event_name,
            policy: self.policy.as_str(),
            error: error.to_string(),
        });
        if error.kind() != ErrorKind::Unreachable
            && let Some(suppressed) = self.log.check()
        {
            tracing::warn!(
                limiter = %self.name,
                %error,
                policy = self.policy.as_str(),
                suppressed,
                "redis rate limit decision failed; following the failure policy"
            );
        }
        match (self.policy, &self.local) {
            (FailurePolicy::Open, _) => Ok(Decision::uncounted(self.limits.limit)),
            (FailurePolicy::Local, Some(local)) => Ok(local.decide(key)),
            (FailurePolicy::Closed, _) | (FailurePolicy::Local, None) => Err(error),
        }
    }

    /// Reads the script's answer, `[allowed, a, b, repaired]` (the connection took the server's
    /// time off the end), logging and counting a repair.
    fn parse(&self, value: &Value, redis_key: &[u8]) -> Result<Decision, BackendError> {
        let bad = || {
            BackendError::with_kind(
                ErrorKind::Data,
                format!("redis answered the rate limit script with {value:?}"),
                None,
            )
        };
        let n = self.read_reply(value, redis_key).ok_or_else(bad)?;
        let limit = self.limits.limit;
        Ok(match (n[0], self.algorithm) {
            (1, Algorithm::Gcra) => Decision::admitted(limit, n[1], self.limits.emission, n[2]),
            (1, _) => Decision::admitted(limit, n[1], 1, n[2]),
            (0, _) => Decision::refused(limit, n[1], n[2]),
            _ => return Err(bad()),
        })
    }

    /// The script replaced state it could not read at `redis_key` with a fresh one.
    #[cold]
    /// Reads a decision or lease script's answer, `[n0, n1, n2, repaired]` (the connection took
    /// the server's time off the end): three counts, and what the script repaired at the key (empty
    /// when nothing), logged and counted here. `None` for any other shape. One reader for the exact
    /// and the leased store, which share the scripts' conventions.
    pub(super) fn read_reply(&self, value: &Value, redis_key: &[u8]) -> Option<[u64; 3]> {
        let Value::Array(items) = value else {
            return None;
        };
        let [n0, n1, n2, repaired] = items.as_slice() else {
            return None;
        };
        let mut n = [0u64; 3];
        for (slot, item) in n.iter_mut().zip([n0, n1, n2]) {
            match item {
                Value::Int(i) if *i >= 0 => *slot = *i as u64,
                _ => return None,
            }
        }
        match repaired {
            Value::BulkString(what) if what.is_empty() => {}
            Value::BulkString(what) => self.repaired(redis_key, what),
            _ => return None,
        }
        Some(n)
    }

    fn repaired(&self, redis_key: &[u8], what: &[u8]) {
        #[cfg(feature = "metrics")]
        Meters::count(&self.meters.repaired);
        if let Some(suppressed) = self.repair_log.check() {
            tracing::warn!(
                limiter = %self.name,
                key = %String::from_utf8_lossy(redis_key),
                problem = %String::from_utf8_lossy(what),
                suppressed,
                "redis held state this limiter cannot read at this key; replaced it with a fresh \
                 state (see RedisBackend::repair_corrupt_data)"
            );
        }
    }

    async fn decide_remote(
        self: Arc<Self>,
        key: K,
        redis_key: Vec<u8>,
        sent: Nanos,
        clock_arg: Option<String>,
    ) -> Result<Decision, BackendError> {
        let now_arg = clock_arg.as_deref().unwrap_or("").as_bytes();
        // With a caller's clock, Redis expiry (on Redis time) must not cut a key short.
        let min_ttl: &[u8] = if clock_arg.is_some() { b"600000" } else { b"0" };
        let result = self
            .conn
            .eval_before_deadline(
                self.script,
                &[&redis_key],
                &[
                    &self.params[0],
                    &self.params[1],
                    now_arg,
                    min_ttl,
                    self.repair,
                ],
                self.timeout,
            )
            .await
            .and_then(|v| self.parse(&v, &redis_key));
        match result {
            Ok(d) => {
                if !d.is_allowed() {
                    self.remember(&key, sent, &d);
                }
                Ok(d)
            }
            Err(e) => self.fallback(&key, e),
        }
    }
}

/// A pending decision of the Redis store (boxed; the type is named so it can change without
/// breaking anyone).
pub struct RedisCheck {
    inner: Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>,
}

impl fmt::Debug for RedisCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCheck").finish_non_exhaustive()
    }
}

impl Future for RedisCheck {
    type Output = Result<Decision, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<K> RateLimitStore<K> for RedisRateLimitStore<K>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    type Future = RedisCheck;

    fn check(&self, key: &K, ask: &Ask<'_>) -> Check<RedisCheck> {
        let inner = &self.inner;
        if !inner.serves(ask) {
            return Check::Ready(Err(unserved(ask)));
        }
        let now = inner.clock.now();
        if let Some(d) = inner.remembered(key, now) {
            return Check::Ready(Ok(d));
        }
        if !inner.conn.admit() {
            return Check::Ready(inner.fallback(key, inner.conn.down_error()));
        }
        let clock_arg = inner.clock.is_custom().then(|| now.to_string());
        let redis_key = inner.redis_key(key);
        let fut = Arc::clone(inner).decide_remote(key.clone(), redis_key, now, clock_arg);
        Check::Pending(RedisCheck {
            inner: Box::pin(fut),
        })
    }
}

impl<K> RateLimitBackend<K> for RedisBackend
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    type Store = RedisRateLimitStore<K>;

    fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError> {
        self.check_settings()?;
        if spec.set.limits().len() != 1 || spec.set.limits()[0].is_shadow() {
            return Err(ConfigError::new(
                "limits",
                "the redis backend decides one enforced limit per layer for now; several limits \
                 and shadow limits are not supported on Redis yet",
            ));
        }
        let limits = spec.limits;
        let (script, code, params) = match spec.algorithm {
            Algorithm::Gcra => {
                if limits.tolerance > MAX_SCRIPT_NANOS {
                    return Err(ConfigError::new(
                        "quota",
                        format!(
                            "the Redis backend handles GCRA bursts spanning up to 52 days \
                             (burst x period / limit); {} per {:?} with a burst of {} spans {:?}",
                            limits.limit,
                            spec.quota.period(),
                            limits.burst,
                            Duration::from_nanos(limits.tolerance)
                        ),
                    ));
                }
                (
                    gcra_script(),
                    "gcra",
                    [limits.emission.to_string(), limits.tolerance.to_string()],
                )
            }
            Algorithm::SlidingWindow => {
                if limits.period > MAX_SCRIPT_NANOS || limits.period < 1_000 {
                    return Err(ConfigError::new(
                        "quota",
                        format!(
                            "the Redis backend handles sliding-window periods from 1 microsecond \
                             to 52 days (got {:?})",
                            spec.quota.period()
                        ),
                    ));
                }
                (
                    window_script(),
                    "sw",
                    [limits.period.to_string(), limits.limit.to_string()],
                )
            }
        };
        // The quota is part of the key: limiters with different quotas never read each other's
        // state (a rolling deploy that changes a quota starts its keys afresh).
        let mut key_head = format!(
            "{}:rl:{}:{code}:{}/{}",
            self.settings.prefix,
            spec.name(),
            limits.limit,
            period_text(limits.period)
        );
        if limits.burst != limits.limit {
            key_head.push_str(&format!(":b{}", limits.burst));
        }
        key_head.push_str(":{");
        let key_head = key_head.into_bytes();
        let local = match self.settings.policy {
            FailurePolicy::Local => Some(
                MemoryBackend::new()
                    .max_keys(self.settings.local_max_keys)
                    .clock(self.settings.clock.clone())
                    .rate_limit_store(spec)?,
            ),
            FailurePolicy::Open | FailurePolicy::Closed => None,
        };
        Ok(RedisRateLimitStore {
            inner: Arc::new(Inner {
                conn: Arc::clone(&self.conn),
                script,
                algorithm: spec.algorithm,
                limits,
                set: Arc::clone(&spec.set),
                name: Arc::from(spec.name()),
                key_head,
                params: params.map(String::into_bytes),
                timeout: self.settings.timeout,
                policy: self.settings.policy,
                clock: self.settings.clock.clone(),
                repair: if self.settings.repair { b"1" } else { b"0" },
                over_limit: BoundedMap::new(self.settings.local_max_keys),
                local,
                log: LogThrottle::new(Duration::from_secs(10)),
                repair_log: LogThrottle::new(Duration::from_secs(10)),
                hooks: spec.hooks.clone(),
                event_name: spec.event_name,
                #[cfg(feature = "metrics")]
                meters: Meters::new(spec.name(), self.settings.policy),
            }),
        })
    }
}

impl<K> crate::rate_limit::StoreLimits for RedisRateLimitStore<K> {
    fn limit_set(&self) -> &Arc<crate::rate_limit::LimitSet> {
        &self.inner.set
    }
}
