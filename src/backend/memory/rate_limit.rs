//! In-memory rate-limit store.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::MemoryBackend;
use super::map::{BoundedMap, Expiring};
use crate::backend::BackendError;
use crate::clock::{Clock, Nanos};
use crate::error::ConfigError;
use crate::rate_limit::algorithm::gcra::{GcraCell, decide_units};
use crate::rate_limit::algorithm::sliding_window::{Window, WindowCell};
use crate::rate_limit::quota::{Algorithm, Limits};
use crate::rate_limit::{
    Ask, Check, Decision, LimitSet, MAX_LIMITS, RateLimitBackend, RateLimitSpec, RateLimitStore,
    SetLimit,
};

/// A cell of one limit's state for one key, as a decision over a set uses it: decide (spending or
/// not) and take a spend back.
///
/// Every decision loads the cell before it reads the clock, so that it never sees a spend made
/// with a later clock read than its own (see [`GcraCell::check_with`]). A decision over a set
/// loads all its cells, then reads the clock once; a cell whose state is behind a lock (the
/// sliding window's) reads the clock itself, under the lock.
trait SetCell: Default + Send + Sync + 'static {
    /// What a spend moved, to take it back.
    type Moved: Copy;

    /// What a decision over a set loads of the cell before the set's clock read.
    type Loaded: Copy + Default;

    /// Whether a decision over a set of these cells reads the clock once after loading them all
    /// (otherwise each cell reads it when it decides).
    const LOADS: bool;

    /// The cell's state as a decision over a set loads it, before it reads the clock.
    fn load(&self) -> Self::Loaded;

    /// Decides `cost` units at the time `clock` reads after the cell is loaded, spending them
    /// unless `peek` (no trace kept); on a lost race, `clock` is read again.
    fn decide(
        &self,
        limits: &Limits,
        cost: u32,
        peek: bool,
        clock: impl FnMut() -> Nanos,
    ) -> Decision;

    /// Decides `cost` units against `loaded`, loaded before `now` was read (`now` unused when
    /// not [`LOADS`](Self::LOADS): `clock` is read then), spending them if `spend` and admitted;
    /// returns what the spend moved.
    fn decide_traced(
        &self,
        limits: &Limits,
        loaded: Self::Loaded,
        now: Nanos,
        cost: u32,
        spend: bool,
        clock: impl FnMut() -> Nanos,
    ) -> (Decision, Option<Self::Moved>);

    /// Takes back a spend of `cost` units that moved this cell by `moved`, never more than what
    /// of it still counts at the time `clock` reads (read after the cell is loaded): an undo can
    /// only leave the cell with more spent than it would hold had the spend never happened.
    fn undo(&self, moved: Self::Moved, cost: u32, clock: impl FnMut() -> Nanos);

    /// After a decision (not a peek) that left this cell as it was `loaded` (nothing spent, or a
    /// spend taken back): writes back what a state from an earlier quota was read as, as the
    /// Redis scripts do (`keep`). GCRA: an arrival time beyond the tolerance, rebased to it
    /// ([`GcraCell::rebase`]). The default: nothing (a sliding window moves its counts under its
    /// lock as it decides).
    #[inline(always)]
    fn settle(&self, limits: &Limits, loaded: Self::Loaded, now: Nanos) {
        let _ = (limits, loaded, now);
    }

    /// Decides `limits` (at most `N`, every one enforced) for `cost` units at `now` on `cells`,
    /// each loaded in `loaded` before `now` was read, and spends them only once every limit
    /// admits, each cell with one compare-exchange from the state it loaded. `None` when a cell
    /// changed since it was loaded (nothing is left spent: the caller decides again), or when
    /// this kind of cell decides under a lock instead (the default: the caller's general path).
    /// `clock` is read only to take spends back ([`undo`](Self::undo)).
    #[inline(always)]
    fn decide_enforced<const N: usize>(
        cells: &[&Self; N],
        loaded: &[Self::Loaded; N],
        limits: &[SetLimit],
        now: Nanos,
        cost: u32,
        clock: &impl Fn() -> Nanos,
    ) -> Option<Decision> {
        let _ = (cells, loaded, limits, now, cost, clock);
        None
    }
}

impl SetCell for GcraCell {
    type Moved = (Nanos, Nanos);
    type Loaded = Nanos;
    const LOADS: bool = true;

    #[inline(always)]
    fn load(&self) -> Nanos {
        GcraCell::load(self)
    }

    #[inline(always)]
    fn decide(
        &self,
        limits: &Limits,
        cost: u32,
        peek: bool,
        clock: impl FnMut() -> Nanos,
    ) -> Decision {
        if peek {
            self.peek(limits, cost, clock)
        } else {
            self.check_units(limits, cost, clock)
        }
    }

    #[inline(always)]
    fn decide_traced(
        &self,
        limits: &Limits,
        tat: Nanos,
        now: Nanos,
        cost: u32,
        spend: bool,
        clock: impl FnMut() -> Nanos,
    ) -> (Decision, Option<(Nanos, Nanos)>) {
        if spend {
            self.spend_from(limits, tat, now, cost, clock)
        } else {
            (GcraCell::peek_from(limits, tat, now, cost), None)
        }
    }

    fn undo(&self, (old, new): (Nanos, Nanos), _cost: u32, clock: impl FnMut() -> Nanos) {
        GcraCell::undo(self, old, new, clock);
    }

    #[inline(always)]
    fn settle(&self, limits: &Limits, loaded: Nanos, now: Nanos) {
        self.rebase(limits, loaded, now);
    }

