//! [`Backend`]: memory or Redis, chosen at run time, with one type.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::redis::LeasedRedisBackend;
use super::{MemoryBackend, RedisBackend};

/// A backend chosen at run time: in memory, or shared through Redis.
///
/// A layer's type depends on its backend's store type, so an application that decides at start-up
/// (say, Redis when `REDIS_URL` is set) would otherwise build two layer types and need
/// `tower::util::Either`, `option_layer` or a boxed layer to stack either. Given a `Backend`, every
/// layer has one type whichever is chosen, and no request pays for a box: the store is an enum of
/// the two ([`EitherStore`]), and its future one of theirs ([`EitherFuture`]).
///
/// It implements every layer's backend trait: the rate limiter's
/// ([`RateLimitBackend`](crate::rate_limit::RateLimitBackend)), the cache's
/// ([`CacheBackend`](crate::cache::CacheBackend), for values Redis can store), and the circuit
/// breaker's ([`CircuitBackend`](crate::circuit_breaker::store::CircuitBackend): in memory, each
/// replica's own circuits; in Redis, shared ones).
///
/// Redis in [leased mode](crate::backend::redis::lease) is a third choice with the same type:
/// `Backend::from(redis.leased(config))`. Rate limiters given it lease their hot keys' quotas
/// (their store is then [`RedisModeStore::Leased`]); caches and circuit breakers given it use the
/// Redis backend underneath as [`Backend::Redis`] would, since leases are for rate limits only.
///
/// ```no_run
/// # #[cfg(feature = "rate-limit")]
/// # async fn run() -> Result<(), tower_rampart::BoxError> {
/// use tower_rampart::backend::{Backend, RedisBackend};
/// use tower_rampart::rate_limit::{Quota, RateLimitLayer};
///
/// let backend = match std::env::var("REDIS_URL") {
///     Ok(url) => Backend::from(RedisBackend::connect(&url).await?),
///     Err(_) => Backend::memory(),
/// };
/// // One type, whichever backend was chosen.
/// let limit = RateLimitLayer::builder()
///     .quota(Quota::per_second(100))
///     .backend(backend.clone())
///     .build()?;
/// # let _ = limit; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub enum Backend {
    /// In this process ([`MemoryBackend`]).
    Memory(MemoryBackend),
    /// Shared by every replica through Redis ([`RedisBackend`]).
    Redis(RedisBackend),
    /// Shared through Redis, with rate limiters in [leased mode](crate::backend::redis::lease)
    /// ([`LeasedRedisBackend`], from [`RedisBackend::leased`]); other layers use its Redis backend
    /// as [`Backend::Redis`] does.
    LeasedRedis(LeasedRedisBackend),
}

impl Backend {
    /// The in-memory backend with its defaults.
    pub fn memory() -> Self {
        Self::Memory(MemoryBackend::new())
    }

    /// The Redis backend, if this is one (leased or not: a leased backend's is the one its leases
    /// are taken through).
    pub fn as_redis(&self) -> Option<&RedisBackend> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(redis) => Some(redis),
            Self::LeasedRedis(leased) => Some(leased.backend()),
        }
    }

    /// The leased Redis backend, if this is one.
    pub fn as_leased(&self) -> Option<&LeasedRedisBackend> {
        match self {
            Self::LeasedRedis(leased) => Some(leased),
            Self::Memory(_) | Self::Redis(_) => None,
        }
    }

    /// Whether state is shared through Redis (leased or not).
    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis(_) | Self::LeasedRedis(_))
    }

    /// Applies `f` to the Redis backend (to set a prefix, a timeout or a failure policy for one
    /// layer); a leased backend keeps its [`LeaseConfig`](crate::backend::redis::LeaseConfig), a
    /// memory backend is returned as it is.
    #[must_use]
    pub fn map_redis(self, f: impl FnOnce(RedisBackend) -> RedisBackend) -> Self {
        match self {
            Self::Memory(memory) => Self::Memory(memory),
            Self::Redis(redis) => Self::Redis(f(redis)),
            Self::LeasedRedis(leased) => {
                Self::LeasedRedis(f(leased.backend().clone()).leased(leased.config()))
            }
        }
    }

    /// This backend with rate limiters in [leased mode](crate::backend::redis::lease) when it is
    /// Redis (exact or already leased: the new configuration replaces the old); a memory backend
    /// is returned as it is.
    #[must_use]
    pub fn leased(self, config: crate::backend::redis::LeaseConfig) -> Self {
        match self {
            Self::Memory(memory) => Self::Memory(memory),
            Self::Redis(redis) => Self::LeasedRedis(redis.leased(config)),
            Self::LeasedRedis(leased) => Self::LeasedRedis(leased.backend().clone().leased(config)),
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        Self::memory()
    }
}

