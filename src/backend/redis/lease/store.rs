//! The leased store: decisions from a replica's leases, lease calls to Redis, the failure policy.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::Value;

use super::LeaseConfig;
use super::cell::{Cell, Claim, Grant, Sizing, Slot};
use crate::backend::memory::map::BoundedMap;
use crate::backend::redis::conn::{Conn, Script};
use crate::backend::redis::rate_limit::FRAGMENTS;
use crate::backend::redis::script::compose;
use crate::backend::redis::{
    FailurePolicy, RedisBackend, RedisKey, RedisRateLimitStore, StoreClock,
};
use crate::backend::{BackendError, ErrorKind};
use crate::clock::{Clock, Nanos, duration_to_nanos};
use crate::rate_limit::quota::Limits;
use crate::rate_limit::{
    Ask, Check, Decision, PolicyChange, PolicySink, RateLimitSpec, RateLimitStore,
};

fn lease_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| {
        Script::new(compose(
            &[
                include_str!("../prelude.lua"),
                include_str!("../now.lua"),
                include_str!("../gcra_decide_one.lua"),
                include_str!("../entries.lua"),
                include_str!("lease.lua"),
            ],
            &FRAGMENTS,
        ))
    })
}

/// A quota leases are carved from, with what follows from it.
struct Terms {
    limits: Limits,
    /// When these terms began (the store's clock; 0 for the built ones): a refusal a key's cell
    /// remembers from before was decided under other terms, and is forgotten.
    since: Nanos,
    /// The default set's [`default_generation`](LimitSet::default_generation) these terms follow
    /// (0 before the first decision).
    generation: u64,
    sizing: Sizing,
    /// The script's first two arguments: emission and tolerance.
    params: [Vec<u8>; 2],
}

impl Terms {
    fn new(limits: Limits, config: &LeaseConfig, since: Nanos, generation: u64) -> Self {
        let ttl = duration_to_nanos(config.get_ttl());
        let burst = u64::from(limits.burst);
        let max = match config.get_max_units() {
            Some(n) => u64::from(n.get()),
            None => (ttl / limits.emission).min(burst / 4),
        }
        .clamp(1, burst);
        Self {
            limits,
            since,
            generation,
            sizing: Sizing { ttl, max },
            params: [
                limits.emission.to_string().into_bytes(),
                limits.tolerance.to_string().into_bytes(),
            ],
        }
    }
}

/// Rounds of waiting for another request's lease call before a request decides on its own.
const WAIT_ROUNDS: usize = 4;

/// The [`RateLimitStore`] of a [`LeasedRedisBackend`](super::LeasedRedisBackend): decisions from
/// this replica's leases of each key's quota, a Redis round trip only to take a lease (cold keys:
/// one per decision, exactly). See the [lease module](super) for how and the bounds.
pub struct RedisLeasedStore<K> {
    inner: Arc<Inner<K>>,
}

struct Inner<K> {
    conn: Arc<Conn>,
    /// The exact store of the same limiter: it names the keys (leases and exact decisions share
    /// them).
    exact: RedisRateLimitStore<K>,
    /// The quota leases are carved from, and what follows from it: the layer's own limit's, as
    /// built, then as changed at run time (`RateLimitHandle::set_default`).
    terms: ArcSwap<Terms>,
    /// The terms' generation and `since`, mirrored for the decisions, which read an atomic rather
    /// than the terms (set after them).
    generation: AtomicU64,
    since: AtomicU64,
    name: Arc<str>,
    config: LeaseConfig,
    ttl: Nanos,
    timeout: Duration,
    policy: FailurePolicy,
    clock: StoreClock,
    repair: &'static [u8],
    cells: BoundedMap<K, Slot>,
    /// The one cell of a limiter whose key type holds no data (a global limit): no hashing.
    single: Arc<Cell>,
    calls: AtomicU64,
    units: AtomicU64,
    stranded: AtomicU64,
    #[cfg(feature = "metrics")]
    meters: Meters,
}

/// The store's metric keys, made once.
#[cfg(feature = "metrics")]
struct Meters {
    calls: metrics::Key,
    units: metrics::Key,
    stranded: metrics::Key,
}

