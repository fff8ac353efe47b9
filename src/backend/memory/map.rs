//! A bounded, sharded concurrent map whose values know when they are idle.
//!
//! Each shard sits behind a `crossbeam_utils::sync::ShardedLock`, a reader-writer lock whose readers
//! each mark a slot of their own: looking up an existing key writes to no memory another thread
//! reads, so threads on the same shard (even on the same key, but for that key's own atomic word) do
//! not bounce a lock's cache line between them. Adding a key takes the write side, which is also when
//! the shard cleans up after itself: idle values are dropped every [`SWEEP_INTERVAL`] and whenever the
//! shard is full. No background task is needed.
//!
//! We use `hashbrown::HashTable` rather than `dashmap` because the shard is the unit of eviction:
//! sweeping one shard under its own write lock, with the hash computed once for shard and bucket,
//! is what keeps both the flood bound and the hot path cheap. (A plain `RwLock` made two threads on
//! one key slower together than one alone: 141 ns against 51 ns per decision in the
//! `contention_2_threads` bench; with `ShardedLock` it is 68 ns each, 1.5 times one thread's rate.)

use std::hash::{BuildHasher, Hash};
use std::sync::PoisonError;

use crossbeam_utils::sync::ShardedLock;

use hashbrown::HashTable;

use crate::clock::Nanos;

/// How often (on the clock of the store) a shard drops idle values when keys are being added.
pub(crate) const SWEEP_INTERVAL: Nanos = 10_000_000_000;

/// Values stored in a [`BoundedMap`].
pub(crate) trait Expiring: Default + Send + Sync + 'static {
    /// What the value needs to judge itself (the quota).
    type Context;

    /// Whether forgetting this value now changes nothing.
    fn is_idle(&self, cx: &Self::Context, now: Nanos) -> bool;

    /// The order in which live values are forgotten when a full shard must make room, soonest
    /// first: when the value will be idle, or (a rate limit's cell) when forgetting it at `now`
    /// would give back the least.
    fn due(&self, cx: &Self::Context, now: Nanos) -> Nanos;
}

#[repr(align(128))] // one shard per cache-line pair: no false sharing between shard locks
struct Shard<K, V> {
    lock: ShardedLock<ShardState<K, V>>,
    /// The most values this shard holds; the shards' caps add up to the map's.
    cap: usize,
}

struct ShardState<K, V> {
    table: HashTable<(K, V)>,
    next_sweep: Nanos,
}

pub(crate) struct BoundedMap<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: crate::hash::RandomState,
    shard_mask: u64,
}

