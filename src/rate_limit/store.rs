//! The state behind a rate limiter, and the backends that provide it.

use std::future::Future;
use std::sync::Arc;

use super::algorithm::Decision;
use super::quota::{Algorithm, Limits, Quota};
use crate::backend::BackendError;
use crate::error::ConfigError;

/// Where a rate limiter keeps its counts: one atomic decision per request.
///
/// A store is built for one quota and one algorithm by a [`RateLimitBackend`], and shared (in an
/// `Arc`) by every clone of the layer and every service it makes. Implementations must decide
/// atomically: two concurrent checks on one key must never both take the last unit of quota.
///
/// `check` returns [`Check::Ready`] when the decision is known at once (the in-memory store always
/// is, so its hot path allocates nothing and never yields) and [`Check::Pending`] with a future when
/// it needs I/O (Redis).
pub trait RateLimitStore<K>: Send + Sync + 'static {
    /// The future of a decision that needs I/O.
    type Future: Future<Output = Result<Decision, BackendError>> + Send + 'static;

    /// Counts one request for `key` and says whether it may pass.
    fn check(&self, key: &K) -> Check<Self::Future>;
}

/// A decision that is known now, or a future that will produce it: the store result every layer's
/// store answers ([`StoreOp`](crate::backend::StoreOp)), of a [`Decision`].
pub type Check<F> = crate::backend::StoreOp<Decision, F>;

impl<K, S: RateLimitStore<K>> RateLimitStore<K> for Arc<S> {
    type Future = S::Future;

    #[inline]
    fn check(&self, key: &K) -> Check<Self::Future> {
        (**self).check(key)
    }
}

/// A source of [`RateLimitStore`]s: the in-memory backend, or Redis.
///
/// The layer's builder calls [`rate_limit_store`](Self::rate_limit_store) once, with the validated
/// quota and algorithm.
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

/// What a backend needs to know to build a store: the (validated) quota and algorithm, and the
/// limiter's name (used, for example, in Redis key prefixes and metrics labels).
#[derive(Clone, Debug)]
pub struct RateLimitSpec {
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
    /// The quota, already validated for [`algorithm`](Self::algorithm).
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