#[cfg(feature = "metrics")]
impl Meters {
    fn new(name: &str) -> Self {
        let key = |metric, labels: &[(&'static str, &'static str)]| {
            crate::metrics::key(metric, name.to_string(), labels)
        };
        Self {
            calls: key("rampart_rate_limit_lease_calls_total", &[]),
            units: key("rampart_rate_limit_lease_units_total", &[]),
            stranded: key("rampart_rate_limit_lease_stranded_units_total", &[]),
        }
    }

    fn add(key: &metrics::Key, n: u64) {
        crate::metrics::counter(key).increment(n);
    }
}

/// What Redis answered a lease call.
enum Reply {
    Granted(Grant),
    Refused(Decision),
}

/// What the hot path found.
enum Hot {
    Done(Decision),
    /// Admitted, and the lease is running low: renew it.
    Renew(Decision, Arc<Cell>),
    /// No live unit: a lease call is needed.
    Miss(Arc<Cell>),
}

impl<K> fmt::Debug for RedisLeasedStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RedisLeasedStore")
            .field("exact", &i.exact)
            .field("config", &i.config)
            .field("max_units", &i.terms.load().sizing.max)
            .finish_non_exhaustive()
    }
}

impl<K> Clone for RedisLeasedStore<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<K: Hash + Eq + Clone + RedisKey + Send + Sync + 'static> RedisLeasedStore<K> {
    pub(super) fn new(
        backend: &RedisBackend,
        spec: &RateLimitSpec,
        config: LeaseConfig,
        exact: RedisRateLimitStore<K>,
    ) -> Self {
        let s = &backend.settings;
        let ttl = duration_to_nanos(config.get_ttl());
        Self {
            inner: Arc::new(Inner {
                conn: Arc::clone(&backend.conn),
                exact,
                terms: ArcSwap::from_pointee(Terms::new(spec.limits, &config, 0, 0)),
                generation: AtomicU64::new(0),
                since: AtomicU64::new(0),
                name: Arc::from(spec.name()),
                config,
                ttl,
                timeout: s.timeout,
                policy: s.policy,
                clock: s.clock.clone(),
                repair: if s.repair { b"1" } else { b"0" },
                cells: BoundedMap::new(s.local_max_keys),
                single: Arc::default(),
                calls: AtomicU64::new(0),
                units: AtomicU64::new(0),
                stranded: AtomicU64::new(0),
                #[cfg(feature = "metrics")]
                meters: Meters::new(spec.name()),
            }),
        }
    }
}

impl<K: Hash + Eq + Clone + RedisKey> RedisLeasedStore<K> {
    /// The Redis key holding `key`'s state (the exact store's).
    pub fn redis_key(&self, key: &K) -> Vec<u8> {
        self.inner.exact.redis_key(key)
    }

