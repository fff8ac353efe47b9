//! In-memory rate-limit store.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::MemoryBackend;
use super::map::{BoundedMap, Expiring};
use crate::backend::BackendError;
use crate::clock::{Clock, Nanos};
use crate::error::ConfigError;
use crate::rate_limit::algorithm::gcra::GcraCell;
use crate::rate_limit::algorithm::sliding_window::{Window, WindowCell};
use crate::rate_limit::quota::{Algorithm, Limits};
use crate::rate_limit::{
    Ask, Check, Decision, LimitSet, MAX_LIMITS, RateLimitBackend, RateLimitSpec, RateLimitStore,
    SetLimit,
};

impl Expiring for GcraCell {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, _: &Limits, now: Nanos) -> bool {
        GcraCell::is_idle(self, now)
    }

    fn due(&self, _: &Limits) -> Nanos {
        GcraCell::due(self)
    }
}

impl Expiring for WindowCell {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, limits: &Limits, now: Nanos) -> bool {
        WindowCell::is_idle(self, limits, now)
    }

    fn due(&self, limits: &Limits) -> Nanos {
        WindowCell::due(self, limits)
    }
}

/// A sliding-window cell of a limit other than the store's first: it keeps its own period, since
/// one map holds the states of limits with different periods.
#[derive(Debug, Default)]
pub(crate) struct NamedWindow {
    cell: WindowCell,
    period: AtomicU64,
}

impl NamedWindow {
    /// The cell, its counts moved to `limits`' period if the limit's period changed (their
    /// windows' start times kept: conservative, nothing counted is dropped early).
    #[inline]
    fn cell(&self, limits: &Limits) -> &WindowCell {
        let old = self.period.load(Ordering::Relaxed);
        if old != limits.period {
            if old != 0 {
                self.cell.rescale(old, limits.period);
            }
            self.period.store(limits.period, Ordering::Relaxed);
        }
        &self.cell
    }

    fn limits(&self) -> Limits {
        let period = self.period.load(Ordering::Relaxed).max(1);
        Limits {
            limit: 1,
            burst: 1,
            period,
            emission: period,
            tolerance: period,
        }
    }
}

impl Expiring for NamedWindow {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, _: &Limits, now: Nanos) -> bool {
        self.cell.is_idle(&self.limits(), now)
    }

    fn due(&self, _: &Limits) -> Nanos {
        self.cell.due(&self.limits())
    }
}

/// The in-memory [`RateLimitStore`]: lock-free GCRA cells (or tiny per-key mutexes for the sliding
/// window) in a bounded sharded map. Built by [`MemoryBackend`].
///
/// State is kept per key and per limit name. The layer's first default limit (the one
/// [`quota`](crate::rate_limit::RateLimitBuilder::quota) sets) has a map of its own keyed by the
/// key alone, exactly as a single-quota limiter; every other limit shares a second map keyed by
/// (key, limit). Each map holds at most [`max_keys`](MemoryBackend::max_keys) entries.
///
/// A decision over one limit is one atomic operation on one cell. A decision over several limits
/// decides them in order at one `now`, each enforced limit spending as it admits (one atomic
/// operation per cell); when a later enforced limit refuses, the earlier ones take their spend
/// back (exactly their own length, so spends made on top of it stay). So a set is spent all or
/// nothing, with no lock (`rate_limit/keyed_peer_ip_10k/rampart_store_check_two_limits` measures
/// it). The one trade: a decision racing with a set that is about to be refused may see that
/// set's spend and be refused too, so a hot key can be under-admitted by a few units at such
/// instants, never over-admitted.
///
/// A key type with no data (such as the global key `()`) skips the first map altogether: the
/// whole single-limit limiter is then one atomic word.
pub struct MemoryRateLimitStore<K, C = crate::clock::TokioClock> {
    limits: Limits,
    /// The layer's default set, as built.
    set: Arc<LimitSet>,
    /// The id of the first default limit's name: its state lives in the key-only map.
    primary: u16,
    clock: C,
    cells: Cells<K>,
}

enum Cells<K> {
    Gcra {
        single: GcraCell,
        map: BoundedMap<K, GcraCell>,
        others: BoundedMap<(K, u16), GcraCell>,
    },
    Window {
        single: WindowCell,
        map: BoundedMap<K, WindowCell>,
        others: BoundedMap<(K, u16), NamedWindow>,
    },
}

impl<K, C: fmt::Debug> fmt::Debug for MemoryRateLimitStore<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.cells {
            Cells::Gcra { .. } => Algorithm::Gcra,
            Cells::Window { .. } => Algorithm::SlidingWindow,
        };
        f.debug_struct("MemoryRateLimitStore")
            .field("limits", &self.limits)
            .field("algorithm", &algorithm)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

/// The state of one limit read for a decision over several.
#[derive(Clone, Copy)]
enum State {
    Tat(Nanos),
    Window(Window),
}

impl<K: Hash + Eq + Clone, C: Clock> MemoryRateLimitStore<K, C> {
    /// Decides one request for `key` now, against the layer's first default limit as it was
    /// built (the plain single-quota decision).
    #[inline]
    pub fn decide(&self, key: &K) -> Decision {
        self.decide_primary(key, &self.limits)
    }