    /// Every limit decided against its loaded TAT at `now` (no atomic operation), then, if all
    /// admit, each TAT moved with one compare-exchange from the value loaded; a lost one takes
    /// back those already made (to the spend's start, `max(tat, now)`, the same state as the TAT
    /// loaded; or, if a spend landed on top, by what of theirs is still ahead of the clock: see
    /// [`GcraCell::undo`]) and answers `None`. Against the
    /// general path (spend as each admits, take back on a refusal), a set refused here writes
    /// nothing, and an admitted one keeps no trace per limit
    /// (`u64/rampart_rate_limit_*_two_limits` rows of the `instructions` bench, BENCHMARKS.md).
    #[inline(always)]
    fn decide_enforced<const N: usize>(
        cells: &[&GcraCell; N],
        loaded: &[Nanos; N],
        limits: &[SetLimit],
        now: Nanos,
        cost: u32,
        clock: &impl Fn() -> Nanos,
    ) -> Option<Decision> {
        let mut binding = Binding::default();
        let mut next = [None; N];
        // The decisions themselves only for checking the fold against `combine` (debug builds).
        let mut decisions = [Decision::uncounted(0); N];
        for (i, ((l, &tat), n)) in limits.iter().zip(loaded).zip(&mut next).enumerate() {
            let (d, spend) = decide_units(&l.limits, tat, now, cost);
            *n = spend;
            if cfg!(debug_assertions) {
                decisions[i] = d;
            }
            binding.add(i, false, d);
        }
        debug_assert_eq!(
            binding.decision(),
            Decision::combine(limits, &decisions[..limits.len()], !binding.refused),
            "the folded decision is the combined one"
        );
        if !binding.refused {
            for (i, ((c, &tat), n)) in cells.iter().zip(loaded).zip(&next).enumerate() {
                if let Some(n) = *n
                    && !c.replace(tat, n)
                {
                    for ((c, &tat), n) in cells.iter().zip(loaded).zip(&next).take(i) {
                        if let Some(n) = *n {
                            GcraCell::undo(c, tat.max(now), n, clock);
                        }
                    }
                    return None;
                }
            }
        }
        // Cells left as loaded (a refusal, a cost of 0: no spend at all): a TAT beyond its
        // tolerance is rebased (see `GcraCell::rebase`).
        if binding.refused || cost == 0 {
            for ((c, &tat), l) in cells.iter().zip(loaded).zip(limits) {
                c.rebase(&l.limits, tat, now);
            }
        }
        Some(binding.decision())
    }
}

impl SetCell for WindowCell {
    type Moved = Window;
    type Loaded = ();
    const LOADS: bool = false;

    #[inline(always)]
    fn load(&self) {}

    #[inline(always)]
    fn decide(
        &self,
        limits: &Limits,
        cost: u32,
        peek: bool,
        clock: impl FnMut() -> Nanos,
    ) -> Decision {
        self.check_units(limits, cost, peek, clock)
    }

    #[inline(always)]
    fn decide_traced(
        &self,
        limits: &Limits,
        _: (),
        _: Nanos,
        cost: u32,
        spend: bool,
        clock: impl FnMut() -> Nanos,
    ) -> (Decision, Option<Window>) {
        let (d, moved) = self.check_traced(limits, cost, !spend, clock);
        (d, moved.map(|(_, new)| new))
    }

    fn undo(&self, new: Window, cost: u32, _clock: impl FnMut() -> Nanos) {
        // Exact without the clock: the units come off the window they were counted in, and once
        // that window has rolled on (they count as the previous window's, weighted) nothing is
        // taken back.
        WindowCell::undo(self, new, cost);
    }
}

/// A limit's state in a key's [`Entry`]: decided as one cell of a set, and judging its own
/// idleness (each cell's state says when it stops counting). The map's context, the store's first
/// default limit, serves one purpose: a sliding-window cell's eviction rank, its weighted count
/// in the time that limit takes to earn it (cells do not keep the limit they were decided under,
/// which would cost every key 8 bytes): keys are forgotten in the order of the requests forgetting
/// them gives back, whatever their tier.
trait KeyCell: SetCell + Expiring<Context = Limits> {}

impl<C: SetCell + Expiring<Context = Limits>> KeyCell for C {}

/// One key's state in the store: the cell of the layer's first default limit, and beside it the
/// cells of the other limits the key was decided under (added the first time a decision names
/// one, under the shard's write lock; found by the limit's id, in the order they were added). A
/// decision over any set of limits finds every cell it needs with one lookup of the key. The
/// global key's entry for the default set (`Cells`' `single`) is outside the map, its cells made
/// at build.
struct Entry<C: KeyCell> {
    primary: C,
    others: Option<Box<Others<C>>>,
}

/// A key's cells of limits other than the first, behind one thin pointer (a `Vec` in a box: a
/// key with only the first limit pays 8 bytes for them, not a `Vec`'s 24).
#[derive(Default)]
struct Others<C>(Vec<(u16, C)>);

impl<C: KeyCell> Default for Entry<C> {
    fn default() -> Self {
        Self {
            primary: C::default(),
            others: None,
        }
    }
}

impl<C: KeyCell> Entry<C> {
    /// The cell of `limit` (the first limit's if `primary`), if this key has one yet.
    #[inline(always)]
    fn find(&self, limit: &SetLimit, primary: bool) -> Option<&C> {
        if primary {
            return Some(&self.primary);
        }
        let (_, other) = self
            .others
            .as_ref()?
            .0
            .iter()
            .find(|(id, _)| *id == limit.id)?;
        Some(other)
    }

    /// An entry with fresh cells for the first limit and each of `others`.
    fn with_others(others: &[SetLimit]) -> Self {
        let mut entry = Self::default();
        for l in others {
            entry.add(l.id);
        }
        entry
    }

    /// Adds a fresh cell for limit `id` unless there is one.
    fn add(&mut self, id: u16) {
        let others = &mut self.others.get_or_insert_with(Default::default).0;
        if !others.iter().any(|(i, _)| *i == id) {
            others.push((id, C::default()));
        }
    }
}

impl<C: KeyCell> Expiring for Entry<C> {
    type Context = Limits;