impl From<MemoryBackend> for Backend {
    fn from(memory: MemoryBackend) -> Self {
        Self::Memory(memory)
    }
}

impl From<RedisBackend> for Backend {
    fn from(redis: RedisBackend) -> Self {
        Self::Redis(redis)
    }
}

impl From<LeasedRedisBackend> for Backend {
    fn from(leased: LeasedRedisBackend) -> Self {
        Self::LeasedRedis(leased)
    }
}

/// The Redis side of a [`Backend`]'s rate-limit store: exact (one round trip per decision) or
/// [leased](crate::backend::redis::lease).
#[derive(Clone)]
pub enum RedisModeStore<E, L> {
    /// Exact mode ([`RedisRateLimitStore`](crate::backend::redis::RedisRateLimitStore)).
    Exact(E),
    /// Leased mode ([`RedisLeasedStore`](crate::backend::redis::RedisLeasedStore)).
    Leased(L),
}

impl<E: fmt::Debug, L: fmt::Debug> fmt::Debug for RedisModeStore<E, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(e) => e.fmt(f),
            Self::Leased(l) => l.fmt(f),
        }
    }
}

impl<E, L> RedisModeStore<E, L> {
    /// The exact store, if this is one.
    pub fn as_exact(&self) -> Option<&E> {
        match self {
            Self::Exact(e) => Some(e),
            Self::Leased(_) => None,
        }
    }

    /// The leased store, if this is one.
    pub fn as_leased(&self) -> Option<&L> {
        match self {
            Self::Exact(_) => None,
            Self::Leased(l) => Some(l),
        }
    }
}

/// The store of a [`Backend`]: the memory backend's, or Redis's.
#[derive(Clone)]
pub enum EitherStore<M, R> {
    /// In memory.
    Memory(M),
    /// In Redis.
    Redis(R),
}

impl<M: fmt::Debug, R: fmt::Debug> fmt::Debug for EitherStore<M, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Memory(m) => m.fmt(f),
            Self::Redis(r) => r.fmt(f),
        }
    }
}

impl<M, R> EitherStore<M, R> {
    /// The Redis store, if this is one.
    pub fn as_redis(&self) -> Option<&R> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(r) => Some(r),
        }
    }

    /// The memory store, if this is one.
    pub fn as_memory(&self) -> Option<&M> {
        match self {
            Self::Memory(m) => Some(m),
            Self::Redis(_) => None,
        }
    }
}

pin_project! {
    /// The future of an [`EitherStore`]'s operation: the memory store's or the Redis store's.
    #[derive(Debug)]
    pub struct EitherFuture<A, B> {
        #[pin]
        inner: Inner<A, B>,
    }
}

