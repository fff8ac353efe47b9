//! The Redis rate-limit store.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use self::call::{params, unscriptable};
use super::conn::{Batcher, Conn, Script};
use super::over_limit::{OverLimits, Remembered, tag};
use super::policy_sync::PolicySync;
use super::script::compose;
use super::{FailurePolicy, RedisBackend, RedisKey, StoreClock};
use crate::backend::memory::MemoryRateLimitStore;
use crate::backend::{BackendError, ErrorKind, MemoryBackend};
use crate::clock::{Clock, Nanos};
use crate::error::ConfigError;
use crate::hooks::Hooks;
use crate::rate_limit::quota::{Algorithm, Limits};
use crate::rate_limit::{
    Ask, Check, Decision, LimitSet, PolicyChange, PolicySink, RateLimitBackend, RateLimitEvent,
    RateLimitSpec, RateLimitStore,
};
use crate::throttle::LogThrottle;

mod call;
mod reply;

/// The largest tolerance (GCRA) or period (sliding window) the scripts handle exactly: their Lua
/// numbers are doubles, exact below 2^53, and they add two such values at most.
const MAX_SCRIPT_NANOS: Nanos = 1 << 52;

/// The fragments the rate limit scripts write out where a line `--#include <name>` stands
/// ([`compose`](super::script::compose)): the GCRA decision of one limit (`gcra.lua`), the split
/// of a decimal nanosecond time (`split_ns.lua`) and the read of the server's `TIME` (`time.lua`).
/// `decision` is the algorithm's decision of the single form (`decide.lua`).
pub(in crate::backend::redis) const FRAGMENTS: [(&str, &str); 3] = [
    ("gcra.lua", include_str!("../gcra.lua")),
    ("split_ns.lua", include_str!("../split_ns.lua")),
    ("time.lua", include_str!("../time.lua")),
];

/// The parts of a decision script, in order, and the single form's decision: the helpers every
/// rate limit script shares (`prelude.lua`); for the sliding window its one-limit decision
/// (`sliding_window.lua`, functions); the clock (`now.lua`, shared with the lease script), the
/// key's value and the single form on a bare value (`decide.lua`, with the algorithm's decision in
/// place: `gcra.lua` inline, or a call of the sliding window's), GCRA's one-limit decision as a
/// function (`gcra_decide_one.lua`, shared with the lease script), the packed value's entries
/// (`entries.lua`, shared with the lease script) and the decision over a set of limits
/// (`limit_set.lua`). The body runs from the top on every call, and each function defined on the
/// way is a closure made anew, so the single form on a bare value makes none and returns before
/// the set form's helpers are defined (`benches/redis_script_cost.sh` measures what each form
/// costs Redis). `batch` makes it the batch form (`batch.lua`).
fn decision_script(algorithm: Algorithm, batch: bool) -> String {
    let (head, tail, decision) = match algorithm {
        Algorithm::Gcra => (
            "",
            include_str!("../gcra_decide_one.lua"),
            include_str!("../gcra.lua"),
        ),
        Algorithm::SlidingWindow => (
            include_str!("../sliding_window.lua"),
            "",
            include_str!("../window_decision.lua"),
        ),
    };
    let (open, close) = if batch {
        (
            include_str!("../batch_open.lua"),
            include_str!("../batch.lua"),
        )
    } else {
        ("", "")
    };
    // The first of a name counts: a batch's decisions take the `TIME` it read once.
    let mut includes = vec![("decision", decision)];
    if batch {
        includes.push((
            "time.lua",
            "local time_us, margin_us = batch_time_us, batch_margin_us\n",
        ));
    }
    includes.extend(FRAGMENTS);
    // In the batch form GCRA's `decide_one` is made once for the batch, before `one`; in the
    // single script after the single form, which never makes it.
    let (early, late) = if batch { (tail, "") } else { ("", tail) };
    compose(
        &[
            include_str!("../prelude.lua"),
            head,
            early,
            open,
            include_str!("../now.lua"),
            include_str!("../decide.lua"),
            late,
            include_str!("../entries.lua"),
            include_str!("../limit_set.lua"),
            close,
        ],
        &includes,
    )
}