    /// Idle when every one of the key's cells is: forgetting the key forgets all its limits at once.
    #[inline]
    fn is_idle(&self, limits: &Limits, now: Nanos) -> bool {
        self.primary.is_idle(limits, now)
            && self
                .others
                .as_ref()
                .is_none_or(|o| o.0.iter().all(|(_, c)| c.is_idle(limits, now)))
    }

    /// When the last of the key's cells will be idle.
    fn due(&self, limits: &Limits, now: Nanos) -> Nanos {
        let others = self.others.as_ref().map_or(0, |o| {
            o.0.iter()
                .map(|(_, c)| c.due(limits, now))
                .max()
                .unwrap_or(0)
        });
        self.primary.due(limits, now).max(others)
    }
}

impl Expiring for GcraCell {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, _: &Limits, now: Nanos) -> bool {
        GcraCell::is_idle(self, now)
    }

    fn due(&self, _: &Limits, _: Nanos) -> Nanos {
        GcraCell::due(self)
    }
}

impl Expiring for WindowCell {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, _: &Limits, now: Nanos) -> bool {
        WindowCell::is_idle(self, now)
    }

    /// Ranked by the requests forgetting it gives back, in the time the store's first default
    /// limit takes to earn them (see [`KeyCell`]).
    fn due(&self, limits: &Limits, now: Nanos) -> Nanos {
        WindowCell::due(self, limits.limit, now)
    }
}

/// Whether `d` has fewer requests remaining than `than`, as [`Decision::remaining`] counts them
/// before capping (what the binding limit is chosen by: slack / unit, rounded down), without
/// dividing unless the two quotients are less than one apart: `a / b < c / e` as rationals is
/// `a * e < c * b`, and when they are one or more apart the rounded-down ones differ too. Two
/// 64-bit divisions were about 4.5 ns of a global two-limit decision's 50 (alternating runs of
/// `u64/rampart_rate_limit_global_two_limits`, `instructions` bench; BENCHMARKS.md).
#[inline(always)]
fn fewer_remaining(d: &Decision, than: &Decision) -> bool {
    let ((a, b), (c, e)) = (d.slack_parts(), than.slack_parts());
    let (left, right) = (u128::from(a) * u128::from(e), u128::from(c) * u128::from(b));
    if left >= right {
        false
    } else if right - left >= u128::from(b) * u128::from(e) {
        true
    } else {
        a / b < c / e
    }
}

/// The binding limit of a set, folded in as its limits are decided in order (what
/// `Decision::combine` picks from the decisions once all are made, without keeping them): among
/// enforced limits, the fewest requests remaining (ties: the first) while every one admits, and
/// once one refuses the refusing one with the longest wait (a cost over capacity first); for a
/// set of shadow limits only, the fewest remaining of them.
#[derive(Default)]
struct Binding {
    refused: bool,
    shadow_mask: u8,
    fewest: Option<(usize, Decision)>,
    longest: Option<(usize, Decision)>,
    shadow_fewest: Option<(usize, Decision)>,
}

impl Binding {
    /// Limit `i`'s decision `d`.
    #[inline(always)]
    fn add(&mut self, i: usize, shadow: bool, d: Decision) {
        if shadow {
            if !d.is_allowed() {
                self.shadow_mask |= 1 << i;
            }
            if self
                .shadow_fewest
                .is_none_or(|(_, f)| fewer_remaining(&d, &f))
            {
                self.shadow_fewest = Some((i, d));
            }
        } else if d.is_allowed() {
            // Only an admitted set's figures are the fewest remaining: no comparison once an
            // enforced limit has refused.
            if !self.refused && self.fewest.is_none_or(|(_, f)| fewer_remaining(&d, &f)) {
                self.fewest = Some((i, d));
            }
        } else {
            self.refused = true;
            let longer = match &self.longest {
                None => true,
                Some((_, cur)) => {
                    d.exceeds_capacity() && !cur.exceeds_capacity()
                        || d.exceeds_capacity() == cur.exceeds_capacity()
                            && d.retry_after() > cur.retry_after()
                }
            };
            if longer {
                self.longest = Some((i, d));
            }
        }
    }

    /// The set's decision: the binding limit's, with the shadow limits' refusals noted.
    #[inline(always)]
    fn decision(&self) -> Decision {
        match (self.refused, self.longest, self.fewest, self.shadow_fewest) {
            (true, Some((i, d)), _, _) => d.with_binding(i),
            (false, _, Some((i, d)), _) => d.with_binding(i),
            (_, _, _, Some((i, d))) => d.admitted_anyway().with_binding(i),
            _ => unreachable!("a set has at least one limit"),
        }
        .with_shadow_refused(self.shadow_mask)
    }
}

/// How a decision over a set decides: its cost, whether it only looks, and whether the key has
/// no data (its first limit's cell is then the store's single one).
struct Moment {
    cost: u32,
    peek: bool,
    keyless: bool,
}