impl<K, V> std::fmt::Debug for BoundedMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedMap")
            .field("shards", &self.shards.len())
            .field(
                "capacity",
                &self.shards.iter().map(|s| s.cap).sum::<usize>(),
            )
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq, V: Expiring> BoundedMap<K, V> {
    /// A map holding at most `max_keys` values.
    pub(crate) fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(1);
        // Enough shards for busy threads not to meet, few enough that each holds at least 128 keys:
        // the largest power of two (the shard index is a mask) up to 64 that allows that.
        let shard_count = 1usize << (max_keys / 128).clamp(1, 64).ilog2();
        let (base, extra) = (max_keys / shard_count, max_keys % shard_count);
        let shards = (0..shard_count)
            .map(|i| Shard {
                lock: ShardedLock::new(ShardState {
                    table: HashTable::new(),
                    next_sweep: SWEEP_INTERVAL,
                }),
                cap: base + usize::from(i < extra),
            })
            .collect();
        Self {
            shards,
            hasher: crate::hash::RandomState::default(),
            shard_mask: shard_count as u64 - 1,
        }
    }

    /// Runs `f` on the value for `key`, creating it if absent.
    #[cfg_attr(not(any(test, feature = "redis")), allow(dead_code))]
    #[inline(always)]
    pub(crate) fn with<R>(&self, key: &K, cx: &V::Context, now: Nanos, f: impl FnOnce(&V) -> R) -> R
    where
        K: Clone,
    {
        self.with_lazy(key, cx, || now, f)
    }

    /// [`with`](Self::with), the time read with `now` only when a key is added (under the shard's
    /// write lock): a value that reads the clock itself after loading its state (the rate limit
    /// store's cells) is found without a read of the clock before it.
    #[inline(always)]
    pub(crate) fn with_lazy<R>(
        &self,
        key: &K,
        cx: &V::Context,
        now: impl FnOnce() -> Nanos,
        f: impl FnOnce(&V) -> R,
    ) -> R
    where
        K: Clone,
    {
        let hash = self.hasher.hash_one(key);
        // hashbrown uses the low bits for the bucket and the top 7 for tags: take the shard from the middle.
        let shard = &self.shards[crate::hash::shard(hash, self.shard_mask)];
        {
            let state = shard.lock.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, v)) = state.table.find(hash, |(k, _)| k == key) {
                return f(v);
            }
        }
        self.insert_slow(shard, hash, key, cx, now, f)
    }

    /// [`with_lazy`](Self::with_lazy)'s write-locked part, out of line: it runs once per key, and
    /// `f` (the cell's decision), called here and on the found value, is then inlined into the
    /// lookup rather than called from both. `INSTRUCTIONS_ONLY=1 cargo bench --bench instructions
    /// --all-features -- http`, same run: `http10k/rampart_peer_ip` +1,141 -> +1,127 (without the
    /// fields +499 -> +485).
    #[cold]
    #[inline(never)]
    fn insert_slow<R>(
        &self,
        shard: &Shard<K, V>,
        hash: u64,
        key: &K,
        cx: &V::Context,
        now: impl FnOnce() -> Nanos,
        f: impl FnOnce(&V) -> R,
    ) -> R
    where
        K: Clone,
    {
        let mut state = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, v)) = state.table.find(hash, |(k, _)| k == key) {
            return f(v); // another thread inserted it meanwhile
        }
        f(self.insert_locked(&mut state, shard.cap, hash, key, cx, now))
    }

    /// Adds `key` with a default value to a shard whose write lock is held and which does not
    /// hold it, room made first (the time read with `now` only here).
    fn insert_locked<'s>(
        &self,
        state: &'s mut ShardState<K, V>,
        cap: usize,
        hash: u64,
        key: &K,
        cx: &V::Context,
        now: impl FnOnce() -> Nanos,
    ) -> &'s mut V
    where
        K: Clone,
    {
        Self::make_room(state, cap, &self.hasher, cx, now());
        let hasher = &self.hasher;
        let entry = state
            .table
            .insert_unique(hash, (key.clone(), V::default()), |(k, _)| {
                hasher.hash_one(k)
            });
        &mut entry.into_mut().1
    }

    /// Runs `f` on the value for `key`, creating it if absent; when `f` finds the value lacking
    /// (returns `None`), takes the shard's write lock, lets `grow` add what was missing, and runs
    /// `f` again there. A value that already has what `f` needs is read under the read lock only,
    /// as [`with`](Self::with) reads it: the in-memory rate limit store's keys, whose cells for
    /// limits other than the first are added the first time a decision names them.
    ///
    /// `f` must return `Some` once `grow` has run, and must have done nothing when it returns
    /// `None`. The time is read with `now` only when a key is added, as in
    /// [`with_lazy`](Self::with_lazy).
    #[inline(always)]
    pub(crate) fn with_grow<R>(
        &self,
        key: &K,
        cx: &V::Context,
        now: impl FnOnce() -> Nanos,
        mut f: impl FnMut(&V) -> Option<R>,
        grow: impl FnOnce(&mut V),
    ) -> R
    where
        K: Clone,
    {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[crate::hash::shard(hash, self.shard_mask)];
        {
            let state = shard.lock.read().unwrap_or_else(PoisonError::into_inner);
            if let Some((_, v)) = state.table.find(hash, |(k, _)| k == key)
                && let Some(r) = f(v)
            {
                return r;
            }
        }
        self.grow_slow(shard, hash, key, cx, now, f, grow)
    }

    /// [`with_grow`](Self::with_grow)'s write-locked part, out of line: it runs once per key and
    /// new limit.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn grow_slow<R>(
        &self,
        shard: &Shard<K, V>,
        hash: u64,
        key: &K,
        cx: &V::Context,
        now: impl FnOnce() -> Nanos,
        mut f: impl FnMut(&V) -> Option<R>,
        grow: impl FnOnce(&mut V),
    ) -> R
    where
        K: Clone,
    {
        let mut state = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
        let state = &mut *state;
        if state.table.find(hash, |(k, _)| k == key).is_none() {
            self.insert_locked(state, shard.cap, hash, key, cx, now);
        }
        let (_, v) = state
            .table
            .find_mut(hash, |(k, _)| k == key)
            .expect("the value was just found or inserted under the write lock");
        if let Some(r) = f(v) {
            return r; // another thread grew it meanwhile
        }
        grow(v);
        f(v).expect("a grown value has what was asked")
    }

    /// [`with_grow`](Self::with_grow) for a look that must change nothing of other keys: a key
    /// that is absent is judged on a value made for the occasion (grown, never inserted:
    /// inserting could make room by forgetting other keys); a key present but missing what `f`
    /// needs is grown in place, as `with_grow` does.
    pub(crate) fn peek_grow<R>(
        &self,
        key: &K,
        mut f: impl FnMut(&V) -> Option<R>,
        grow: impl FnOnce(&mut V),
    ) -> R {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[crate::hash::shard(hash, self.shard_mask)];
        {
            let state = shard.lock.read().unwrap_or_else(PoisonError::into_inner);
            match state.table.find(hash, |(k, _)| k == key) {
                Some((_, v)) => {
                    if let Some(r) = f(v) {
                        return r;
                    }
                }
                None => {
                    drop(state);
                    let mut fresh = V::default();
                    grow(&mut fresh);
                    return f(&fresh).expect("a grown value has what was asked");
                }
            }
        }
        let mut state = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
        let mut fresh = V::default();
        let v = match state.table.find_mut(hash, |(k, _)| k == key) {
            Some((_, v)) => v,
            None => &mut fresh, // swept meanwhile
        };
        if let Some(r) = f(v) {
            return r;
        }
        grow(v);
        f(v).expect("a grown value has what was asked")
    }

    /// Runs `f` on the value for `key` if there is one; never inserts.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    #[inline]
    pub(crate) fn get<R>(&self, key: &K, f: impl FnOnce(&V) -> R) -> Option<R> {
        let hash = self.hasher.hash_one(key);
        let shard = &self.shards[crate::hash::shard(hash, self.shard_mask)];
        let state = shard.lock.read().unwrap_or_else(PoisonError::into_inner);
        state.table.find(hash, |(k, _)| k == key).map(|(_, v)| f(v))
    }

    /// Drops idle values on schedule, and makes room when the shard is full.
    fn make_room(
        state: &mut ShardState<K, V>,
        cap: usize,
        hasher: &crate::hash::RandomState,
        cx: &V::Context,
        now: Nanos,
    ) {
        let full = state.table.len() >= cap;
        if now >= state.next_sweep || full {
            state.table.retain(|(_, v)| !v.is_idle(cx, now));
            state.next_sweep = now.saturating_add(SWEEP_INTERVAL);
        }
        if state.table.len() >= cap {
            // Still full of live keys (a flood of distinct keys). Forget the soonest-due eighth,
            // which leaves room for the next eighth of the shard's inserts before this runs again.
            let keep = cap - cap.div_ceil(8);
            let mut dues: Vec<Nanos> = state.table.iter().map(|(_, v)| v.due(cx, now)).collect();
            let cut = dues.len() - keep;
            let (_, threshold, _) = dues.select_nth_unstable(cut - 1);
            let threshold = *threshold;
            let mut to_drop = cut;
            // Into a fresh table of the shard's size: erased in place, the forgotten values
            // would leave tombstones, and hashbrown doubles a table whose tombstones run its
            // room out while it is more than half full (a flooded shard's table grew to twice
            // the buckets its cap needs: 4,096 for 1,563 keys).
            let mut kept = HashTable::with_capacity(cap);
            for (k, v) in state.table.drain() {
                if to_drop > 0 && v.due(cx, now) <= threshold {
                    to_drop -= 1;
                } else {
                    kept.insert_unique(hasher.hash_one(&k), (k, v), |(k, _)| hasher.hash_one(k));
                }
            }
            state.table = kept;
            tracing::debug!(
                shard_cap = cap,
                forgotten = cut,
                "rate limit store full of active keys; forgot the soonest-due ones"
            );
        }
        if state.table.capacity() > 64 && state.table.len() * 4 < state.table.capacity() {
            state
                .table
                .shrink_to(state.table.len() * 2, |(k, _)| hasher.hash_one(k));
        }
    }

    /// Number of values held (a moment's snapshot; other threads may be adding or sweeping).
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock
                    .read()
                    .unwrap_or_else(PoisonError::into_inner)
                    .table
                    .len()
            })
            .sum()
    }

    /// The most values the map will hold.
    pub(crate) fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.cap).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// A value idle after a fixed time.
    #[derive(Default)]
    struct Until(AtomicU64);

    impl Expiring for Until {
        type Context = ();
        fn is_idle(&self, _: &(), now: Nanos) -> bool {
            self.0.load(Ordering::Relaxed) <= now
        }
        fn due(&self, _: &(), _: Nanos) -> Nanos {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn full_shards_drop_idle_values_first_then_the_soonest_due() {
        let map = BoundedMap::<u64, Until>::new(100);
        assert_eq!(map.capacity(), 100);
        for k in 0..100u64 {
            map.with(&k, &(), 0, |v| v.0.store(1_000 + k, Ordering::Relaxed));
        }
        assert_eq!(map.len(), 100);
        // Full: the next new key evicts the 13 soonest-due live keys.
        map.with(&1000, &(), 0, |v| v.0.store(u64::MAX, Ordering::Relaxed));
        assert_eq!(map.len(), 88);
        map.with(&0, &(), 0, |v| {
            assert_eq!(v.0.load(Ordering::Relaxed), 0, "key 0 was forgotten")
        });
        map.with(&99, &(), 0, |v| {
            assert_eq!(v.0.load(Ordering::Relaxed), 1_099, "key 99 was kept")
        });
        // Later, everything but key 1000 is idle and goes at the next sweep.
        map.with(&2000, &(), SWEEP_INTERVAL + 2_000, |_| ());
        assert_eq!(map.len(), 2);
    }

    #[test]
    fn flood_stays_within_capacity() {
        let map = BoundedMap::<u64, Until>::new(10_000);
        for k in 0..200_000u64 {
            map.with(&k, &(), 0, |v| v.0.store(u64::MAX, Ordering::Relaxed));
        }
        assert!(map.shards.len() > 1);
        assert!(
            map.len() <= map.capacity(),
            "{} > {}",
            map.len(),
            map.capacity()
        );
        assert!(map.len() > map.capacity() / 2);
    }
}