fn gcra_batch_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(decision_script(Algorithm::Gcra, true)))
}

fn window_batch_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(decision_script(Algorithm::SlidingWindow, true)))
}

fn gcra_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(decision_script(Algorithm::Gcra, false)))
}

fn window_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(decision_script(Algorithm::SlidingWindow, false)))
}

/// The SHA1 of the script behind `algorithm`, as `EVALSHA` takes it (for benchmarks and tools that
/// call the script directly).
pub fn script_sha(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => gcra_script().sha(),
        Algorithm::SlidingWindow => window_script().sha(),
    }
}

/// The source of the batch form of the script behind `algorithm`: several decisions in one call
/// (each decision's arguments after their count), as the store sends decisions made at once (see
/// [`RedisBackend::batch_decisions`]). For tools that load scripts ahead of time.
pub fn batch_script_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => gcra_batch_script().code(),
        Algorithm::SlidingWindow => window_batch_script().code(),
    }
}

/// The SHA1 of the batch form of the script behind `algorithm`, as `EVALSHA` takes it.
pub fn batch_script_sha(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => gcra_batch_script().sha(),
        Algorithm::SlidingWindow => window_batch_script().sha(),
    }
}

/// The source of the script behind `algorithm`.
pub fn script_source(algorithm: Algorithm) -> &'static str {
    match algorithm {
        Algorithm::Gcra => gcra_script().code(),
        Algorithm::SlidingWindow => window_script().code(),
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

/// The [`RateLimitStore`] kept in Redis: one script call per decision, shared by every replica.
/// Built by [`RedisBackend`].
///
/// - Decisions made while another is on its way to Redis go together, as one call of the script's
///   batch form (up to 16, on a single node), each decided, fenced by its own deadline and
///   answered exactly as alone; a lone decision goes out at once.
/// - A decision over a set of limits (a tier's, a key's own, several quotas at once) is one
///   script call too, on one Redis key: every limit of a key keeps its state in that key's one
///   value, so a decision reads and writes it once whatever the number of limits (and it is one
///   Cluster slot); the limits are decided and spent all or nothing in the script (see the
///   [module documentation](super#limits-tiers-and-live-changes)).
/// - A refusal is remembered locally until its retry time: further requests for that key with the
///   same limits and the same cost are refused without a round trip (their decision is the one
///   Redis would give, with the time moved on). Another replica's traffic can only push a key's
///   admission later, never earlier, so this never refuses what Redis would admit (while replicas
///   disagree on a quota changed at run time, another replica's refusal may rebase a key spent
///   under the old quota earlier; the memory then refuses until the retry time it was told). A request with
///   another cost or other limits goes to Redis (a refusal of 5 units says nothing about 1), and
///   so do peeks and sets with shadow limits (a shadow limit must spend what it admits, even
///   when an enforced limit refuses).
/// - When Redis fails (unreachable, timed out, or unreadable data with
///   [`repair_corrupt_data(false)`](RedisBackend::repair_corrupt_data)), the store follows its
///   [`FailurePolicy`], for the same request (its limits, cost and peek). While Redis is known to
///   be down, requests do not wait for it: one request per 100 ms probes it, and decisions go back
///   to Redis as soon as one succeeds. A call given up on its timeout does not count when Redis
///   runs it later (see the
///   [module documentation](super#a-request-is-counted-once-even-when-redis-answers-late)).
pub struct RedisRateLimitStore<K> {
    inner: Arc<Inner<K>>,
}

pub(super) struct Inner<K> {
    conn: Arc<Conn>,
    /// The decision script, and its calls waiting to be sent as one (`conn/batch.rs`).
    batcher: Arc<Batcher>,
    algorithm: Algorithm,
    /// The layer's default set, as built.
    set: Arc<LimitSet>,
    name: Arc<str>,
    /// The limit whose state is the bare value a single-quota limiter has always written (its name
    /// is the layer's, and it is in the default set), and its quota as built.
    own: Option<(&'static str, Limits)>,
    /// `<prefix>:rl:<algorithm>:<quota>:{<name>/`, to which the key and `}` are appended, with
    /// the quota the layer was built with (its `own` limit's, or else its first limit's): the key
    /// of a key's state, every limit's. The hash tag is the name and the key.
    key_head: Vec<u8>,
    /// The script's first two arguments for the `own` limit as built.
    params: [Vec<u8>; 2],
    /// The tag of the default set at cost 1, for the over-limit memory.
    default_tag: u64,
    timeout: Duration,
    policy: FailurePolicy,
    clock: StoreClock,
    /// The script's fifth argument: `1` to repair state it cannot read, `0` to report it.
    repair: &'static [u8],
    over_limit: OverLimits<K>,
    /// Live changes to and from the other replicas.
    sync: Arc<PolicySync<K>>,
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
            .field("limits", &i.set)
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

    /// The Redis key holding `key`'s state: every limit's (the default set's, every tier's, the
    /// key's own), in one value (see the
    /// [module documentation](super#limits-tiers-and-live-changes)).
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

    /// The Redis keys holding the limiter's live changes: the policies hash and its change log
    /// (see [Limits, tiers and live changes](super#limits-tiers-and-live-changes)).
    pub fn policy_keys(&self) -> [Vec<u8>; 2] {
        self.inner.sync.redis_keys().clone()
    }
}

/// The set a pending decision asks about: the store's default set (not cloned on the hot path) or
/// another.
enum SetOf {
    Default,
    Other(Arc<LimitSet>),
}

impl SetOf {
    fn new<K>(inner: &Inner<K>, set: &Arc<LimitSet>) -> Self {
        if Arc::ptr_eq(set, &inner.set) {
            Self::Default
        } else {
            Self::Other(Arc::clone(set))
        }
    }

    fn get<'a, K>(&'a self, inner: &'a Inner<K>) -> &'a Arc<LimitSet> {
        match self {
            Self::Default => &inner.set,
            Self::Other(set) => set,
        }
    }
}

/// The tag of `set` at `cost` for the over-limit memory.
fn set_tag(set: &LimitSet, cost: u32) -> u64 {
    tag(set.limits().iter().map(|l| (l.name, &l.limits)), cost)
}

impl<K: RedisKey> Inner<K> {
    /// The Redis key of `key`'s state, every limit's.
    pub(super) fn redis_key(&self, key: &K) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.key_head.len() + 48);
        out.extend_from_slice(&self.key_head);
        key.write_redis_key(&mut out);
        out.push(b'}');
        out
    }

    /// Whether the limit named `limit` is the layer's own: its state is the value's bare form (the
    /// single form's, without a name).
    fn is_own(&self, limit: &str) -> bool {
        self.own.is_some_and(|(own, _)| own == limit)
    }
}