    /// The failure policy this store follows.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.policy
    }

    /// The lease configuration.
    pub fn config(&self) -> LeaseConfig {
        self.inner.config
    }

    /// The most units one lease holds (for the quota in force).
    pub fn max_lease_units(&self) -> u64 {
        self.inner.terms.load().sizing.max
    }

    /// Lease calls made to Redis so far (also `rampart_rate_limit_lease_calls_total`).
    pub fn lease_calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    /// Units carved from quotas in Redis so far (also `rampart_rate_limit_lease_units_total`).
    pub fn leased_units(&self) -> u64 {
        self.inner.units.load(Ordering::Relaxed)
    }

    /// Units of leases that expired unused so far (also
    /// `rampart_rate_limit_lease_stranded_units_total`).
    pub fn stranded_units(&self) -> u64 {
        self.inner.stranded.load(Ordering::Relaxed)
    }

    /// Units this replica holds for `key` right now (live, or expired and not yet dropped): what
    /// it would strand if it died now.
    pub fn held_units(&self, key: &K) -> u64 {
        let i = &self.inner;
        if std::mem::size_of::<K>() == 0 {
            return i.single.held();
        }
        i.cells.get(key, |s| s.0.held()).unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone + RedisKey + Send + Sync + 'static> Inner<K> {
    /// The hot path on `cell`.
    #[inline]
    fn hot(&self, cell: &Arc<Cell>, limits: &Limits, now: Nanos) -> Hot {
        if let Some(left) = cell.take(now) {
            let d = cell.admitted(limits, left, now);
            if cell.wants_prefetch(left) {
                return Hot::Renew(d, Arc::clone(cell));
            }
            return Hot::Done(d);
        }
        if let Some(d) = cell.refused(limits.limit, self.since.load(Ordering::Acquire), now) {
            return Hot::Done(d);
        }
        Hot::Miss(Arc::clone(cell))
    }

    /// Leases from `limits` from now on: the layer's own limit changed at run time. Units already
    /// leased under the old quota are served until their lease expires (at most its time to
    /// live), as a lease taken just before the change would be; refusals remembered from before
    /// are forgotten (a raised quota admits at once, as exact mode does).
    #[cold]
    fn retune(&self, limits: Limits, generation: u64, now: Nanos) {
        self.terms.rcu(|current| {
            if current.generation >= generation {
                Arc::clone(current) // a newer change got here first
            } else {
                let since = if current.limits == limits {
                    current.since
                } else {
                    tracing::debug!(limiter = %self.name, ?limits, "leases follow the limiter's new quota");
                    now
                };
                Arc::new(Terms::new(limits, &self.config, since, generation))
            }
        });
        // After the terms: a decision that sees this generation finds them in force. (Racing
        // changes: the largest of each wins; a `since` later than the terms' only forgets a
        // refusal sooner, which costs a call.)
        let terms = self.terms.load();
        self.since.fetch_max(terms.since, Ordering::AcqRel);
        self.generation
            .fetch_max(terms.generation, Ordering::AcqRel);
    }

    /// One lease call for `key`: `n` units wanted, sent at `sent`.
    async fn call(
        &self,
        terms: &Terms,
        key: &K,
        n: u64,
        sent: Nanos,
    ) -> Result<Reply, BackendError> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        Meters::add(&self.meters.calls, 1);
        let redis_key = self.exact.redis_key(key);
        let clock_arg = self.clock.is_custom().then(|| sent.to_string());
        let now_arg = clock_arg.as_deref().unwrap_or("").as_bytes();
        let min_ttl: &[u8] = if clock_arg.is_some() { b"600000" } else { b"0" };
        let n_arg = n.to_string();
        let value = self
            .conn
            .eval_before_deadline(
                lease_script(),
                &[&redis_key],
                &[
                    &terms.params[0],
                    &terms.params[1],
                    now_arg,
                    min_ttl,
                    self.repair,
                    n_arg.as_bytes(),
                ],
                self.timeout,
            )
            .await?;
        let reply = self.parse(terms, &value, &redis_key, n)?;
        if let Reply::Granted(g) = &reply {
            self.units.fetch_add(g.units, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            Meters::add(&self.meters.units, g.units);
        }
        Ok(reply)
    }

    /// Reads `[k, a, b, repaired]` (the connection took the server's time off the end).
    fn parse(
        &self,
        terms: &Terms,
        value: &Value,
        redis_key: &[u8],
        n: u64,
    ) -> Result<Reply, BackendError> {
        let bad = || {
            BackendError::with_kind(
                ErrorKind::Data,
                format!("redis answered the lease script with {value:?}"),
                None,
            )
        };
        let x = self
            .exact
            .shared()
            .read_reply(value, redis_key)
            .ok_or_else(bad)?;
        match x[0] {
            0 => Ok(Reply::Refused(Decision::refused(
                terms.limits.limit,
                x[1],
                x[2],
            ))),
            k if k <= n => Ok(Reply::Granted(Grant {
                units: k,
                slack: x[1],
                ahead: x[2],
            })),
            _ => Err(bad()),
        }
    }

    fn strand(&self, units: u64) {
        if units > 0 {
            self.stranded.fetch_add(units, Ordering::Relaxed);
            #[cfg(feature = "metrics")]
            Meters::add(&self.meters.stranded, units);
        }
    }

    /// What the failure policy makes of a decision Redis could not make: the exact store's own
    /// (one policy, local store, warning, event and metric for the limiter, in either mode).
    fn fallback(&self, key: &K, error: BackendError) -> Result<Decision, BackendError> {
        self.exact.shared().fallback_default(key, error)
    }

    /// After a grant of fewer units than asked for, the quota in Redis is spent at `sent`: a
    /// request that finds none of the units granted left is refused, as exact mode would refuse
    /// it then (rather than wait for another call), for as long as a refusal from Redis would be
    /// remembered.
    fn drained(terms: &Terms, cell: &Cell, g: &Grant, wanted: u64, sent: Nanos) {
        if g.units < wanted {
            let e = terms.limits.emission;
            let retry = g
                .ahead
                .saturating_add(e)
                .saturating_sub(terms.limits.tolerance);
            let d = Decision::refused(terms.limits.limit, g.ahead, retry.max(1));
            cell.refuse(sent, &d, cell.refusal_wait(e));
        }
    }

    /// A lease call by the claimant of `cell` that also decides the caller's request.
    async fn lease_and_serve(
        &self,
        terms: &Terms,
        cell: &Cell,
        key: &K,
    ) -> Result<Decision, BackendError> {
        let now = self.clock.now();
        let (stranded, n) = cell.prepare(&terms.sizing, now);
        self.strand(stranded);
        match self.call(terms, key, n, now).await {
            Ok(Reply::Granted(g)) => {
                cell.grant(&g, 1, now, self.ttl);
                Self::drained(terms, cell, &g, n, now);
                Ok(cell.admitted(&terms.limits, g.units - 1, now))
            }
            Ok(Reply::Refused(d)) => {
                cell.refuse(now, &d, cell.refusal_wait(terms.limits.emission));
                Ok(d)
            }
            Err(e) => self.fallback(key, e),
        }
    }

    /// A request with no live unit: waits for the lease call in flight, or makes it.
    async fn acquire(
        self: Arc<Self>,
        cell: Arc<Cell>,
        key: K,
        mut admitted: bool,
    ) -> Result<Decision, BackendError> {
        // Waiting for other requests' calls takes at most one timeout, and this request's own call
        // another: never more than twice the timeout in all.
        let waits_until = tokio::time::Instant::now() + self.timeout;
        for _ in 0..WAIT_ROUNDS {
            // Read again each round: the quota may have changed while this request waited.
            let terms = self.terms.load_full();
            let limits = &terms.limits;
            let now = self.clock.now();
            if let Some(left) = cell.take(now) {
                return Ok(cell.admitted(limits, left, now));
            }
            if let Some(d) = cell.refused(limits.limit, terms.since, now) {
                return Ok(d);
            }
            if let Some(claim) = cell.claim() {
                // After waiting for another request's call, call Redis only while it answers.
                if !admitted && !self.conn.is_connected() {
                    return self.fallback(&key, self.conn.down_error());
                }
                // The claim is released when this ends, or when this future is dropped.
                let result = self.lease_and_serve(&terms, &cell, &key).await;
                drop(claim);
                return result;
            }
            admitted = false;
            let notified = cell.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cell.is_busy()
                && tokio::time::timeout_at(waits_until, notified)
                    .await
                    .is_err()
            {
                break;
            }
        }
        let terms = self.terms.load_full();
        let limits = &terms.limits;
        let now = self.clock.now();
        if let Some(left) = cell.take(now) {
            return Ok(cell.admitted(limits, left, now));
        }
        if let Some(d) = cell.refused(limits.limit, terms.since, now) {
            return Ok(d);
        }
        // The grants went to the requests ahead of this one: decide this one on its own, exactly.
        if !self.conn.is_connected() {
            return self.fallback(&key, self.conn.down_error());
        }
        let now = self.clock.now();
        match self.call(&terms, &key, 1, now).await {
            Ok(Reply::Granted(g)) => Ok(Decision::admitted(
                limits.limit,
                g.slack,
                limits.emission,
                g.ahead,
            )),
            Ok(Reply::Refused(d)) => {
                cell.refuse(now, &d, cell.refusal_wait(limits.emission));
                Ok(d)
            }
            Err(e) => self.fallback(&key, e),
        }
    }

    /// Renews the lease of the claimed cell in the background, while its units last (the claim is
    /// released when this ends, or when the task is dropped with its runtime).
    async fn renew(self: Arc<Self>, claim: Claim, key: K) {
        let cell = claim.cell();
        if self.conn.admit() {
            let terms = self.terms.load_full();
            let now = self.clock.now();
            let (stranded, n) = cell.prepare(&terms.sizing, now);
            self.strand(stranded);
            match self.call(&terms, &key, n, now).await {
                Ok(Reply::Granted(g)) => {
                    cell.grant(&g, 0, now, self.ttl);
                    Self::drained(&terms, cell, &g, n, now);
                }
                Ok(Reply::Refused(d)) => {
                    cell.refuse(now, &d, cell.refusal_wait(terms.limits.emission));
                }
                // Counted by the connection; the units held keep serving, then the failure policy.
                Err(error) => tracing::debug!(limiter = %self.name, %error, "lease renewal failed"),
            }
        }
        drop(claim);
    }
}