/// The in-memory [`RateLimitStore`]: lock-free GCRA cells (or tiny per-key mutexes for the sliding
/// window) in a bounded sharded map. Built by [`MemoryBackend`].
///
/// State is kept per key and per limit name, in one entry per key: the layer's first default
/// limit's cell (the one [`quota`](crate::rate_limit::RateLimitBuilder::quota) sets), exactly as
/// a single-quota limiter keeps it, and beside it the cells of the key's other limits, added the
/// first time a decision names one. The map holds at most [`max_keys`](MemoryBackend::max_keys)
/// keys, each with all its limits; a key is forgotten (all its limits at once) when every one of
/// them is idle, or, in a shard full of active keys, when the last of them is due soonest.
///
/// A decision over one limit is one lookup and one atomic operation on one cell, loaded before the
/// clock is read (so that no decision sees a spend made with a later clock read than its own). A
/// decision over several limits finds the key's entry once, loads its cells and reads the clock
/// once (a sliding window's cell reads it under its own lock instead). A GCRA set of enforced
/// limits is then decided whole against the loaded states, and spent only if every limit admits:
/// one compare-exchange per cell from the state it loaded, so a set refused there writes nothing.
/// Otherwise (a cell changed since it was loaded, a peek, a shadow limit, the sliding window) the
/// limits are decided in order, each enforced limit spending as it admits (one atomic operation
/// per cell); when a later enforced limit refuses, the earlier ones take their spend back (exactly
/// their own length, so spends made on top of it stay). So a set is spent all or nothing, with no
/// lock but the shard's read side (`rate_limit/keyed_peer_ip_10k/rampart_store_check_two_limits`
/// measures it). The one trade: a decision racing with a set whose spend is about to be taken
/// back (a refusal on the second path, or a lost compare-exchange on the first) may see that spend
/// and be refused too, so a hot key can be under-admitted by a few units at such instants, never
/// over-admitted.
///
/// A key type with no data (such as the global key `()`) keeps its default set's cells outside
/// the map, made at build: the whole single-limit limiter is then one atomic word, and a global
/// set of several limits needs no lookup. A limit added later (a live change, a tier) has its
/// cell in the map's entry for the key.
pub struct MemoryRateLimitStore<K, C = crate::clock::TokioClock> {
    limits: Limits,
    /// The layer's default set, as built.
    set: Arc<LimitSet>,
    /// The id of the first default limit's name: its state is each entry's primary cell.
    primary: u16,
    clock: C,
    cells: Cells<K>,
}