impl<K: Hash + Eq + Clone + RedisKey + Send + Sync + 'static> Inner<K> {
    /// Before a decision for `key`: the sync task runs, and `key`'s own limits received from
    /// another replica apply (two atomic loads when there is nothing to do).
    #[inline]
    pub(super) fn live_changes(&self, key: &K) {
        self.sync.start();
        self.sync.apply_pending(key);
    }

    /// A refusal remembered for `key` that answers `ask`, as Redis would now give it.
    #[inline]
    fn remembered(&self, key: &K, ask: &Ask<'_>, now: Nanos) -> Option<Decision> {
        let set = ask.set();
        let r = self.over_limit.get(key, now, || {
            if ask.units() == 1 && Arc::ptr_eq(set, &self.set) {
                self.default_tag
            } else {
                set_tag(set, ask.units())
            }
        })?;
        Some(replay(set, r, now))
    }

    /// Whether a refusal of `ask` may be remembered and answered locally: not for peeks, nor for
    /// sets with shadow limits (they spend what they admit, whatever the others say).
    #[inline]
    fn memorable(ask: &Ask<'_>) -> bool {
        !ask.is_peek() && ask.set().limits().iter().all(|l| !l.shadow)
    }

    /// What the failure policy makes of a decision Redis could not make: the exact store's and the
    /// leased store's (one policy, one local store, one warning, one event and metric per limiter).
    pub(super) fn fallback(
        &self,
        key: &K,
        ask: &Ask<'_>,
        error: BackendError,
    ) -> Result<Decision, BackendError> {
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
            (FailurePolicy::Open, _) => Ok(Decision::uncounted(ask.set().limits()[0].limits.limit)),
            (FailurePolicy::Local, Some(local)) => match local.check(key, ask) {
                Check::Ready(decision) => decision,
                // The in-memory store always decides at once.
                Check::Pending(_) => Err(error),
            },
            (FailurePolicy::Closed, _) | (FailurePolicy::Local, None) => Err(error),
        }
    }

    /// [`fallback`](Self::fallback) for the layer's default limits at cost 1 (the leased store's
    /// requests).
    pub(super) fn fallback_default(
        &self,
        key: &K,
        error: BackendError,
    ) -> Result<Decision, BackendError> {
        self.fallback(key, &Ask::new(&self.set), error)
    }

    /// One limit at cost 1, spent (the form single-quota limiters have always sent).
    async fn decide_one(
        self: Arc<Self>,
        key: K,
        set: SetOf,
        redis_key: Vec<u8>,
        params: Option<[Vec<u8>; 2]>,
        sent: Nanos,
        clock_arg: Option<String>,
    ) -> Result<Decision, BackendError> {
        let now_arg = clock_arg.as_deref().unwrap_or("").as_bytes();
        // With a caller's clock, Redis expiry (on Redis time) must not cut a key short.
        let min_ttl: &[u8] = if clock_arg.is_some() { b"600000" } else { b"0" };
        let params = params.as_ref().unwrap_or(&self.params);
        let limits = set.get(&self);
        let limit = &limits.limits()[0];
        let result = self
            .conn
            .eval_batched(
                &self.batcher,
                &redis_key,
                &[&params[0], &params[1], now_arg, min_ttl, self.repair],
                self.timeout,
            )
            .await
            .and_then(|v| self.parse_one(&v, &redis_key, limit));
        match result {
            Ok(d) => {
                if d.is_allowed() {
                    self.over_limit.forget(&key);
                } else {
                    let tag = match set {
                        SetOf::Default => self.default_tag,
                        SetOf::Other(ref s) => set_tag(s, 1),
                    };
                    self.over_limit.remember(&key, sent, &d, tag);
                }
                Ok(d)
            }
            Err(e) => self.fallback(&key, &Ask::new(limits), e),
        }
    }

    /// A set of limits, or any cost, or a peek: the set form.
    #[allow(clippy::too_many_arguments)]
    async fn decide_set(
        self: Arc<Self>,
        key: K,
        set: SetOf,
        cost: u32,
        peek: bool,
        redis_key: Vec<u8>,
        args: Vec<Vec<u8>>,
        sent: Nanos,
    ) -> Result<Decision, BackendError> {
        let limits = set.get(&self);
        let arg_refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let result = self
            .conn
            .eval_batched(&self.batcher, &redis_key, &arg_refs, self.timeout)
            .await
            .and_then(|v| self.parse_set(&v, &redis_key, limits));
        let ask = Ask {
            set: limits,
            cost,
            peek,
        };
        match result {
            Ok(d) => {
                if !d.is_allowed() && Self::memorable(&ask) {
                    self.over_limit
                        .remember(&key, sent, &d, set_tag(limits, cost));
                } else if d.is_allowed() && !peek && cost > 0 {
                    self.over_limit.forget(&key);
                }
                Ok(d)
            }
            Err(e) => self.fallback(&key, &ask, e),
        }
    }
}