/// A pending leased decision (boxed; the type is named so it can change without breaking anyone).
pub struct LeaseCheck {
    inner: Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>,
}

impl fmt::Debug for LeaseCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseCheck").finish_non_exhaustive()
    }
}

impl Future for LeaseCheck {
    type Output = Result<Decision, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<K> RateLimitStore<K> for RedisLeasedStore<K>
where
    K: RedisKey + Hash + Eq + Clone + Send + Sync + 'static,
{
    type Future = LeaseCheck;

    #[inline]
    fn check(&self, key: &K, ask: &Ask<'_>) -> Check<LeaseCheck> {
        let inner = &self.inner;
        inner.exact.shared().live_changes(key);
        // Leases serve the layer's own limit at cost 1: its default set, with its quota as changed
        // at run time (the newest set; one made before the terms in force, still on its way, is
        // decided exactly). Anything else (another tier's limits, a key's own, several limits, a
        // cost, a peek) is decided exactly.
        let set = ask.set();
        // One atomic load on the way: the terms themselves are read only when this decision needs
        // more than a unit of a lease (a refusal to check, a call to make).
        let generation = inner.generation.load(Ordering::Acquire);
        let own = ask.plain().filter(|l| {
            set.default_generation >= generation
                && set.default_generation != 0
                && l.name == inner.name.as_ref()
        });
        let Some(own) = own else {
            return match inner.exact.check(key, ask) {
                Check::Ready(d) => Check::Ready(d),
                Check::Pending(f) => Check::Pending(LeaseCheck { inner: f.inner }),
            };
        };
        let now = inner.clock.now();
        if set.default_generation != generation {
            inner.retune(own.limits, set.default_generation, now);
        }
        let limits = &own.limits;
        let hot = if std::mem::size_of::<K>() == 0 {
            inner.hot(&inner.single, limits, now)
        } else {
            inner
                .cells
                .with(key, &(), now, |s| inner.hot(&s.0, limits, now))
        };
        match hot {
            Hot::Done(d) => Check::Ready(Ok(d)),
            Hot::Renew(d, cell) => {
                if let Some(claim) = cell.claim() {
                    // Without a runtime the claim is dropped here, released.
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(Arc::clone(inner).renew(claim, key.clone()));
                    }
                }
                Check::Ready(Ok(d))
            }
            Hot::Miss(cell) => {
                if !inner.conn.admit() {
                    return Check::Ready(inner.fallback(key, inner.conn.down_error()));
                }
                let fut = Arc::clone(inner).acquire(cell, key.clone(), true);
                Check::Pending(LeaseCheck {
                    inner: Box::pin(fut),
                })
            }
        }
    }

    fn publish_policy(&self, change: &PolicyChange<K>) {
        self.inner.exact.publish_policy(change);
    }

    fn subscribe_policies(&self, sink: PolicySink<K>) {
        self.inner.exact.subscribe_policies(sink);
    }
}

impl<K> crate::rate_limit::StoreLimits for RedisLeasedStore<K> {
    fn limit_set(&self) -> &Arc<crate::rate_limit::LimitSet> {
        crate::rate_limit::StoreLimits::limit_set(&self.inner.exact)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_lease_script_replicates_commands_before_time_on_redis_before_7() {
        crate::backend::redis::rate_limit::script_text_tests::replicates_commands_before_time(
            &super::lease_script().code,
        );
    }
}
