//! A handle on a running rate limiter's limits: read them, change them, peek at a key.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};

use super::Decision;
use super::layer::Shared;
use super::limit::{Ask, Limit, LimitSet};
use super::policies::{Live, Policies};
use super::store::{Check, RateLimitStore};
use crate::backend::BackendError;
use crate::error::ConfigError;
use crate::key::KeyExtractor;

/// The most keys with limits of their own ([`RateLimitHandle::set_key`]) one layer holds.
pub const MAX_KEYS_WITH_OWN_LIMITS: usize = 100_000;

type PeekFuture = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

/// The store behind a handle, with its type erased (peeks are not on the request path).
trait Peek<K>: Send + Sync {
    fn peek(&self, key: &K, ask: &Ask<'_>) -> Check<PeekFuture>;
    fn publish(&self, change: &PolicyChange<K>);
}

impl<X, St, M, P> Peek<X::Key> for Shared<X, St, M, P>
where
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: Send + Sync,
    P: Send + Sync,
{
    fn peek(&self, key: &X::Key, ask: &Ask<'_>) -> Check<PeekFuture> {
        match self.store.check(key, ask) {
            Check::Ready(r) => Check::Ready(r),
            Check::Pending(f) => Check::Pending(Box::pin(f)),
        }
    }

    fn publish(&self, change: &PolicyChange<X::Key>) {
        self.store.publish_policy(change);
    }
}

/// A handle on a [`RateLimitLayer`](super::RateLimitLayer)'s limits, from
/// [`RateLimitLayer::handle`](super::RateLimitLayer::handle): cheap to clone, shared with the
/// layer's services.
///
/// - Read: [`default_limits`](Self::default_limits), [`tiers`](Self::tiers),
///   [`limits_of`](Self::limits_of).
/// - Peek: [`peek`](Self::peek) decides what a key's next request would get, spending nothing
///   (for quota endpoints and UIs).
/// - Change while running: [`set_default`](Self::set_default), [`set_tier`](Self::set_tier),
///   [`set_key`](Self::set_key) / [`clear_key`](Self::clear_key). The next request sees the
///   change; a key's state carries over for every limit name the new set keeps (with GCRA up to
///   the new quota's tolerance: see [`Limit`](super::Limit)).
///   Each change copies the layer's tables (it is for operators and configuration reloads, not
///   per request); a request reads them with one atomic load.
///
/// With a shared backend a change also goes to the store's
/// [`publish_policy`](super::RateLimitStore::publish_policy), which carries it to the other
/// replicas (see the backend for its bound); the in-memory backend is this process only.
///
/// ```
/// use tower_rampart::key::key_fn;
/// use tower_rampart::rate_limit::{Limit, Quota, RateLimitLayer};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = RateLimitLayer::builder()
///     .quota(Quota::per_minute(10))
///     .key(key_fn(|user: &u64| Some(*user)))
///     .build()?;
/// let handle = layer.handle();
/// assert_eq!(handle.peek(&7).await?.remaining(), 9); // what user 7's next request would leave
/// handle.set_key(&7, [Limit::new("vip", Quota::per_minute(1000))])?;
/// assert_eq!(handle.peek(&7).await?.remaining(), 999);
/// handle.clear_key(&7);
/// # Ok(()) }
/// ```
pub struct RateLimitHandle<K> {
    live: Arc<Live<K>>,
    store: Arc<dyn Peek<K>>,
}

impl<K> Clone for RateLimitHandle<K> {
    fn clone(&self) -> Self {
        Self {
            live: Arc::clone(&self.live),
            store: Arc::clone(&self.store),
        }
    }
}

impl<K> fmt::Debug for RateLimitHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitHandle")
            .field("policies", &self.live)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> RateLimitHandle<K> {
    pub(crate) fn new<X, St, M, P>(shared: Arc<Shared<X, St, M, P>>) -> Self
    where
        X: KeyExtractor<Key = K>,
        St: RateLimitStore<K>,
        M: Send + Sync + 'static,
        P: Send + Sync + 'static,
    {
        Self {
            live: Arc::clone(&shared.live),
            store: shared,
        }
    }

    /// What `key`'s next request would get (one unit), with nothing spent: the decision over the
    /// limits `key` resolves to now.
    ///
    /// # Errors
    ///
    /// When a shared backend cannot answer.
    pub async fn peek(&self, key: &K) -> Result<Decision, BackendError> {
        self.peek_units(key, 1).await
    }

    /// What a request of `cost` units for `key` would get, with nothing spent.
    ///
    /// # Errors
    ///
    /// When a shared backend cannot answer.
    pub async fn peek_units(&self, key: &K, cost: u32) -> Result<Decision, BackendError> {
        let set = self.resolved(key);
        let check = self.store.peek(key, &Ask::new(&set).cost(cost).peek());
        match check {
            Check::Ready(r) => r,
            Check::Pending(f) => f.await,
        }
    }

    /// The set `key`'s requests are decided against now.
    pub fn resolved(&self, key: &K) -> Arc<LimitSet> {
        let p = self.live.current.load();
        Arc::clone(&self.live.resolve(&p, key))
    }

    /// The default set now (to ask a store directly, with [`Ask::new`]).
    pub fn default_set(&self) -> Arc<LimitSet> {
        Arc::clone(&self.live.current.load().default)
    }

    /// Tier `name`'s set now, if the layer has that tier.
    pub fn tier_set(&self, name: &str) -> Option<Arc<LimitSet>> {
        self.live.current.load().tiers.get(name).cloned()
    }

    /// The limits `key`'s requests are decided against now.
    pub fn limits_of(&self, key: &K) -> Vec<Limit> {
        limits(&self.resolved(key))
    }

    /// The default limits.
    pub fn default_limits(&self) -> Vec<Limit> {
        limits(&self.live.current.load().default)
    }

    /// Every tier and its limits, by name.
    pub fn tiers(&self) -> Vec<(&'static str, Vec<Limit>)> {
        let p = self.live.current.load();
        let mut tiers: Vec<_> = p.tiers.iter().map(|(n, s)| (n, limits(s))).collect();
        tiers.sort_by_key(|(n, _)| *n);
        tiers
    }

    /// Replaces the default limits (those of keys with no tier and no limits of their own).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the limits cannot work (as the builder's).
    pub fn set_default(&self, limits: impl IntoIterator<Item = Limit>) -> Result<(), ConfigError> {
        let limits: Vec<Limit> = limits.into_iter().collect();
        self.sink().set_default(&limits)?;
        self.store.publish(&PolicyChange::Default { limits });
        Ok(())
    }

    /// Adds tier `name`, or replaces its limits.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the name or the limits cannot work (as the builder's).
    pub fn set_tier(
        &self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Result<(), ConfigError> {
        let name = crate::name::intern(name);
        let limits: Vec<Limit> = limits.into_iter().collect();
        self.sink().set_tier(name, &limits)?;
        self.store.publish(&PolicyChange::Tier { name, limits });
        Ok(())
    }

    /// Gives `key` limits of its own, ahead of its tier's.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the limits cannot work, or when
    /// [`MAX_KEYS_WITH_OWN_LIMITS`] keys have limits of their own already.
    pub fn set_key(
        &self,
        key: &K,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Result<(), ConfigError> {
        let limits: Vec<Limit> = limits.into_iter().collect();
        self.sink().set_key(key, Some(&limits))?;
        self.store.publish(&PolicyChange::Key {
            key: key.clone(),
            limits: Some(limits),
        });
        Ok(())
    }

    /// Takes `key`'s own limits away: its tier's (or the default) apply again.
    pub fn clear_key(&self, key: &K) {
        let _ = self.sink().set_key(key, None);
        self.store.publish(&PolicyChange::Key {
            key: key.clone(),
            limits: None,
        });
    }

    fn sink(&self) -> PolicySink<K> {
        PolicySink {
            live: Arc::clone(&self.live),
        }
    }
}

fn limits(set: &LimitSet) -> Vec<Limit> {
    set.limits().iter().map(super::SetLimit::limit).collect()
}

/// A change made through a [`RateLimitHandle`], as a shared backend carries it to other replicas
/// ([`RateLimitStore::publish_policy`](super::RateLimitStore::publish_policy)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyChange<K> {
    /// New default limits.
    Default {
        /// The limits.
        limits: Vec<Limit>,
    },
    /// A tier added or replaced.
    Tier {
        /// The tier's name.
        name: &'static str,
        /// Its limits.
        limits: Vec<Limit>,
    },
    /// A key's own limits set (`Some`) or cleared (`None`).
    Key {
        /// The key.
        key: K,
        /// Its limits, or `None` to clear them.
        limits: Option<Vec<Limit>>,
    },
}

/// Where a shared backend applies changes received from other replicas: given to its store once,
/// when the layer is built ([`RateLimitStore::subscribe_policies`](super::RateLimitStore::subscribe_policies)).
/// Applying a change here does not publish it again.
pub struct PolicySink<K> {
    live: Arc<Live<K>>,
}

impl<K> Clone for PolicySink<K> {
    fn clone(&self) -> Self {
        Self {
            live: Arc::clone(&self.live),
        }
    }
}

impl<K> fmt::Debug for PolicySink<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySink").finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> PolicySink<K> {
    pub(crate) fn new(live: Arc<Live<K>>) -> Self {
        Self { live }
    }

    /// Applies `change` to this replica's layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the change's limits cannot work here.
    pub fn apply(&self, change: &PolicyChange<K>) -> Result<(), ConfigError> {
        match change {
            PolicyChange::Default { limits } => self.set_default(limits),
            PolicyChange::Tier { name, limits } => self.set_tier(name, limits),
            PolicyChange::Key { key, limits } => self.set_key(key, limits.as_deref()),
        }
    }

    fn set(
        &self,
        f: impl FnOnce(&mut Policies<K>) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        let _writer = self
            .live
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut next = Policies::clone(&self.live.current.load());
        f(&mut next)?;
        self.live.replace(next);
        Ok(())
    }

    fn build(&self, limits: &[Limit]) -> Result<Arc<LimitSet>, ConfigError> {
        LimitSet::new(self.live.algorithm, limits, self.live.legacy_headers)
    }

    fn set_default(&self, limits: &[Limit]) -> Result<(), ConfigError> {
        let set = LimitSet::new_default(self.live.algorithm, limits, self.live.legacy_headers)?;
        self.set(|p| {
            p.default = set;
            Ok(())
        })
    }

    fn set_tier(&self, name: &'static str, limits: &[Limit]) -> Result<(), ConfigError> {
        crate::error::check_name(name)
            .map_err(|e| ConfigError::new("tier", format!("tier {name:?}: {}", e.reason())))?;
        let set = self
            .build(limits)
            .map_err(|e| ConfigError::new("tier", format!("tier {name:?}: {}", e.reason())))?;
        self.set(|p| {
            p.tiers.insert(name, set);
            Ok(())
        })
    }

    fn set_key(&self, key: &K, limits: Option<&[Limit]>) -> Result<(), ConfigError> {
        let set = limits.map(|l| self.build(l)).transpose()?;
        // Keys' own limits are changed in place (not copied with the tiers): see `KeyLimits`.
        let _writer = self
            .live
            .write
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        self.live
            .current
            .load()
            .keys
            .set(key, set, MAX_KEYS_WITH_OWN_LIMITS)
            .map_err(|()| {
                ConfigError::new(
                    "key_limits",
                    format!(
                        "at most {MAX_KEYS_WITH_OWN_LIMITS} keys have limits of their own; \
                         use tiers for groups of keys"
                    ),
                )
            })?;
        self.live.mark_dynamic();
        Ok(())
    }
}