/// A remembered refusal of `set`, as Redis would now give it.
fn replay(set: &LimitSet, r: Remembered, now: Nanos) -> Decision {
    let limit = set.limits()[r.binding.min(set.limits().len() - 1)]
        .limits
        .limit;
    Decision::refused(limit, r.reset_at.saturating_sub(now), r.until - now).with_binding(r.binding)
}

/// A pending decision of the Redis store (boxed; the type is named so it can change without
/// breaking anyone).
pub struct RedisCheck {
    pub(super) inner: Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>,
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
        inner.live_changes(key);
        let now = inner.clock.now();
        if Inner::<K>::memorable(ask)
            && let Some(d) = inner.remembered(key, ask, now)
        {
            return Check::Ready(Ok(d));
        }
        if !inner.conn.admit() {
            return Check::Ready(inner.fallback(key, ask, inner.conn.down_error()));
        }
        let clock_arg = inner.clock.is_custom().then(|| now.to_string());
        let set = SetOf::new(inner, ask.set());
        let fut: Pin<Box<dyn Future<Output = _> + Send>> = match ask.plain() {
            // The layer's own limit at cost 1, spent: the single form.
            Some(limit) if inner.is_own(limit.name) => {
                let built = inner
                    .own
                    .is_some_and(|(name, l)| name == limit.name && l == limit.limits);
                let params = if built {
                    None
                } else if let Some(why) = unscriptable(inner.algorithm, &limit.limits) {
                    let error = BackendError::new(format!("limit {:?}: {why}", limit.name), None);
                    return Check::Ready(inner.fallback(key, ask, error));
                } else {
                    Some(params(inner.algorithm, &limit.limits))
                };
                let redis_key = inner.redis_key(key);
                Box::pin(Arc::clone(inner).decide_one(
                    key.clone(),
                    set,
                    redis_key,
                    params,
                    now,
                    clock_arg,
                ))
            }
            _ => match inner.set_call(key, ask, clock_arg.as_deref()) {
                Ok((redis_key, args)) => Box::pin(Arc::clone(inner).decide_set(
                    key.clone(),
                    set,
                    ask.units(),
                    ask.is_peek(),
                    redis_key,
                    args,
                    now,
                )),
                Err(error) => return Check::Ready(inner.fallback(key, ask, error)),
            },
        };
        Check::Pending(RedisCheck { inner: fut })
    }

    fn publish_policy(&self, change: &PolicyChange<K>) {
        self.inner.sync.publish(change);
    }

    fn subscribe_policies(&self, sink: PolicySink<K>) {
        self.inner.sync.subscribe(sink);
    }
}

