//! Which limits a request is decided against, and what it costs: the layer's default set, its
//! tiers and a resolver from the key to a tier, keys' own limits, and the cost and refusal
//! response of a request.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::limit::LimitSet;
use crate::rejection::Rejection;
use crate::throttle::LogThrottle;

type Hasher = crate::hash::RandomState;

/// A resolver from a key to the name of its tier (see
/// [`RateLimitBuilder::tier_of`](super::RateLimitBuilder::tier_of)).
pub(crate) type TierOf<K> = Arc<dyn Fn(&K) -> Option<&str> + Send + Sync>;

/// The limit sets in force: the default and the tiers are replaced whole on every change of
/// theirs and read with one atomic load; keys' own limits are one table shared by every version,
/// changed in place.
pub(crate) struct Policies<K> {
    pub(crate) default: Arc<LimitSet>,
    pub(crate) tiers: Tiers,
    pub(crate) keys: Arc<KeyLimits<K>>,
}

impl<K> Clone for Policies<K> {
    fn clone(&self) -> Self {
        Self {
            default: Arc::clone(&self.default),
            tiers: self.tiers.clone(),
            keys: Arc::clone(&self.keys),
        }
    }
}

/// Keys' own limits ([`RateLimitHandle::set_key`](super::RateLimitHandle::set_key)), up to
/// [`MAX_KEYS_WITH_OWN_LIMITS`](super::MAX_KEYS_WITH_OWN_LIMITS).
///
/// Changed in place under a lock rather than copied with the tiers: a copy per change made
/// loading n keys' limits (a replica catching up on Redis's change log, a configuration reload)
/// cost n² entry copies, minutes for the 100,000 allowed. A request reads a flag while no key has
/// limits of its own, and takes the read lock only when some key has.
pub(crate) struct KeyLimits<K> {
    map: RwLock<HashMap<K, Arc<LimitSet>, Hasher>>,
    any: AtomicBool,
}

impl<K> Default for KeyLimits<K> {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::with_hasher(Hasher::default())),
            any: AtomicBool::new(false),
        }
    }
}

impl<K: Hash + Eq> KeyLimits<K> {
    /// `key`'s own limits, if it has some.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<Arc<LimitSet>> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.read().get(key).cloned()
    }

    /// Gives `key` limits of its own (`Some`) or takes them away (`None`); refuses a new key past
    /// `max` keys with `Err(())`.
    pub(crate) fn set(&self, key: &K, set: Option<Arc<LimitSet>>, max: usize) -> Result<(), ()>
    where
        K: Clone,
    {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        match set {
            Some(set) => {
                if map.len() >= max && !map.contains_key(key) {
                    return Err(());
                }
                map.insert(key.clone(), set);
            }
            None => {
                map.remove(key);
            }
        }
        self.any.store(!map.is_empty(), Ordering::Release);
        Ok(())
    }
}