    /// One unit of the first default limit for `key` now, with `limits` (the plain decision: one
    /// closure per cell kind, each inlined, as before sets existed).
    #[inline(always)]
    fn decide_primary(&self, key: &K, limits: &Limits) -> Decision {
        let now = self.clock.now();
        // Keys without data are all equal: one cell serves them, with no hashing or locking.
        let keyless = std::mem::size_of::<K>() == 0;
        match &self.cells {
            Cells::Gcra { single, .. } if keyless => {
                single.check_with(limits, now, || self.clock.now())
            }
            Cells::Gcra { map, .. } => map.with(key, limits, now, |c| {
                c.check_with(limits, now, || self.clock.now())
            }),
            Cells::Window { single, .. } if keyless => single.check_units(limits, now, 1, false),
            Cells::Window { map, .. } => {
                map.with(key, limits, now, |c| c.check_units(limits, now, 1, false))
            }
        }
    }

    /// Whether `limit`'s state lives in the key-only map: the first default limit's name, and
    /// for the sliding window its period too (that map judges idleness by the caller's period).
    #[inline(always)]
    fn is_primary(&self, limit: &SetLimit) -> bool {
        limit.id == self.primary
            && match self.cells {
                Cells::Gcra { .. } => true,
                Cells::Window { .. } => limit.limits.period == self.limits.period,
            }
    }

    /// Decides `cost` units of one limit for `key` at `now`, spending them unless `peek`.
    #[inline(always)]
    fn decide_one(&self, key: &K, limit: &SetLimit, now: Nanos, cost: u32, peek: bool) -> Decision {
        let limits = &limit.limits;
        let gcra = |c: &GcraCell| {
            if peek {
                c.peek(limits, now, cost)
            } else {
                c.check_units(limits, now, cost, || self.clock.now())
            }
        };
        let window = |c: &WindowCell| c.check_units(limits, now, cost, peek);
        self.with_cell(key, limit, now, gcra, window)
    }

    /// Runs `gcra` or `window` (whichever this store's algorithm is) on `limit`'s cell for `key`:
    /// the first default limit's in the key-only map (or the single cell of a key with no data),
    /// any other limit's in the (key, limit) map. Every decision about one limit finds its cell
    /// here.
    #[inline(always)]
    fn with_cell<R>(
        &self,
        key: &K,
        limit: &SetLimit,
        now: Nanos,
        gcra: impl FnOnce(&GcraCell) -> R,
        window: impl FnOnce(&WindowCell) -> R,
    ) -> R {
        let limits = &limit.limits;
        let keyless = std::mem::size_of::<K>() == 0;
        if self.is_primary(limit) {
            return match &self.cells {
                Cells::Gcra { single, .. } if keyless => gcra(single),
                Cells::Gcra { map, .. } => map.with(key, limits, now, gcra),
                Cells::Window { single, .. } if keyless => window(single),
                Cells::Window { map, .. } => map.with(key, limits, now, window),
            };
        }
        match &self.cells {
            Cells::Gcra { others, .. } => self.with_other(others, key, limit, now, gcra),
            Cells::Window { others, .. } => {
                self.with_other(others, key, limit, now, |c| window(c.cell(limits)))
            }
        }
    }

    /// Runs `f` on `limit`'s cell for `key` in the (key, limit) map, without cloning the key
    /// unless the cell is new.
    #[inline]
    fn with_other<V: Expiring<Context = Limits>, R>(
        &self,
        map: &BoundedMap<(K, u16), V>,
        key: &K,
        limit: &SetLimit,
        now: Nanos,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let id = limit.id;
        let hash = map.hash_of((key, id));
        map.with_hashed(
            hash,
            |(k, i)| *i == id && k == key,
            || (key.clone(), id),
            &limit.limits,
            now,
            f,
        )
    }

    /// Decides `cost` units of one limit for `key` at `now`, spending them if `spend` and the
    /// limit admits; returns the decision and, when spent, the state before and after (to take the
    /// spend back).
    fn decide_traced(
        &self,
        key: &K,
        limit: &SetLimit,
        now: Nanos,
        cost: u32,
        spend: bool,
    ) -> (Decision, Option<(State, State)>) {
        let limits = &limit.limits;
        let gcra = |c: &GcraCell| {
            if spend {
                let (d, moved) = c.check_traced(limits, now, cost, || self.clock.now());
                (d, moved.map(|(o, n)| (State::Tat(o), State::Tat(n))))
            } else {
                (c.peek(limits, now, cost), None)
            }
        };
        let window = |c: &WindowCell| {
            let (d, moved) = c.check_traced(limits, now, cost, !spend);
            (d, moved.map(|(o, n)| (State::Window(o), State::Window(n))))
        };
        self.with_cell(key, limit, now, gcra, window)
    }