impl<K> RateLimitBackend<K> for RedisBackend
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    type Store = RedisRateLimitStore<K>;

    fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError> {
        self.check_settings()?;
        for l in spec.set.limits() {
            if let Some(why) = unscriptable(spec.algorithm, &l.limits) {
                let setting = if spec.set.limits().len() == 1 {
                    "quota"
                } else {
                    "limits"
                };
                return Err(ConfigError::new(setting, why));
            }
        }
        let (batcher, code) = match spec.algorithm {
            Algorithm::Gcra => (
                Batcher::new(gcra_script(), gcra_batch_script(), self.settings.batch),
                "gcra",
            ),
            Algorithm::SlidingWindow => (
                Batcher::new(window_script(), window_batch_script(), self.settings.batch),
                "sw",
            ),
        };
        let name = spec.name();
        // The name goes inside the hash tag with the key (`{<name>/<key>}`): on Redis Cluster the
        // keys of differently named limiters hash to their own slots (with the key alone, every
        // global limiter of an app shared the one slot of `{global}`), and every limit of one
        // limiter's key is still in one key. Names cannot hold `/` (nor braces): the first `/`
        // ends the name, so no two limiters' name and key write the same bytes.
        if name.contains(['/', '{', '}']) {
            return Err(ConfigError::new(
                "name",
                format!("{name:?} cannot name a Redis limiter: it holds `/` or a brace"),
            ));
        }
        let mut key_head = format!("{}:rl:{code}:", self.settings.prefix).into_bytes();
        // Every limit of a key is in the value at the key a single-quota limiter uses, with the
        // quota the layer was built with in it (a single-quota limiter's value is read as the
        // limit named after the layer's, and a deploy that changes the layer's quota starts
        // afresh, as it always has).
        let own = spec
            .set
            .limits()
            .iter()
            .find(|l| l.name == spec.name())
            .map(|l| (l.name, l.limits));
        let own_limits = own.map_or(spec.set.limits()[0].limits, |(_, l)| l);
        key_head.extend_from_slice(
            format!("{}/{}", own_limits.limit, period_text(own_limits.period)).as_bytes(),
        );
        if own_limits.burst != own_limits.limit {
            key_head.extend_from_slice(format!(":b{}", own_limits.burst).as_bytes());
        }
        key_head.extend_from_slice(b":{");
        key_head.extend_from_slice(name.as_bytes());
        key_head.push(b'/');
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
                batcher,
                algorithm: spec.algorithm,
                set: Arc::clone(&spec.set),
                name: Arc::from(name),
                own,
                key_head,
                params: params(spec.algorithm, &own_limits),
                default_tag: set_tag(&spec.set, 1),
                timeout: self.settings.timeout,
                policy: self.settings.policy,
                clock: self.settings.clock.clone(),
                repair: if self.settings.repair { b"1" } else { b"0" },
                over_limit: OverLimits::new(self.settings.local_max_keys),
                sync: Arc::new(PolicySync::new(
                    Arc::clone(&self.conn),
                    &self.settings.prefix,
                    spec.name(),
                    self.settings.policy_poll_interval,
                    self.settings.timeout,
                )),
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
    fn limit_set(&self) -> &Arc<LimitSet> {
        &self.inner.set
    }
}