/// Each algorithm's cells: `single`, the entry of a key type with no data (the global key `()`),
/// kept outside the map with a cell for every limit of the default set made at build, so that a
/// global limiter decides its default set with no lookup (a limit added later, by a live change,
/// lives in the map's entry for that key); and the map of every other key's entry.
enum Cells<K> {
    Gcra {
        single: Entry<GcraCell>,
        map: BoundedMap<K, Entry<GcraCell>>,
    },
    Window {
        single: Entry<WindowCell>,
        map: BoundedMap<K, Entry<WindowCell>>,
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

impl<K: Hash + Eq + Clone, C: Clock> MemoryRateLimitStore<K, C> {
    /// Decides one request for `key` now, against the layer's first default limit as it was
    /// built (the plain single-quota decision).
    #[inline]
    pub fn decide(&self, key: &K) -> Decision {
        self.decide_primary(key, &self.limits)
    }

    /// One unit of the first default limit for `key` now, with `limits` (the plain decision: one
    /// closure per cell kind, each inlined, as before sets existed). The cell is loaded (or
    /// locked) before the clock is read.
    #[inline(always)]
    fn decide_primary(&self, key: &K, limits: &Limits) -> Decision {
        let clock = || self.clock.now();
        // Keys without data are all equal: one cell serves them, with no hashing or locking.
        let keyless = std::mem::size_of::<K>() == 0;
        match &self.cells {
            Cells::Gcra { single, .. } if keyless => single.primary.check_with(limits, clock),
            Cells::Gcra { map, .. } => {
                map.with_lazy(key, limits, clock, |e| e.primary.check_with(limits, clock))
            }
            Cells::Window { single, .. } if keyless => {
                single.primary.check_units(limits, 1, false, clock)
            }
            Cells::Window { map, .. } => map.with_lazy(key, limits, clock, |e| {
                e.primary.check_units(limits, 1, false, clock)
            }),
        }
    }

    /// Whether `limit`'s state is the entries' primary cell: the first default limit's name (its
    /// quota may have changed since the build: a cell's state does not depend on it).
    #[inline(always)]
    fn is_primary(&self, limit: &SetLimit) -> bool {
        limit.id == self.primary
    }

    /// Decides `ask`'s set for `key` (any set, cost or peek).
    #[inline(always)]
    fn decide_ask(&self, key: &K, limits: &[SetLimit], cost: u32, peek: bool) -> Decision {
        match &self.cells {
            Cells::Gcra { single, map } => self.decide_in(single, map, key, limits, cost, peek),
            Cells::Window { single, map } => self.decide_in(single, map, key, limits, cost, peek),
        }
    }

    /// Decides `limits` for `key` with the algorithm's `single` entry (a key with no data's cells
    /// of the default set) and `map`: for a key with no data whose limits all have a cell in
    /// `single`, no lookup; otherwise one lookup of the key's entry, which gets the cells it lacks
    /// first.
    ///
    /// The key's cells are loaded, then the clock read once, and the set decided as the store's
    /// documentation says ([`decide_cells`](Self::decide_cells)).
    #[inline(always)]
    fn decide_in<V: KeyCell>(
        &self,
        single: &Entry<V>,
        map: &BoundedMap<K, Entry<V>>,
        key: &K,
        limits: &[SetLimit],
        cost: u32,
        peek: bool,
    ) -> Decision {
        if std::mem::size_of::<K>() == 0 {
            return self.decide_keyless(single, map, key, limits, cost, peek);
        }
        self.decide_mapped(single, map, key, limits, cost, peek)
    }

    /// [`decide_in`](Self::decide_in) for a key with no data, out of line (so that the global
    /// layer's `call`, whose plain path is one cell, stays small enough to be inlined): a set
    /// whose every limit has a cell in `single` (the default set) is decided there, with no
    /// lookup; any other in the map's entry for the key (`single`'s cells still `single`'s).
    #[inline(never)]
    fn decide_keyless<V: KeyCell>(
        &self,
        single: &Entry<V>,
        map: &BoundedMap<K, Entry<V>>,
        key: &K,
        limits: &[SetLimit],
        cost: u32,
        peek: bool,
    ) -> Decision {
        let at = Moment {
            cost,
            peek,
            keyless: true,
        };
        match self.decide_sized(single, single, limits, &at) {
            Some(d) => d,
            None => self.decide_mapped(single, map, key, limits, cost, peek),
        }
    }

    /// [`decide_in`](Self::decide_in) through the map's entry for `key`.
    #[inline(always)]
    fn decide_mapped<V: KeyCell>(
        &self,
        single: &Entry<V>,
        map: &BoundedMap<K, Entry<V>>,
        key: &K,
        limits: &[SetLimit],
        cost: u32,
        peek: bool,
    ) -> Decision {
        let keyless = std::mem::size_of::<K>() == 0;
        let clock = || self.clock.now();
        let grow = |e: &mut Entry<V>| {
            for l in limits {
                let primary = self.is_primary(l);
                // A key with no data keeps its default set's cells in `single`.
                let in_single = keyless && single.find(l, primary).is_some();
                if !primary && !in_single {
                    e.add(l.id);
                }
            }
        };
        if let [one] = limits {
            let primary = self.is_primary(one);
            // (For a key with no data, `decide_keyless` found no cell for it in `single`.)
            let decide = |e: &Entry<V>| {
                let c = e.find(one, primary)?;
                Some(c.decide(&one.limits, cost, peek, clock))
            };
            let d = if peek {
                map.peek_grow(key, decide, grow)
            } else {
                map.with_grow(key, &self.limits, clock, decide, grow)
            };
            return if one.shadow && !d.is_allowed() {
                d.admitted_anyway().with_shadow_refused(1)
            } else {
                d
            };
        }
        let at = Moment {
            cost,
            peek,
            keyless,
        };
        let decide = |e: &Entry<V>| self.decide_sized(single, e, limits, &at);
        if peek {
            map.peek_grow(key, decide, grow)
        } else {
            map.with_grow(key, &self.limits, clock, decide, grow)
        }
    }

    /// [`decide_cells`](Self::decide_cells) with arrays as long as the set (rounded up), not
    /// `MAX_LIMITS`: filling eight decisions and eight spends for a set of two was a fifth of the
    /// two-limit decision's instructions.
    #[inline(always)]
    fn decide_sized<V: KeyCell>(
        &self,
        single: &Entry<V>,
        entry: &Entry<V>,
        limits: &[SetLimit],
        at: &Moment,
    ) -> Option<Decision> {
        let clock = || self.clock.now();
        match limits.len() {
            0..=2 => self.decide_cells::<V, 2>(single, entry, limits, at, clock),
            3..=4 => self.decide_cells::<V, 4>(single, entry, limits, at, clock),
            _ => self.decide_cells::<V, MAX_LIMITS>(single, entry, limits, at, clock),
        }
    }

    /// Decides `limits` (at most `N`) on their cells: `entry`'s, or for a key with no data
    /// `single`'s where it has the limit and `entry`'s otherwise; `None` when a cell is missing
    /// (nothing decided then). The cells are all loaded before `clock` is read.
    #[inline(always)]
    fn decide_cells<V: KeyCell, const N: usize>(
        &self,
        single: &Entry<V>,
        entry: &Entry<V>,
        limits: &[SetLimit],
        at: &Moment,
        clock: impl Fn() -> Nanos,
    ) -> Option<Decision> {
        let &Moment {
            cost,
            peek,
            keyless,
        } = at;
        let mut cells: [&V; N] = [&single.primary; N];
        let mut loaded = [<V as SetCell>::Loaded::default(); N];
        for ((c, t), l) in cells.iter_mut().zip(&mut loaded).zip(limits) {
            let primary = self.is_primary(l);
            if !(primary && keyless) {
                *c = if keyless {
                    // The default set's cells are `single`'s; a limit added later is the map's.
                    single.find(l, primary).or_else(|| entry.find(l, primary))?
                } else {
                    entry.find(l, primary)?
                };
            }
            *t = c.load();
        }
        // After every load: no cell holds a spend made with a later clock read than this one.
        let now = if <V as SetCell>::LOADS { clock() } else { 0 };
        // A set of enforced limits that spends: decided first, spent only if every limit
        // admits (a refusal leaves nothing to take back); a cell changed since it was loaded
        // takes the general path below.
        if <V as SetCell>::LOADS
            && !peek
            && limits.iter().all(|l| !l.shadow)
            && let Some(d) =
                <V as SetCell>::decide_enforced::<N>(&cells, &loaded, limits, now, cost, &clock)
        {
            return Some(d);
        }
        let mut spent: [Option<<V as SetCell>::Moved>; N] = [None; N];
        let mut binding = Binding::default();
        // The decisions themselves only for checking the fold against `combine` (debug builds).
        let mut decisions = [Decision::uncounted(0); N];
        for (i, ((l, c), t)) in limits.iter().zip(&cells).zip(loaded).enumerate() {
            // Enforced limits spend while every one before them admitted; shadow limits when
            // they admit themselves.
            let spend = !peek && (l.shadow || !binding.refused);
            let (d, moved) = c.decide_traced(&l.limits, t, now, cost, spend, &clock);
            spent[i] = moved;
            if cfg!(debug_assertions) {
                decisions[i] = d;
            }
            binding.add(i, l.shadow, d);
        }
        if binding.refused {
            for ((l, c), moved) in limits.iter().zip(&cells).zip(&spent) {
                if let (false, Some(moved)) = (l.shadow, moved) {
                    c.undo(*moved, cost, &clock);
                }
            }
        }
        if !peek {
            // Every cell left as loaded (the ones that spent and kept it hold another state, and
            // are not touched): what the Redis scripts write back as `keep`.
            for ((l, c), &t) in limits.iter().zip(&cells).zip(&loaded) {
                c.settle(&l.limits, t, now);
            }
        }
        let decision = binding.decision();
        debug_assert_eq!(
            decision,
            Decision::combine(limits, &decisions[..limits.len()], !binding.refused)
                .with_shadow_refused(binding.shadow_mask),
            "the folded decision is the combined one"
        );
        Some(decision)
    }

    /// How many keys the store holds right now (idle ones included until they are swept); a key
    /// counts once, whatever the number of its limits. The global key (a key type with no data)
    /// counts only once a limit outside the default set has state for it: the default set's
    /// cells are kept outside the map.
    pub fn len(&self) -> usize {
        match &self.cells {
            Cells::Gcra { map, .. } => map.len(),
            Cells::Window { map, .. } => map.len(),
        }
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the store will hold, each with all its limits.
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
        if let Some(limit) = ask.plain()
            && self.is_primary(limit)
        {
            return Check::Ready(Ok(self.decide_primary(key, &limit.limits)));
        }
        let limits = ask.set().limits();
        Check::Ready(Ok(self.decide_ask(key, limits, ask.units(), ask.is_peek())))
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
        // A key type with no data: a cell for each limit of the default set, outside the map.
        let defaults = if std::mem::size_of::<K>() == 0 {
            &spec.set.limits()[1..]
        } else {
            &[]
        };
        let cells = match spec.algorithm {
            Algorithm::Gcra => Cells::Gcra {
                single: Entry::with_others(defaults),
                map: BoundedMap::new(max_keys),
            },
            Algorithm::SlidingWindow => Cells::Window {
                single: Entry::with_others(defaults),
                map: BoundedMap::new(max_keys),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::backend::MemoryBackend;
    use crate::clock::ManualClock;
    use crate::key::key_fn;
    use crate::rate_limit::{
        Algorithm, Ask, Check, Limit, LimitSet, Quota, RateLimitLayer, RateLimitStore,
    };

    #[test]
    fn fewer_remaining_compares_the_rounded_down_quotients() {
        use super::{Decision, fewer_remaining};
        let admitted = |slack: u64, unit: u64| Decision::admitted(1, slack, unit, 0);
        let mut values: Vec<u64> = (0..24).collect();
        values.extend([
            999,
            1_000,
            1_001,
            u64::from(u32::MAX),
            1 << 52,
            u64::MAX / 3,
            u64::MAX - 1,
            u64::MAX,
        ]);
        for &a in &values {
            for &b in values.iter().filter(|&&b| b > 0) {
                for &c in &values {
                    for &e in values.iter().filter(|&&e| e > 0) {
                        assert_eq!(
                            fewer_remaining(&admitted(a, b), &admitted(c, e)),
                            a / b < c / e,
                            "{a}/{b} against {c}/{e}"
                        );
                    }
                }
            }
        }
        // A refusal has no slack: none remaining.
        let refused = Decision::refused(1, 0, 5);
        assert!(fewer_remaining(&refused, &admitted(1, 1)));
        assert!(!fewer_remaining(&admitted(0, 7), &refused));
    }

    #[test]
    fn an_enforced_gcra_set_spends_only_when_all_admit_and_a_lost_race_leaves_nothing() {
        use super::{GcraCell, SetCell};
        const NOW: u64 = 1_000_000_000;
        let set = LimitSet::new(
            Algorithm::Gcra,
            &[
                Limit::new("race-a", Quota::per_second(10)),
                Limit::new("race-b", Quota::per_second(2)),
            ],
            false,
        )
        .unwrap();
        let limits = set.limits();
        let (a, b) = (GcraCell::default(), GcraCell::default());
        let decide = |loaded: [u64; 2]| {
            <GcraCell as SetCell>::decide_enforced::<2>(&[&a, &b], &loaded, limits, NOW, 1, &|| NOW)
        };
        // Both admit: both spent, b (2 a second) binding with 1 left.
        let d = decide([a.load(), b.load()]).expect("no race");
        assert!(d.is_allowed());
        assert_eq!((d.policy_index(), d.remaining()), (1, 1));
        let (a1, b1) = (a.load(), b.load());
        assert!(a1 > NOW && b1 > NOW);
        // Another decision spends b after this one loaded it: the lost compare-exchange on b
        // takes a's spend back, and nothing is decided.
        let loaded = [a.load(), b.load()];
        assert!(b.check(&limits[1].limits, NOW).is_allowed());
        let b2 = b.load();
        assert_eq!(decide(loaded), None);
        assert_eq!(a.load(), a1, "a's spend was taken back exactly");
        assert_eq!(b.load(), b2, "b holds the other decision's spend only");
        // b is spent (2 of 2): the set is refused by it and writes nothing.
        let d = decide([a.load(), b.load()]).expect("no race");
        assert!(!d.is_allowed());
        assert_eq!(d.policy_index(), 1);
        assert_eq!(
            (a.load(), b.load()),
            (a1, b2),
            "a refused set writes nothing"
        );
    }

    /// A clock that runs a hook (once) the first time it is read after the hook is set: a
    /// decision racing with the one reading it, at the only instant a set's decision can lose.
    #[derive(Clone, Default)]
    struct RacingClock {
        time: ManualClock,
        hook: Arc<std::sync::Mutex<Option<Hook>>>,
    }

    type Hook = Box<dyn FnOnce() + Send>;

    impl crate::clock::Clock for RacingClock {
        fn now(&self) -> crate::clock::Nanos {
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook();
            }
            self.time.now()
        }
    }

    #[test]
    fn a_set_that_loses_a_race_after_loading_is_decided_again_and_spent_once() {
        let clock = RacingClock::default();
        clock.time.advance(Duration::from_secs(1));
        let (a, b) = (
            Limit::new("race-set-a", Quota::per_hour(10)),
            Limit::new("race-set-b", Quota::per_hour(4)),
        );
        let layer = RateLimitLayer::builder()
            .limits([a, b])
            .key(key_fn(|k: &u64| Some(*k)))
            .backend(MemoryBackend::new().clock(clock.clone()))
            .build()
            .unwrap();
        let only_b = Arc::new(LimitSet::new(Algorithm::Gcra, &[b], false).unwrap());
        let ask = |set: &Arc<LimitSet>, peek: bool| {
            let ask = Ask::new(set);
            match layer
                .store()
                .check(&7, &if peek { ask.peek() } else { ask })
            {
                Check::Ready(Ok(d)) => d,
                _ => unreachable!("the memory store decides at once"),
            }
        };
        // The key's entry exists (both cells made): the next set decision loads both cells, then
        // reads the clock, which spends b once behind its back.
        assert!(ask(&layer.limit_set(), false).is_allowed());
        let racer = layer.clone();
        let racer_set = Arc::clone(&only_b);
        *clock.hook.lock().unwrap() = Some(Box::new(move || {
            match racer.store().check(&7, &Ask::new(&racer_set)) {
                Check::Ready(Ok(d)) => assert!(d.is_allowed()),
                _ => unreachable!(),
            }
        }));
        let d = ask(&layer.limit_set(), false);
        assert!(clock.hook.lock().unwrap().is_none(), "the race ran");
        // Admitted once, each limit spent once by it: a 2 of 10, b 3 of 4 (the racer's too).
        assert!(d.is_allowed());
        assert_eq!((d.policy_index(), d.remaining()), (1, 1));
        let a_only = Arc::new(LimitSet::new(Algorithm::Gcra, &[a], false).unwrap());
        assert_eq!(
            ask(&a_only, true).remaining(),
            7,
            "a: 10, 2 spent, the one peeked at"
        );
        assert_eq!(
            ask(&only_b, true).remaining(),
            0,
            "b: 4, 3 spent, the one peeked at"
        );
    }

    #[test]
    fn a_global_limiters_default_set_lives_outside_the_map_and_a_later_limit_in_it() {
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
            let (hour, burst, day) = (
                Limit::new("global-hour", Quota::per_hour(5)),
                Limit::new("global-burst", Quota::per_hour(3)),
                Limit::new("global-day", Quota::per_hour(100)),
            );
            let layer = RateLimitLayer::builder()
                .limits([hour, burst])
                .algorithm(algorithm)
                .backend(MemoryBackend::new().clock(ManualClock::new()))
                .build()
                .unwrap();
            let store = layer.store();
            let set = |limits: &[Limit]| Arc::new(LimitSet::new(algorithm, limits, false).unwrap());
            let ask = |set: &Arc<LimitSet>, cost: u32, peek: bool| {
                let ask = Ask::new(set).cost(cost);
                match store.check(&(), &if peek { ask.peek() } else { ask }) {
                    Check::Ready(Ok(d)) => d,
                    _ => unreachable!("the memory store decides at once"),
                }
            };
            // The default set: both limits spent together, the second binding; no map entry.
            let default = layer.limit_set();
            for _ in 0..3 {
                assert!(ask(&default, 1, false).is_allowed(), "{algorithm:?}");
            }
            let refused = ask(&default, 1, false);
            assert!(!refused.is_allowed());
            assert_eq!(refused.policy_index(), 1, "{algorithm:?}");
            assert_eq!(
                store.len(),
                0,
                "{algorithm:?}: the default set is outside the map"
            );
            // A set with a limit the layer was not built with (a live change): that limit's state
            // goes in the map's entry for `()`, the default limits' stay where they are.
            // "global-hour" has 2 left of 5 (3 spent above): a cost of 3 is refused, all or
            // nothing, and a cost of 2 is admitted.
            let wider = set(&[day, hour]);
            let over = ask(&wider, 3, false);
            assert!(!over.is_allowed(), "{algorithm:?}");
            assert_eq!(over.policy_index(), 1);
            assert!(ask(&wider, 2, false).is_allowed(), "{algorithm:?}");
            assert_eq!(
                store.len(),
                1,
                "{algorithm:?}: the new limit's state is in the map"
            );
            // "global-day" spent 2 (not the refused 3): 100, 2 spent and the one peeked at.
            let day = set(&[day]);
            assert_eq!(ask(&day, 1, true).remaining(), 97, "{algorithm:?}");
            // The second default limit's state (in `single`, beside the first) is the one a mixed
            // set decides: "global-burst" is spent (3 of 3), so a set of it and the new limit is
            // refused by it and spends neither.
            let mixed = set(&[Limit::new("global-day", Quota::per_hour(100)), burst]);
            let refused = ask(&mixed, 1, false);
            assert!(!refused.is_allowed(), "{algorithm:?}");
            assert_eq!(refused.policy_index(), 1, "{algorithm:?}");
            assert_eq!(ask(&day, 1, true).remaining(), 97, "{algorithm:?}: unspent");
            // "global-hour" has one state, spent by both sets: 3 + 2 of 5, none left.
            assert!(!ask(&set(&[hour]), 1, true).is_allowed(), "{algorithm:?}");
        }
    }

    #[test]
    fn a_live_change_of_the_first_limits_period_keeps_the_sliding_windows_counts() {
        const MINUTE: Duration = Duration::from_secs(60);
        let clock = ManualClock::new();
        let layer = RateLimitLayer::builder()
            .limits([Limit::new("minute", Quota::with_period(10, MINUTE))])
            .algorithm(Algorithm::SlidingWindow)
            .key(key_fn(|k: &u64| Some(*k)))
            .backend(MemoryBackend::new().max_keys(128).clock(clock.clone()))
            .build()
            .unwrap();
        let store = layer.store();
        let check = |k: u64, set: &Arc<LimitSet>, peek: bool| {
            let ask = Ask::new(set);
            match store.check(&k, &if peek { ask.peek() } else { ask }) {
                Check::Ready(Ok(d)) => d,
                _ => unreachable!("the memory store decides at once"),
            }
        };
        let built = layer.limit_set();
        for _ in 0..6 {
            assert!(check(1, &built, false).is_allowed());
        }
        // The same limit, its period doubled at run time: the 6 counted still count (a fresh
        // state would admit 10 more).
        let doubled = Arc::new(
            LimitSet::new(
                Algorithm::SlidingWindow,
                &[Limit::new("minute", Quota::with_period(10, 2 * MINUTE))],
                false,
            )
            .unwrap(),
        );
        for i in 0..4 {
            assert!(check(1, &doubled, false).is_allowed(), "{i}");
        }
        assert!(!check(1, &doubled, false).is_allowed());
        // Back to the built period (a peek, which stores nothing): the 10 are in its window too.
        assert!(!check(1, &built, true).is_allowed());
        // 130 s on, the counts are past two of the built periods but not of their own: a sweep
        // (a new key; 128 keys are one shard) keeps the key, whose previous window weighs 110/120
        // of 10; a key idle by its own period is swept.
        check(2, &built, false);
        clock.advance(Duration::from_secs(130));
        assert_eq!(store.len(), 2);
        assert!(check(100, &built, false).is_allowed());
        assert_eq!(store.len(), 2, "key 2 swept, key 1 kept");
        let d = check(1, &doubled, true);
        assert!(!d.is_allowed(), "the key's counts were forgotten: {d:?}");
    }

    #[test]
    fn a_key_is_one_entry_with_all_its_limits_counted_and_evicted_once() {
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
            let clock = ManualClock::new();
            let layer = RateLimitLayer::builder()
                .limits([
                    Limit::new("hour", Quota::per_hour(10)),
                    Limit::new("burst", Quota::per_hour(3)),
                ])
                .algorithm(algorithm)
                .key(key_fn(|k: &u64| Some(*k)))
                .backend(MemoryBackend::new().max_keys(128).clock(clock.clone()))
                .build()
                .unwrap();
            let (store, set) = (layer.store(), layer.limit_set());
            let check = |k: u64| match store.check(&k, &Ask::new(&set)) {
                Check::Ready(Ok(d)) => d,
                _ => unreachable!("the memory store decides at once"),
            };
            // 200 keys through a store of 128: each key spends both limits, the cap counts keys.
            for k in 0..200 {
                for _ in 0..3 {
                    assert!(check(k).is_allowed(), "{algorithm:?} key {k}");
                }
                assert!(store.len() <= store.capacity(), "{}", store.len());
            }
            assert!(store.len() > 64, "eviction is too eager: {}", store.len());
            // The newest key kept both its limits: the second refuses, the first was not spent.
            let refused = check(199);
            assert!(!refused.is_allowed());
            assert_eq!(refused.policy_index(), 1);
            let hour = LimitSet::new(algorithm, &[Limit::new("hour", Quota::per_hour(10))], false)
                .unwrap();
            match store.check(&199, &Ask::new(&hour).peek()) {
                // 10, 3 spent, and the one peeked at.
                Check::Ready(Ok(d)) => assert_eq!(d.remaining(), 6, "{algorithm:?}"),
                _ => unreachable!(),
            }
            // Once every limit of every key is idle, a new key sweeps them all (each once).
            clock.advance(Duration::from_secs(3 * 3600));
            check(1_000);
            assert_eq!(store.len(), 1, "{algorithm:?}");
        }
    }

    /// A flood of distinct keys fills the store: the keys forgotten first are those that spent
    /// least, for both algorithms, so a client over its limit is not given a fresh quota by
    /// being evicted (sliding-window keys of one window used to tie, and an eighth of them went
    /// at random).
    #[test]
    fn a_flood_of_new_keys_does_not_evict_a_key_over_its_limit() {
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
            let clock = ManualClock::new();
            let layer = RateLimitLayer::builder()
                .quota(Quota::per_hour(10))
                .algorithm(algorithm)
                .key(key_fn(|k: &u64| Some(*k)))
                .backend(MemoryBackend::new().max_keys(128).clock(clock.clone()))
                .build()
                .unwrap();
            let store = layer.store();
            let set = layer.limit_set();
            let check = |k: u64| match store.check(&k, &Ask::new(&set)) {
                Check::Ready(Ok(d)) => d,
                _ => unreachable!("the memory store decides at once"),
            };
            for _ in 0..10 {
                assert!(check(0).is_allowed());
            }
            assert!(!check(0).is_allowed(), "{algorithm:?}: spent");
            for k in 1..2_000 {
                clock.advance(Duration::from_millis(1));
                check(k);
            }
            assert!(store.len() <= 128, "{algorithm:?}: {}", store.len());
            assert!(
                !check(0).is_allowed(),
                "{algorithm:?}: the spent key was forgotten and started afresh"
            );
        }
    }

    /// A peek changes nothing: at a key the store has never seen it inserts nothing, so a full
    /// store forgets no other key for it (a quota endpoint peeking at keys its callers choose
    /// would otherwise give other clients fresh quotas).
    #[test]
    fn a_peek_at_an_unknown_key_inserts_nothing_and_forgets_nothing() {
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
            let clock = ManualClock::new();
            let layer = RateLimitLayer::builder()
                .limits([
                    Limit::new("minute", Quota::per_minute(10)),
                    Limit::new("hour", Quota::per_hour(100)),
                ])
                .algorithm(algorithm)
                .key(key_fn(|k: &u64| Some(*k)))
                .backend(MemoryBackend::new().max_keys(128).clock(clock.clone()))
                .build()
                .unwrap();
            let store = layer.store();
            let set = layer.limit_set();
            let check = |k: u64, peek: bool| {
                let ask = Ask::new(&set);
                match store.check(&k, &if peek { ask.peek() } else { ask }) {
                    Check::Ready(Ok(d)) => d,
                    _ => unreachable!("the memory store decides at once"),
                }
            };
            for k in 0..128 {
                assert!(check(k, false).is_allowed());
            }
            assert_eq!(store.len(), 128, "{algorithm:?}");
            for k in 1_000..1_100 {
                let d = check(k, true);
                assert!(d.is_allowed(), "{algorithm:?}");
                assert_eq!(
                    d.remaining(),
                    9,
                    "{algorithm:?}: as a fresh key's next request"
                );
            }
            assert_eq!(store.len(), 128, "{algorithm:?}: nothing inserted");
            // Every key is still there with its spend: one request of its 10 made.
            for k in 0..128 {
                assert_eq!(check(k, true).remaining(), 8, "{algorithm:?}: key {k}");
            }
        }
    }
}