impl<K> KeyLimits<K> {
    /// How many keys have limits of their own.
    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<K, Arc<LimitSet>, Hasher>> {
        self.map.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The set a request resolved to: borrowed from the policies, or a key's own limits (held while
/// the request is decided).
pub(crate) enum Resolved<'p> {
    Borrowed(&'p Arc<LimitSet>),
    Owned(Arc<LimitSet>),
}

impl std::ops::Deref for Resolved<'_> {
    type Target = Arc<LimitSet>;

    #[inline]
    fn deref(&self) -> &Arc<LimitSet> {
        match self {
            Self::Borrowed(set) => set,
            Self::Owned(set) => set,
        }
    }
}

/// The named sets, searched in order: a handful of tiers is found faster by comparing names than
/// by hashing one (`instructions` bench, `u64/rampart_rate_limit_keyed_tiers`).
#[derive(Clone, Default)]
pub(crate) struct Tiers(Vec<(&'static str, Arc<LimitSet>)>);

impl Tiers {
    /// The set of tier `name`. A resolver usually returns the very `&'static str` the tier was
    /// registered with (a literal, or a name leaked once from configuration): the same pointer
    /// and length are equal without comparing bytes.
    #[inline]
    pub(crate) fn get(&self, name: &str) -> Option<&Arc<LimitSet>> {
        self.0
            .iter()
            .find(|(n, _)| std::ptr::eq(*n, name) || *n == name)
            .map(|(_, set)| set)
    }

    /// Adds tier `name`, or replaces its set.
    pub(crate) fn insert(&mut self, name: &'static str, set: Arc<LimitSet>) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(tier) => tier.1 = set,
            None => self.0.push((name, set)),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&'static str, &Arc<LimitSet>)> {
        self.0.iter().map(|(n, set)| (*n, set))
    }
}

/// A layer's policies, shared by its services and its handles.
pub(crate) struct Live<K> {
    pub(crate) current: ArcSwap<Policies<K>>,
    /// The default set as built: every request's set while [`dynamic`](Self::dynamic) is false.
    pub(crate) fixed: Arc<LimitSet>,
    /// Whether requests must read `current` (a resolver, or a change made through a handle):
    /// until then a request reads this flag and `fixed`, and pays nothing for live changes.
    dynamic: AtomicBool,
    pub(crate) tier_of: Option<TierOf<K>>,
    /// Serialises writers (each reads, copies, changes and swaps the policies).
    pub(crate) write: Mutex<()>,
    /// The layer's name, for logs and metrics.
    pub(crate) name: &'static str,
    /// What sets built by handles need: the layer's algorithm and header settings.
    pub(crate) algorithm: super::Algorithm,
    pub(crate) legacy_headers: bool,
    unknown_log: LogThrottle,
    #[cfg(feature = "metrics")]
    unknown: std::sync::OnceLock<metrics::Counter>,
}

impl<K> fmt::Debug for Live<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.current.load();
        let mut tiers: Vec<_> = p.tiers.iter().map(|(n, _)| n).collect();
        tiers.sort();
        f.debug_struct("Policies")
            .field("default", &p.default)
            .field("tiers", &tiers)
            .field("keys_with_own_limits", &p.keys.len())
            .field("tier_of", &self.tier_of.is_some())
            .finish()
    }
}

impl<K: Hash + Eq> Live<K> {
    pub(crate) fn new(
        policies: Policies<K>,
        tier_of: Option<TierOf<K>>,
        name: &'static str,
        algorithm: super::Algorithm,
        legacy_headers: bool,
    ) -> Self {
        Self {
            fixed: Arc::clone(&policies.default),
            dynamic: AtomicBool::new(tier_of.is_some()),
            current: ArcSwap::from_pointee(policies),
            tier_of,
            write: Mutex::new(()),
            name,
            algorithm,
            legacy_headers,
            unknown_log: LogThrottle::new(Duration::from_secs(10)),
            #[cfg(feature = "metrics")]
            unknown: std::sync::OnceLock::new(),
        }
    }

    /// Whether every request is decided against [`fixed`](Self::fixed).
    #[inline]
    pub(crate) fn is_fixed(&self) -> bool {
        !self.dynamic.load(Ordering::Relaxed)
    }

    /// Replaces the policies (a handle's change): from now on requests read them.
    pub(crate) fn replace(&self, policies: Policies<K>) {
        self.current.store(Arc::new(policies));
        self.mark_dynamic();
    }

    /// From now on requests read the policies (a key was given limits of its own).
    pub(crate) fn mark_dynamic(&self) {
        self.dynamic.store(true, Ordering::Release);
    }

    /// The set `key` is decided against: its own limits, else its tier's, else the default.
    #[inline(always)]
    pub(crate) fn resolve<'p>(&self, p: &'p Policies<K>, key: &K) -> Resolved<'p> {
        if let Some(set) = p.keys.get(key) {
            return Resolved::Owned(set);
        }
        if let Some(tier_of) = &self.tier_of
            && let Some(name) = tier_of(key)
        {
            match p.tiers.get(name) {
                Some(set) => return Resolved::Borrowed(set),
                None => self.unknown_tier(name),
            }
        }
        Resolved::Borrowed(&p.default)
    }

    /// A resolver named a tier the layer does not have: the default set applies; logged at most
    /// once per 10 s, and counted.
    #[cold]
    fn unknown_tier(&self, tier: &str) {
        if let Some(suppressed) = self.unknown_log.check() {
            tracing::warn!(
                limiter = self.name,
                tier,
                suppressed,
                "rate limit tier unknown; the default limits apply"
            );
        }
        #[cfg(feature = "metrics")]
        self.unknown
            .get_or_init(|| {
                crate::metrics::counter(&crate::metrics::key(
                    "rampart_rate_limit_unknown_tier_total",
                    self.name,
                    &[],
                ))
            })
            .increment(1);
    }
}