/// Checks of the scripts' text that no server run can make here (the tests' Redis is 7.0).
#[cfg(test)]
pub(crate) mod script_text_tests {
    use super::{batch_script_source, script_source};
    use crate::rate_limit::quota::Algorithm;

    /// Redis before 5 allows writes after the non-deterministic `TIME` only once
    /// `redis.replicate_commands()` has been called: on a server without `REDIS_VERSION_NUM` the
    /// script must call it before its first `TIME`, unconditionally but for that check.
    pub(crate) fn replicates_commands_before_time(script: &str) {
        let guard = script
            .find("if redis.replicate_commands and not redis.REDIS_VERSION_NUM then")
            .expect("the call is guarded by the version check alone");
        let call = guard
            + script[guard..]
                .find("\n  redis.replicate_commands()\n")
                .expect("the guarded block calls redis.replicate_commands()");
        let time = script
            .find("redis.call('TIME')")
            .expect("the script reads TIME");
        assert!(
            guard < call && call < time,
            "guard {guard}, call {call}, TIME {time}"
        );
        // Nothing between the guard and the call but the comment and the call itself.
        let between = &script[guard..call];
        assert_eq!(between.matches("\nend").count(), 0, "{between}");
        assert_eq!(script.matches("redis.call('TIME')").count(), 1);
    }

    #[test]
    fn the_decision_scripts_replicate_commands_before_time_on_redis_before_7() {
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
            replicates_commands_before_time(script_source(algorithm));
            replicates_commands_before_time(batch_script_source(algorithm));
        }
    }
}
