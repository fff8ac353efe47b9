//! Named limits, the sets one decision checks, and what a decision asks of a store.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use super::error::Policy;
use super::quota::{Algorithm, Limits, Quota};
use crate::error::ConfigError;

/// The most limits one decision checks.
pub const MAX_LIMITS: usize = 8;

/// One named quota: `Limit::new("minute", Quota::per_minute(10))`.
///
/// A limit's state is kept per key and per limit *name*: two tiers that both have a limit named
/// `"minute"` share a key's state under it, and changing a limit's quota (through a
/// [`RateLimitHandle`](super::RateLimitHandle)) keeps the state. With GCRA the theoretical
/// arrival time carries over, up to the new quota's tolerance: a key spent under a quota of a
/// longer tolerance (10 an hour) counts as spent in full under the new one (10 a second) and
/// waits one of its intervals, not the rest of the hour, as the sliding window's counts carry
/// over into at most one window.
///
/// A shadow limit ([`shadow`](Self::shadow)) is decided, counted
/// (`rampart_rate_limit_shadow_rejected_total{name, policy}`), traced and reported to hooks, but
/// never refuses: how a new limit is rolled out safely.
///
/// With feature `serde` it reads and writes as
/// `{"name": "day", "limit": 1000, "period": "1h", "burst": 50, "shadow": true}` (the
/// [`Quota`]'s fields beside the name; `burst` and `shadow` optional; the period in the
/// [duration format](crate::config#durations)). Unknown fields are refused; the name is checked
/// when the layer is built.
///
/// ```
/// use tower_rampart::rate_limit::{Limit, Quota};
///
/// let day = Limit::new("day", Quota::per_hour(1000).burst(50)).shadow(true);
/// assert_eq!(day.name(), "day");
/// assert!(day.is_shadow());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    name: &'static str,
    quota: Quota,
    shadow: bool,
}

impl Limit {
    /// A limit named `name` (letters, digits and `-_.:`, checked when the layer is built) with
    /// `quota`. A `String` read from configuration is kept once per distinct name for the life of
    /// the process, as layer names are.
    pub fn new(name: impl Into<std::borrow::Cow<'static, str>>, quota: Quota) -> Self {
        Self {
            name: crate::name::intern(name),
            quota,
            shadow: false,
        }
    }

    /// Decide, count and trace refusals, but admit anyway (default `false`).
    ///
    /// In a set, a shadow limit is decided as if it were alone: it spends whenever it admits
    /// itself, also on a request an enforced limit refuses (so its counts show what it would do
    /// in place of the others, not beside them), and in waiting mode once per attempt of a
    /// request that waits for quota.
    #[must_use]
    pub const fn shadow(mut self, shadow: bool) -> Self {
        self.shadow = shadow;
        self
    }

    /// The limit's name, as in the `RateLimit-Policy` field.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// The limit's quota.
    pub const fn quota(&self) -> Quota {
        self.quota
    }

    /// Whether the limit only observes.
    pub const fn is_shadow(&self) -> bool {
        self.shadow
    }
}

/// A [`Limit`] as configuration files write it: the quota's fields beside the name.
#[cfg(feature = "serde")]
mod serde_form {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Limit, Quota};

    // By hand: a derive would ask `'de: 'static` for the interned name.
    impl<'de> Deserialize<'de> for Limit {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            LimitForm::deserialize(d).map(Self::from)
        }
    }

    impl Serialize for Limit {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            LimitForm::from(*self).serialize(s)
        }
    }

    #[derive(Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct LimitForm {
        name: String,
        limit: u32,
        #[serde(with = "crate::config::duration")]
        period: Duration,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        burst: Option<u32>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        shadow: bool,
    }

    impl From<LimitForm> for Limit {
        fn from(f: LimitForm) -> Self {
            let mut quota = Quota::with_period(f.limit, f.period);
            if let Some(burst) = f.burst {
                quota = quota.burst(burst);
            }
            Limit::new(f.name, quota).shadow(f.shadow)
        }
    }

    impl From<Limit> for LimitForm {
        fn from(l: Limit) -> Self {
            let q = l.quota;
            // A burst that was set is written even when it equals the limit (the quota compares
            // unequal to the same quota without one).
            let unset = Quota::with_period(q.limit(), q.period());
            Self {
                name: l.name.to_owned(),
                limit: q.limit(),
                period: q.period(),
                burst: (q != unset).then(|| q.burst_size()),
                shadow: l.shadow,
            }
        }
    }
}