/// How many units a request spends (see [`RateLimitBuilder::cost`](super::RateLimitBuilder::cost)).
///
/// Implemented by closures `Fn(&Req) -> u32` and by [`UnitCost`] (the default: every request
/// costs 1, at no cost on the request path).
pub trait Cost<Req>: Send + Sync + 'static {
    /// The units `req` spends (0 is admitted without spending anything).
    fn cost(&self, req: &Req) -> u32;
}

/// Every request costs one unit (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct UnitCost;

impl<Req> Cost<Req> for UnitCost {
    #[inline(always)]
    fn cost(&self, _: &Req) -> u32 {
        1
    }
}

impl<Req, F> Cost<Req> for F
where
    F: Fn(&Req) -> u32 + Send + Sync + 'static,
{
    #[inline]
    fn cost(&self, req: &Req) -> u32 {
        self(req)
    }
}

/// Answers a refused request with a response of the application's own (see
/// `RateLimitBuilder::respond_with`, feature `http`), or leaves it to the rejection mode.
pub trait Responder<Req, Res>: Send + Sync + 'static {
    /// The response for `refusal` of `req`, or `None` for the rejection mode's.
    fn respond(&self, refusal: &dyn Rejection, req: Req) -> Option<Res>;
}

/// Refusals are answered by the rejection mode (the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct ModeResponds;

impl<Req, Res> Responder<Req, Res> for ModeResponds {
    #[inline(always)]
    fn respond(&self, _: &dyn Rejection, _: Req) -> Option<Res> {
        None
    }
}

/// An HTTP responder: a function of the refusal and the request's parts.
#[cfg(feature = "http")]
#[derive(Clone)]
pub struct RespondFn<F>(pub(crate) F);

#[cfg(feature = "http")]
impl<F> fmt::Debug for RespondFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RespondFn")
    }
}

#[cfg(feature = "http")]
impl<F, B, ResB> Responder<http::Request<B>, http::Response<ResB>> for RespondFn<F>
where
    F: Fn(&dyn Rejection, &http::request::Parts) -> http::Response<ResB> + Send + Sync + 'static,
{
    fn respond(
        &self,
        refusal: &dyn Rejection,
        req: http::Request<B>,
    ) -> Option<http::Response<ResB>> {
        let (parts, _body) = req.into_parts();
        Some((self.0)(refusal, &parts))
    }
}

/// What the layer does per request beyond the key: the cost ([`Cost`]) and the refusal response
/// ([`Responder`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerRequest<C = UnitCost, R = ModeResponds> {
    pub(crate) cost: C,
    pub(crate) responder: R,
}

/// The per-request settings of a layer's services, for a request type and a response type:
/// implemented by [`PerRequest`] when its cost and responder fit them.
pub trait RequestPolicy<Req, Res>: Send + Sync + 'static {
    /// The units `req` spends.
    fn cost(&self, req: &Req) -> u32;

    /// The application's response to `refusal` of `req`, or `None` for the rejection mode's.
    fn respond(&self, refusal: &dyn Rejection, req: Req) -> Option<Res>;
}

impl<Req, Res, C, R> RequestPolicy<Req, Res> for PerRequest<C, R>
where
    C: Cost<Req>,
    R: Responder<Req, Res>,
{
    #[inline(always)]
    fn cost(&self, req: &Req) -> u32 {
        self.cost.cost(req)
    }

    #[inline]
    fn respond(&self, refusal: &dyn Rejection, req: Req) -> Option<Res> {
        self.responder.respond(refusal, req)
    }
}
