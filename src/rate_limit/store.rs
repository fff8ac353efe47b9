//! The state behind a rate limiter, and the backends that provide it.

use std::future::Future;
use std::sync::Arc;

use super::algorithm::Decision;
use super::handle::{PolicyChange, PolicySink};
use super::limit::{Ask, LimitSet};
use super::quota::{Algorithm, Limits, Quota};
use crate::backend::BackendError;
use crate::error::ConfigError;

/// Where a rate limiter keeps its counts: one atomic decision per request.
///
/// A store is built for a layer by a [`RateLimitBackend`], and shared (in an `Arc`) by every clone
/// of the layer and every service it makes. Each decision says what it asks ([`Ask`]): a
/// [`LimitSet`] (one or more named limits), a cost in units, and whether to spend or only look.
///
/// # Semantics every store follows
///
/// - Every limit of the set is decided against its own state for the key, at a `now` read after
///   that state was loaded (so no decision sees a spend made with a later clock than its own):
///   GCRA limits at one `now` for the set, read again only when another decision wins the race
///   for a cell; the in-memory sliding window reads the clock under each limit's lock, so a set's
///   window limits are decided at reads nanoseconds apart; Redis decides every limit at one
///   server `TIME`. State identity is (key, limit name): changing a limit's quota keeps its state.
/// - A limit admits when its state has room for `cost` units (GCRA:
///   `max(tat, now) + cost * emission - now <= tolerance`; sliding window:
///   `weighted count + cost <= limit`).
/// - Enforced limits: the request is admitted if and only if every one admits, and then every
///   enforced limit spends `cost`. If any refuses, none spends (never partially).
/// - A shadow limit is decided as if it were the only limit: it spends if it admits itself, and
///   never refuses; [`Decision::shadow_refused_mask`] says which would have.
/// - A peek ([`Ask::is_peek`]) is the same decision with nothing spent anywhere.
/// - A cost of zero is admitted without spending. A cost above an enforced limit's capacity (its
///   burst, or the sliding window's limit) is refused with no retry time
///   ([`Decision::exceeds_capacity`]).
/// - The returned [`Decision`]'s figures are the *binding* limit's ([`Decision::policy_index`]):
///   when refused, the refusing enforced limit with the longest `retry_after`; when admitted, the
///   enforced limit with the fewest remaining (ties: the first). With only shadow limits: allowed,
///   with the figures of the one with the fewest remaining.
/// - One enforced limit, cost 1, not a peek: exactly the single-quota decision (the in-memory
///   store's lock-free cell, Redis's one script call).
///
/// Implementations must decide atomically: two concurrent checks on one key must never both take
/// the last unit of quota.
///
/// `check` returns [`Check::Ready`] when the decision is known at once (the in-memory store always
/// is, so its hot path allocates nothing and never yields) and [`Check::Pending`] with a future when
/// it needs I/O (Redis).
pub trait RateLimitStore<K>: Send + Sync + 'static {
    /// The future of a decision that needs I/O.
    type Future: Future<Output = Result<Decision, BackendError>> + Send + 'static;

    /// Decides `ask` for `key`: spends its cost on every limit of its set if they all admit (and
    /// `ask` is not a peek), and says whether the request may pass.
    fn check(&self, key: &K, ask: &Ask<'_>) -> Check<Self::Future>;

    /// Decides one unit of `set`, the default set this store was built with when it is one
    /// enforced limit (the layer asks this only then, and only while no live change has replaced
    /// that set): the plain single-quota decision. The default asks [`check`](Self::check) with
    /// [`Ask::new`]; a store may answer it with a path of its own that skips reading the set.
    #[inline]
    fn check_plain(&self, key: &K, set: &Arc<LimitSet>) -> Check<Self::Future> {
        self.check(key, &Ask::new(set))
    }

    /// Carries a change made through a [`RateLimitHandle`](super::RateLimitHandle) (already
    /// applied to this replica) to the other replicas sharing this store's state. The default does
    /// nothing: the in-memory store's state is this process's only.
    fn publish_policy(&self, change: &PolicyChange<K>) {
        let _ = change;
    }

    /// Called once when the layer is built, with where to apply changes received from other
    /// replicas ([`PolicySink::apply`]). The default ignores it.
    fn subscribe_policies(&self, sink: PolicySink<K>) {
        let _ = sink;
    }
}

/// A store that knows the limits it was built for (the layer's default set): every store of this
/// crate. Code that holds only a store (tests, benchmarks, tools) asks it the layer's plain
/// question with `store.check(&key, &Ask::new(store.limit_set()))`.
pub trait StoreLimits {
    /// The layer's default set, as the store was built with it.
    fn limit_set(&self) -> &Arc<LimitSet>;
}

impl<S: StoreLimits> StoreLimits for Arc<S> {
    fn limit_set(&self) -> &Arc<LimitSet> {
        (**self).limit_set()
    }
}

/// A decision that is known now, or a future that will produce it: the store result every layer's
/// store answers ([`StoreOp`](crate::backend::StoreOp)), of a [`Decision`].
pub type Check<F> = crate::backend::StoreOp<Decision, F>;

impl<K, S: RateLimitStore<K>> RateLimitStore<K> for Arc<S> {
    type Future = S::Future;

    #[inline]
    fn check(&self, key: &K, ask: &Ask<'_>) -> Check<Self::Future> {
        (**self).check(key, ask)
    }

    #[inline]
    fn check_plain(&self, key: &K, set: &Arc<LimitSet>) -> Check<Self::Future> {
        (**self).check_plain(key, set)
    }

    fn publish_policy(&self, change: &PolicyChange<K>) {
        (**self).publish_policy(change);
    }

    fn subscribe_policies(&self, sink: PolicySink<K>) {
        (**self).subscribe_policies(sink);
    }
}

/// A source of [`RateLimitStore`]s: the in-memory backend, or Redis.
///
/// The layer's builder calls [`rate_limit_store`](Self::rate_limit_store) once, with the validated
/// default limit set and algorithm. The store then decides whatever sets the layer asks (its
/// tiers, a key's own limits, live changes).
pub trait RateLimitBackend<K> {
    /// The store this backend builds.
    type Store: RateLimitStore<K>;

    /// Builds a store for `spec`.
    ///
    /// # Errors
    ///
    /// When the backend cannot serve this quota or algorithm.
    fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError>;
}

/// What a backend needs to know to build a store: the (validated) default limits and algorithm,
/// and the limiter's name (used, for example, in Redis key prefixes and metrics labels).
#[derive(Clone, Debug)]
pub struct RateLimitSpec {
    /// The layer's default set (its first limit is `quota` / `limits` below).
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) set: Arc<LimitSet>,
    pub(crate) quota: Quota,
    pub(crate) algorithm: Algorithm,
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) limits: Limits,
    pub(crate) name: Arc<str>,
    /// The layer's hooks, for stores that report events of their own (a Redis fallback).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) hooks: crate::hooks::Hooks<super::RateLimitEvent>,
    /// The name as events carry it.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) event_name: &'static str,
}

impl RateLimitSpec {
    /// The layer's default limits (a set of one, named after the layer, when it was built with
    /// [`quota`](super::RateLimitBuilder::quota)).
    pub fn limit_set(&self) -> &Arc<LimitSet> {
        &self.set
    }

    /// The first default limit's quota, already validated for [`algorithm`](Self::algorithm).
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The counting algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The limiter's name (its `RateLimit-Policy` identifier).
    pub fn name(&self) -> &str {
        &self.name
    }
}