/// A validated set of [`Limit`]s that one decision checks: all enforced limits must admit, and
/// then all spend (never some). Built by the layer from its configuration (its default set, its
/// tiers) and by a [`RateLimitHandle`](super::RateLimitHandle) for live changes; read by stores.
pub struct LimitSet {
    algorithm: Algorithm,
    limits: Box<[SetLimit]>,
    /// Whether any limit is enforced (a set of shadow limits only never refuses).
    any_enforced: bool,
    /// For a layer's default limits, a number larger for each such set made in this process (as
    /// built, then each change at run time); 0 for any other set (a tier's, a key's own).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) default_generation: u64,
}

/// One limit of a [`LimitSet`], validated, in the units the algorithms use.
pub struct SetLimit {
    pub(crate) name: &'static str,
    /// A small number standing for `name` in this process (the in-memory store keys state on it).
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) id: u16,
    pub(crate) quota: Quota,
    pub(crate) limits: Limits,
    pub(crate) shadow: bool,
    /// How the limit describes itself in headers: its name and window, and the set's
    /// `RateLimit-Policy` value (every enforced limit of the set).
    pub(crate) policy: Policy,
}

impl SetLimit {
    /// The limit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The limit's quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Whether the limit only observes (never refuses).
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// The limit as configured.
    pub fn limit(&self) -> Limit {
        Limit {
            name: self.name,
            quota: self.quota,
            shadow: self.shadow,
        }
    }
}

impl fmt::Debug for SetLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetLimit")
            .field("name", &self.name)
            .field("quota", &self.quota)
            .field("shadow", &self.shadow)
            .finish()
    }
}

impl fmt::Debug for LimitSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitSet")
            .field("algorithm", &self.algorithm)
            .field("limits", &self.limits)
            .finish()
    }
}

impl LimitSet {
    /// Checks `limits` for `algorithm` and prepares them: 1 to [`MAX_LIMITS`] limits with distinct
    /// valid names and quotas the algorithm can run.
    ///
    /// `legacy_headers`: whether refusals and admissions also carry the `X-RateLimit-*` headers.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] for `limits` naming the problem.
    pub(crate) fn new(
        algorithm: Algorithm,
        limits: &[Limit],
        legacy_headers: bool,
    ) -> Result<Arc<Self>, ConfigError> {
        Self::make(algorithm, limits, legacy_headers, 0)
    }

    /// [`new`](Self::new) for a layer's default limits, marked as such with the next
    /// [`default_generation`](Self::default_generation) (leased stores lease from the default set
    /// only, and follow the newest).
    pub(crate) fn new_default(
        algorithm: Algorithm,
        limits: &[Limit],
        legacy_headers: bool,
    ) -> Result<Arc<Self>, ConfigError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let generation = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self::make(algorithm, limits, legacy_headers, generation)
    }

    fn make(
        algorithm: Algorithm,
        limits: &[Limit],
        legacy_headers: bool,
        default_generation: u64,
    ) -> Result<Arc<Self>, ConfigError> {
        let err = |reason: String| Err(ConfigError::new("limits", reason));
        if limits.is_empty() {
            return err("a limit set needs at least one limit".into());
        }
        if limits.len() > MAX_LIMITS {
            return err(format!(
                "a decision checks at most {MAX_LIMITS} limits (got {})",
                limits.len()
            ));
        }
        for (i, l) in limits.iter().enumerate() {
            crate::error::check_name(l.name).map_err(|e| {
                ConfigError::new("limits", format!("limit {:?}: {}", l.name, e.reason()))
            })?;
            if limits[..i].iter().any(|o| o.name == l.name) {
                return err(format!(
                    "two limits are named {:?}; names must differ",
                    l.name
                ));
            }
        }
        let validated: Vec<(Limit, Limits)> = limits
            .iter()
            .map(|l| {
                let v = l.quota.validate(algorithm).map_err(|e| {
                    ConfigError::new("limits", format!("limit {:?}: {}", l.name, e.reason()))
                })?;
                Ok((*l, v))
            })
            .collect::<Result<_, ConfigError>>()?;
        #[cfg(feature = "http")]
        let header = {
            let item = |(l, v): &(Limit, Limits)| {
                let (q, w) = policy_window(v.limit, v.period);
                (l.name, q, w)
            };
            let items: Vec<(&str, u64, u64)> = validated
                .iter()
                .filter(|(l, _)| !l.shadow)
                .map(item)
                .collect();
            // A set of shadow limits only lists them all (it never refuses; the header then says
            // what is being observed).
            let items = if items.is_empty() {
                validated.iter().map(item).collect()
            } else {
                items
            };
            super::headers::policy_list_value(&items)
        };
        let limits: Box<[SetLimit]> = validated
            .into_iter()
            .map(|(l, v)| {
                Ok(SetLimit {
                    name: l.name,
                    id: limit_id(l.name)?,
                    quota: l.quota,
                    limits: v,
                    shadow: l.shadow,
                    policy: Policy {
                        name: l.name,
                        period: v.period,
                        legacy_headers,
                        #[cfg(feature = "http")]
                        header,
                    },
                })
            })
            .collect::<Result<_, ConfigError>>()?;
        Ok(Arc::new(Self {
            algorithm,
            any_enforced: limits.iter().any(|l| !l.shadow),
            limits,
            default_generation,
        }))
    }

    /// The counting algorithm every limit of the set uses (the layer's).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The limits, in the order configured.
    pub fn limits(&self) -> &[SetLimit] {
        &self.limits
    }

    /// Whether any limit of the set is enforced (not shadow).
    pub fn has_enforced(&self) -> bool {
        self.any_enforced
    }

    /// The one limit, when the set is one enforced limit (the hot path every store keeps as fast
    /// as before sets existed).
    #[inline(always)]
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn single(&self) -> Option<&SetLimit> {
        match &*self.limits {
            [one] if !one.shadow => Some(one),
            _ => None,
        }
    }

    /// How limit `index` describes itself in headers and refusals (the last limit's for an index
    /// out of range: a decision made over a set that a live change has since replaced).
    #[inline]
    pub(crate) fn policy_of(&self, index: usize) -> Policy {
        self.limits[index.min(self.limits.len() - 1)].policy
    }
}