pin_project! {
    #[project = InnerProj]
    #[derive(Debug)]
    enum Inner<A, B> {
        Memory { #[pin] inner: A },
        Redis { #[pin] inner: B },
    }
}

#[cfg_attr(not(any(feature = "rate-limit", feature = "cache")), allow(dead_code))]
impl<A, B> EitherFuture<A, B> {
    fn memory(inner: A) -> Self {
        Self {
            inner: Inner::Memory { inner },
        }
    }

    fn redis(inner: B) -> Self {
        Self {
            inner: Inner::Redis { inner },
        }
    }
}

impl<A, B> Future for EitherFuture<A, B>
where
    A: Future,
    B: Future<Output = A::Output>,
{
    type Output = A::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
        match self.project().inner.project() {
            InnerProj::Memory { inner } => inner.poll(cx),
            InnerProj::Redis { inner } => inner.poll(cx),
        }
    }
}

#[cfg(feature = "rate-limit")]
mod rate_limit {
    use super::{Backend, EitherFuture, EitherStore, RedisModeStore};
    use crate::backend::redis::LeasedRedisBackend;
    use crate::backend::{MemoryBackend, RedisBackend};
    use crate::error::ConfigError;
    use crate::rate_limit::{Ask, Check, RateLimitBackend, RateLimitSpec, RateLimitStore};

    fn left<A, B>(check: Check<A>) -> Check<EitherFuture<A, B>> {
        match check {
            Check::Ready(r) => Check::Ready(r),
            Check::Pending(inner) => Check::Pending(EitherFuture::memory(inner)),
        }
    }

    fn right<A, B>(check: Check<B>) -> Check<EitherFuture<A, B>> {
        match check {
            Check::Ready(r) => Check::Ready(r),
            Check::Pending(inner) => Check::Pending(EitherFuture::redis(inner)),
        }
    }

    impl<M, R> crate::rate_limit::StoreLimits for EitherStore<M, R>
    where
        M: crate::rate_limit::StoreLimits,
        R: crate::rate_limit::StoreLimits,
    {
        fn limit_set(&self) -> &std::sync::Arc<crate::rate_limit::LimitSet> {
            match self {
                Self::Memory(m) => m.limit_set(),
                Self::Redis(r) => r.limit_set(),
            }
        }
    }

    impl<E, L> crate::rate_limit::StoreLimits for RedisModeStore<E, L>
    where
        E: crate::rate_limit::StoreLimits,
        L: crate::rate_limit::StoreLimits,
    {
        fn limit_set(&self) -> &std::sync::Arc<crate::rate_limit::LimitSet> {
            match self {
                Self::Exact(e) => e.limit_set(),
                Self::Leased(l) => l.limit_set(),
            }
        }
    }

    impl<K, M, R> RateLimitStore<K> for EitherStore<M, R>
    where
        M: RateLimitStore<K>,
        R: RateLimitStore<K>,
    {
        type Future = EitherFuture<M::Future, R::Future>;

        #[inline]
        fn check(&self, key: &K, ask: &Ask<'_>) -> Check<Self::Future> {
            match self {
                Self::Memory(m) => left(m.check(key, ask)),
                Self::Redis(r) => right(r.check(key, ask)),
            }
        }

        fn publish_policy(&self, change: &crate::rate_limit::PolicyChange<K>) {
            match self {
                Self::Memory(m) => m.publish_policy(change),
                Self::Redis(r) => r.publish_policy(change),
            }
        }

        fn subscribe_policies(&self, sink: crate::rate_limit::PolicySink<K>) {
            match self {
                Self::Memory(m) => m.subscribe_policies(sink),
                Self::Redis(r) => r.subscribe_policies(sink),
            }
        }

        #[inline]
        fn check_plain(
            &self,
            key: &K,
            set: &std::sync::Arc<crate::rate_limit::LimitSet>,
        ) -> Check<Self::Future> {
            match self {
                Self::Memory(m) => left(m.check_plain(key, set)),
                Self::Redis(r) => right(r.check_plain(key, set)),
            }
        }
    }

    impl<K, E, L> RateLimitStore<K> for RedisModeStore<E, L>
    where
        E: RateLimitStore<K>,
        L: RateLimitStore<K>,
    {
        type Future = EitherFuture<E::Future, L::Future>;

        #[inline]
        fn check(&self, key: &K, ask: &Ask<'_>) -> Check<Self::Future> {
            match self {
                Self::Exact(e) => left(e.check(key, ask)),
                Self::Leased(l) => right(l.check(key, ask)),
            }
        }

        fn publish_policy(&self, change: &crate::rate_limit::PolicyChange<K>) {
            match self {
                Self::Exact(e) => e.publish_policy(change),
                Self::Leased(l) => l.publish_policy(change),
            }
        }

        fn subscribe_policies(&self, sink: crate::rate_limit::PolicySink<K>) {
            match self {
                Self::Exact(e) => e.subscribe_policies(sink),
                Self::Leased(l) => l.subscribe_policies(sink),
            }
        }

        #[inline]
        fn check_plain(
            &self,
            key: &K,
            set: &std::sync::Arc<crate::rate_limit::LimitSet>,
        ) -> Check<Self::Future> {
            match self {
                Self::Exact(e) => left(e.check_plain(key, set)),
                Self::Leased(l) => right(l.check_plain(key, set)),
            }
        }
    }

    impl<K> RateLimitBackend<K> for Backend
    where
        MemoryBackend: RateLimitBackend<K>,
        RedisBackend: RateLimitBackend<K>,
        LeasedRedisBackend: RateLimitBackend<K>,
    {
        type Store = EitherStore<
            <MemoryBackend as RateLimitBackend<K>>::Store,
            RedisModeStore<
                <RedisBackend as RateLimitBackend<K>>::Store,
                <LeasedRedisBackend as RateLimitBackend<K>>::Store,
            >,
        >;

        fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError> {
            Ok(match self {
                Self::Memory(m) => EitherStore::Memory(m.rate_limit_store(spec)?),
                Self::Redis(r) => {
                    EitherStore::Redis(RedisModeStore::Exact(r.rate_limit_store(spec)?))
                }
                Self::LeasedRedis(l) => {
                    EitherStore::Redis(RedisModeStore::Leased(l.rate_limit_store(spec)?))
                }
            })
        }
    }
}

#[cfg(feature = "cache")]
mod cache {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Backend, EitherFuture, EitherStore};
    use crate::backend::redis::RedisCacheValue;
    use crate::backend::{MemoryBackend, RedisBackend};
    use crate::cache::{
        CacheBackend, CacheEntry, CacheKey, CacheSpec, CacheStore, FillLock, Found, LockMode,
        StoreOp,
    };
    use crate::error::ConfigError;

    type Op<T, A, B> = StoreOp<T, EitherFuture<A, B>>;

    fn left<T, A, B>(op: StoreOp<T, A>) -> Op<T, A, B> {
        match op {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(inner) => StoreOp::Pending(EitherFuture::memory(inner)),
        }
    }

    fn right<T, A, B>(op: StoreOp<T, B>) -> Op<T, A, B> {
        match op {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(inner) => StoreOp::Pending(EitherFuture::redis(inner)),
        }
    }

    /// Calls `$method` on whichever store this is, wrapping its future.
    macro_rules! either {
        ($self:ident.$method:ident($($arg:expr),*)) => {
            match $self {
                Self::Memory(m) => left(m.$method($($arg),*)),
                Self::Redis(r) => right(r.$method($($arg),*)),
            }
        };
    }

    impl<V, M, R> CacheStore<V> for EitherStore<M, R>
    where
        V: Send + Sync + 'static,
        M: CacheStore<V>,
        R: CacheStore<V>,
    {
        type Future<T: Send + 'static> = EitherFuture<M::Future<T>, R::Future<T>>;

        #[inline]
        fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
            either!(self.get(key))
        }

        #[inline]
        fn get_at(
            &self,
            key: &CacheKey,
            now: Instant,
        ) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
            either!(self.get_at(key, now))
        }

        fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), Self::Future<()>> {
            either!(self.put(key, entry))
        }

        fn invalidate(&self, key: &CacheKey) -> StoreOp<(), Self::Future<()>> {
            either!(self.invalidate(key))
        }

        fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), Self::Future<()>> {
            either!(self.invalidate_prefix(prefix))
        }

        fn clear(&self) -> StoreOp<(), Self::Future<()>> {
            either!(self.clear())
        }

        fn lock(
            &self,
            key: &CacheKey,
            hold: Duration,
            mode: LockMode,
        ) -> StoreOp<FillLock<V>, Self::Future<FillLock<V>>> {
            either!(self.lock(key, hold, mode))
        }

        fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), Self::Future<()>> {
            either!(self.unlock(key, token))
        }

        fn put_locked(
            &self,
            key: &CacheKey,
            entry: &CacheEntry<V>,
            token: u64,
        ) -> Option<StoreOp<(), Self::Future<()>>> {
            match self {
                Self::Memory(m) => m.put_locked(key, entry, token).map(left),
                Self::Redis(r) => r.put_locked(key, entry, token).map(right),
            }
        }
    }

    impl<V: RedisCacheValue> CacheBackend<V> for Backend {
        type Store = EitherStore<
            <MemoryBackend as CacheBackend<V>>::Store,
            <RedisBackend as CacheBackend<V>>::Store,
        >;

        fn cache_store(&self, spec: &CacheSpec) -> Result<Self::Store, ConfigError> {
            Ok(match self {
                Self::Memory(m) => EitherStore::Memory(m.cache_store(spec)?),
                Self::Redis(r) => EitherStore::Redis(r.cache_store(spec)?),
                Self::LeasedRedis(l) => EitherStore::Redis(l.backend().cache_store(spec)?),
            })
        }
    }
}

#[cfg(feature = "circuit-breaker")]
mod circuit {
    use super::Backend;
    use crate::backend::RedisBackend;
    use crate::circuit_breaker::store::{CircuitBackend, CircuitSpec, sealed};
    use crate::error::ConfigError;

    impl sealed::Sealed for Backend {}

    impl<K> CircuitBackend<K> for Backend
    where
        RedisBackend: CircuitBackend<K>,
    {
        type Store = <RedisBackend as CircuitBackend<K>>::Store;

        fn circuit_store(&self, spec: &CircuitSpec) -> Result<Self::Store, ConfigError> {
            match self {
                Self::Memory(_) => Err(crate::circuit_breaker::store::no_store()),
                Self::Redis(redis) => redis.circuit_store(spec),
                Self::LeasedRedis(leased) => leased.backend().circuit_store(spec),
            }
        }

        fn shares(&self) -> bool {
            self.is_redis()
        }
    }
}