    /// Takes back a spend of `cost` units that moved `limit`'s state for `key` from `old` to
    /// `new`.
    fn undo(&self, key: &K, limit: &SetLimit, now: Nanos, (old, new): (State, State), cost: u32) {
        let gcra = |c: &GcraCell| {
            if let (State::Tat(o), State::Tat(n)) = (old, new) {
                c.undo(o, n);
            }
        };
        let window = |c: &WindowCell| {
            if let State::Window(n) = new {
                c.undo(n, cost);
            }
        };
        self.with_cell(key, limit, now, gcra, window);
    }

    /// Decides a set of several limits (or one shadow limit, or any cost or peek) for `key`.
    ///
    /// Limits are decided in order at one `now`, each spending as it admits (one lookup each on
    /// the admitted path); once an enforced limit refuses, the rest are only looked at, and the
    /// enforced limits that had spent take it back. A concurrent decision may see such a spend
    /// before it is taken back and refuse: never admit more than the limits allow.
    fn decide_set(&self, key: &K, ask: &Ask<'_>) -> Decision {
        let set = ask.set();
        let limits = set.limits();
        let (cost, peek) = (ask.units(), ask.is_peek());
        let now = self.clock.now();
        if let [one] = limits {
            let d = self.decide_one(key, one, now, cost, peek);
            return if one.shadow && !d.is_allowed() {
                d.admitted_anyway().with_shadow_refused(1)
            } else {
                d
            };
        }
        let n = limits.len();
        let mut decisions = [Decision::uncounted(0); MAX_LIMITS];
        let mut spent: [Option<(State, State)>; MAX_LIMITS] = [None; MAX_LIMITS];
        let mut refused = false;
        let mut shadow_mask = 0u8;
        for (i, l) in limits.iter().enumerate() {
            // Enforced limits spend while every one before them admitted; shadow limits when
            // they admit themselves.
            let spend = !peek && (l.shadow || !refused);
            let (d, moved) = self.decide_traced(key, l, now, cost, spend);
            decisions[i] = d;
            spent[i] = moved;
            if !d.is_allowed() {
                if l.shadow {
                    shadow_mask |= 1 << i;
                } else {
                    refused = true;
                }
            }
        }
        if refused {
            for (l, moved) in limits.iter().zip(&spent) {
                if let (false, Some(moved)) = (l.shadow, moved) {
                    self.undo(key, l, now, *moved, cost);
                }
            }
        }
        Decision::combine(limits, &decisions[..n], !refused).with_shadow_refused(shadow_mask)
    }

    /// How many keys the store holds right now (idle ones included until they are swept), for
    /// every limit: a key limited by two limits counts twice.
    pub fn len(&self) -> usize {
        match &self.cells {
            Cells::Gcra { map, others, .. } => map.len() + others.len(),
            Cells::Window { map, others, .. } => map.len() + others.len(),
        }
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the store will hold for the layer's first default limit (and as many again
    /// for every other limit together).
    pub fn capacity(&self) -> usize {
        match &self.cells {
            Cells::Gcra { map, .. } => map.capacity(),
            Cells::Window { map, .. } => map.capacity(),
        }
    }
}

impl<K, C> RateLimitStore<K> for MemoryRateLimitStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    type Future = std::future::Pending<Result<Decision, BackendError>>;

    #[inline(always)]
    fn check(&self, key: &K, ask: &Ask<'_>) -> Check<Self::Future> {
        if let Some(limit) = ask.plain() {
            if self.is_primary(limit) {
                return Check::Ready(Ok(self.decide_primary(key, &limit.limits)));
            }
            let now = self.clock.now();
            return Check::Ready(Ok(self.decide_one(key, limit, now, 1, false)));
        }
        Check::Ready(Ok(self.decide_set(key, ask)))
    }

    /// The plain decision on the store's own first limit, as built: the set is not read.
    #[inline(always)]
    fn check_plain(&self, key: &K, set: &Arc<LimitSet>) -> Check<Self::Future> {
        debug_assert!(Arc::ptr_eq(set, &self.set) && set.single().is_some());
        let _ = set;
        Check::Ready(Ok(self.decide(key)))
    }
}

impl<K, C> RateLimitBackend<K> for MemoryBackend<C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    type Store = MemoryRateLimitStore<K, C>;

    fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError> {
        let max_keys = self.checked_max_keys()?;
        let cells = match spec.algorithm {
            Algorithm::Gcra => Cells::Gcra {
                single: GcraCell::default(),
                map: BoundedMap::new(max_keys),
                others: BoundedMap::new(max_keys),
            },
            Algorithm::SlidingWindow => Cells::Window {
                single: WindowCell::default(),
                map: BoundedMap::new(max_keys),
                others: BoundedMap::new(max_keys),
            },
        };
        Ok(MemoryRateLimitStore {
            limits: spec.limits,
            set: Arc::clone(&spec.set),
            primary: spec.set.limits()[0].id,
            clock: self.clock.clone(),
            cells,
        })
    }
}

impl<K, C> crate::rate_limit::StoreLimits for MemoryRateLimitStore<K, C> {
    fn limit_set(&self) -> &Arc<crate::rate_limit::LimitSet> {
        &self.set
    }
}