/// What one decision asks of a [`RateLimitStore`](super::RateLimitStore): which limits, how
/// many units, and whether to spend them or only look.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub(crate) set: &'a Arc<LimitSet>,
    pub(crate) cost: u32,
    pub(crate) peek: bool,
}

impl<'a> Ask<'a> {
    /// One unit of every limit of `set`, spent if admitted.
    #[inline]
    pub const fn new(set: &'a Arc<LimitSet>) -> Self {
        Self {
            set,
            cost: 1,
            peek: false,
        }
    }

    /// Asks for `cost` units instead of one (zero is admitted without spending anything).
    #[inline]
    #[must_use]
    pub const fn cost(mut self, cost: u32) -> Self {
        self.cost = cost;
        self
    }

    /// Decides without spending anything (what the request would get).
    #[inline]
    #[must_use]
    pub const fn peek(mut self) -> Self {
        self.peek = true;
        self
    }

    /// The limits to decide.
    #[inline]
    pub fn set(&self) -> &'a Arc<LimitSet> {
        self.set
    }

    /// The units asked for.
    #[inline]
    pub const fn units(&self) -> u32 {
        self.cost
    }

    /// Whether nothing is to be spent.
    #[inline]
    pub const fn is_peek(&self) -> bool {
        self.peek
    }

    /// The one limit of the plain case (one enforced limit, one unit, spent): every store keeps
    /// this path exactly as it was before sets, costs and peeks existed.
    #[inline(always)]
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn plain(&self) -> Option<&'a SetLimit> {
        if self.cost == 1 && !self.peek {
            self.set.single()
        } else {
            None
        }
    }
}

/// How a limit of `limit` units per `period` (in nanoseconds) states itself in
/// `RateLimit-Policy`, whose window (`w`) is whole seconds: `(q, w)`.
///
/// A period of whole seconds is stated as configured. Any other period is stated over the window
/// of its whole seconds rounded up, with the quota scaled from the period to that window and
/// rounded down, so the field never claims more than is admitted: 5 per 500 ms is `q=10;w=1`, 5
/// per 1.5 s is `q=6;w=2` (6.67 admitted in 2 s). [`RateLimited::period`] gives the period itself.
///
/// [`RateLimited::period`]: super::error::RateLimited::period
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn policy_window(limit: u32, period: u64) -> (u64, u64) {
    const SECOND: u64 = 1_000_000_000;
    let w = period.div_ceil(SECOND);
    let window = u128::from(w) * u128::from(SECOND);
    // At most `limit` plus a second's worth at the limit's rate (at most one per nanosecond).
    let q = u128::from(limit) * window / u128::from(period.max(1));
    (u64::try_from(q).unwrap_or(u64::MAX), w)
}

/// The process-wide number standing for a limit name (the in-memory store keys a limit's state
/// on `(key, id)`); at most 65,536 distinct names per process.
fn limit_id(name: &'static str) -> Result<u16, ConfigError> {
    static IDS: OnceLock<Mutex<HashMap<&'static str, u16>>> = OnceLock::new();
    let mut ids = IDS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(id) = ids.get(name) {
        return Ok(*id);
    }
    let Ok(id) = u16::try_from(ids.len()) else {
        return Err(ConfigError::new(
            "limits",
            "more than 65536 distinct limit names in one process; reuse names",
        ));
    };
    ids.insert(name, id);
    Ok(id)
}
