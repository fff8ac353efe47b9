//! In-memory cache store: sharded hash tables under one byte budget, CLOCK eviction, lazy expiry.
//!
//! # Why not moka
//!
//! The store used to be a [moka](https://docs.rs/moka) cache. Its `get` alone (a clock read,
//! an epoch-based hash table, a read record sent to a channel and housekeeping run on the caller's
//! thread) took longer than the whole hit budget of the layer, and its insert with per-entry expiry
//! (a timer wheel) several times the miss budget; the `cache/hit_u64/moka_get` and
//! `cache/miss/moka_insert` bench rows measure it against this store in the same run. This store
//! is the rate limiter's map (`super::map`) grown into a cache: the same sharded tables, with
//! the house rule that **readers write no shared memory**, and all bookkeeping on the write path.
//!
//! # Layout
//!
//! Each shard is a `crossbeam_utils::sync::ShardedLock` (a reader-writer lock whose readers each
//! lock a slot of their own) around a dense vector of slots (the CLOCK ring) and a
//! `hashbrown::HashTable` of slot indices, keyed by the hash the [`CacheKey`] carries (never
//! computed again). A lookup takes the read side, finds the slot, sets its *referenced* bit if it
//! is not set yet (so a key hit again and again is written to once per eviction round, not once
//! per hit), and clones the entry's `Arc`.
//!
//! What users need to know (the bound, eviction, expiry) is on [`MemoryCacheStore`].

use std::fmt;
use std::mem::size_of;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;
use hashbrown::HashTable;
use tokio::time::Instant;

use super::MemoryBackend;
use crate::backend::BackendError;
use crate::cache::entry::{Freshness, Timing};
use crate::cache::{
    CacheBackend, CacheEntry, CacheKey, CacheSpec, CacheStore, FillLock, Found, LockMode, StoreOp,
};
use crate::clock::Clock;
use crate::error::ConfigError;

/// What the allocation holding an entry costs beyond its value: two reference counts, the
/// [`Timing`] and the weight.
const ENTRY_HEADER: u64 = (2 * size_of::<usize>() + size_of::<Timing>() + size_of::<u64>()) as u64;

/// The most shards a store has. Enough that two threads writing at once rarely meet.
const MAX_SHARDS: usize = 16;

/// The least budget per shard (a shard's tables are allocated in steps; tiny shards would be all
/// table and no entries).
const MIN_SHARD_BYTES: u64 = 64 * 1024;

/// How often, at most, a write to a shard sweeps it for expired entries.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The in-memory [`CacheStore`]: bounded by bytes, with CLOCK eviction and lazy expiry. Built
/// by [`MemoryBackend`] with the layer's [`max_bytes`](crate::cache::CacheBuilder::max_bytes).
///
/// # Lookups
///
/// A lookup takes one shard's read side (a `crossbeam_utils::sync::ShardedLock`, whose readers
/// each lock a slot of their own), finds the key by the hash it carries, and clones the entry's
/// `Arc`. It writes no memory other threads read, but for the entry's *referenced* bit, and that
/// only when the bit is clear (once per turn of the eviction hand, however often the key is hit).
///
/// # Bound
///
/// Every byte the store holds counts against `max_bytes`: each entry's
/// [weight](CacheEntry::weight), its key's heap bytes and the allocation that holds it, and the
/// shards' tables themselves, as allocated (slack included). [`bytes`](Self::bytes) is that sum;
/// the `cache_flood` test holds the process's real allocations to it while a flood of distinct
/// keys goes through (with weights that are honest: HTTP entries' are; in the clone mode, give a
/// [weigher](crate::cache::CacheBuilder::weigher) for values that own heap data).
///
/// # Eviction
///
/// A write that takes the store over its bound makes room in its own shard by **CLOCK** (second
/// chance): the shard's hand walks its ring of entries, clears the referenced bit of those read
/// since it last passed and evicts the first that was not read (or that has expired). Entries read
/// between two turns of the hand survive a scan of one-off keys; a new entry takes the slot the
/// hand has just freed, so it goes before entries that were read only when nothing else is left.
/// When its own shard has nothing more to give (one very large entry), the other shards give in
/// turn; an entry larger than the whole bound is not kept.
///
/// # Expiry
///
/// Lazy, on [`tokio::time`] (so paused-time tests see entries expire exactly when the layer
/// does): an entry past its [`expires_at`](crate::cache::entry::Timing::expires_at) is never
/// returned; it is dropped when the hand reaches it, when a write to its shard finds something
/// there has expired (at most once a second per shard), or by [`sync`](Self::sync). No
/// background task runs.
pub struct MemoryCacheStore<V> {
    shards: Box<[Shard<V>]>,
    shard_mask: u64,
    max_bytes: u64,
    /// Bytes held by all shards: entries and tables.
    bytes: AtomicU64,
    /// Where the next eviction from another shard starts.
    cursor: AtomicUsize,
    name: &'static str,
    #[cfg(feature = "metrics")]
    meters: StoreMeters,
}

#[repr(align(128))] // one shard per cache-line pair: no false sharing between shard locks
struct Shard<V> {
    lock: ShardedLock<Table<V>>,
}

/// One shard: a ring of slots (the CLOCK) and an index of the occupied ones by key hash.
struct Table<V> {
    index: HashTable<u32>,
    slots: Vec<Slot<V>>,
    /// Slots not in use, the most recently freed last.
    free: Vec<u32>,
    live: usize,
    hand: usize,
    /// Bytes held: the charges of live entries and the tables' allocations.
    bytes: u64,
    /// The part of `bytes` that is tables.
    table_bytes: u64,
    /// No live entry expires before this.
    soonest: Option<Instant>,
    /// Not swept for expired entries again before this.
    next_sweep: Option<Instant>,
}

struct Slot<V> {
    key: CacheKey,
    /// `None`: a free slot.
    entry: Option<CacheEntry<V>>,
    expires_at: Instant,
    charge: u32,
    /// Read since the hand last passed.
    referenced: AtomicBool,
}

/// Why an entry left the store.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// Made room (CLOCK, or too large to hold).
    Size,
    /// Past its last window.
    Expired,
}

/// The store's metric handles, registered with the recorder on first use.
#[cfg(feature = "metrics")]
#[derive(Default)]
struct StoreMeters {
    bytes: std::sync::OnceLock<metrics::Gauge>,
    evicted_size: std::sync::OnceLock<metrics::Counter>,
    evicted_expired: std::sync::OnceLock<metrics::Counter>,
}

#[cfg(feature = "metrics")]
impl StoreMeters {
    fn bytes(&self, name: &'static str, bytes: u64) {
        self.bytes
            .get_or_init(|| {
                crate::metrics::gauge(&crate::metrics::key("rampart_cache_bytes", name, &[]))
            })
            .set(bytes as f64);
    }

    fn evicted(&self, name: &'static str, cause: Cause, n: u64) {
        let (cell, reason) = match cause {
            Cause::Size => (&self.evicted_size, "size"),
            Cause::Expired => (&self.evicted_expired, "expired"),
        };
        cell.get_or_init(|| {
            crate::metrics::counter(&crate::metrics::key(
                "rampart_cache_evictions_total",
                name,
                &[("reason", reason)],
            ))
        })
        .increment(n);
    }
}

impl<V> fmt::Debug for MemoryCacheStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryCacheStore")
            .field("name", &self.name)
            .field("entries", &self.entry_count())
            .field("bytes", &self.bytes())
            .field("max_bytes", &self.max_bytes)
            .field("shards", &self.shards.len())
            .finish()
    }
}

/// What an entry is charged: its value's weight, its key's heap bytes and its allocation's
/// header (saturating at 4 GiB, far above any bound that could hold it alongside others).
fn charge_of<V>(key: &CacheKey, entry: &CacheEntry<V>) -> u64 {
    u64::from(entry.weight()) + key.heap_len() as u64 + ENTRY_HEADER
}

impl<V> Table<V> {
    fn new() -> Self {
        Self {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            hand: 0,
            bytes: 0,
            table_bytes: 0,
            soonest: None,
            next_sweep: None,
        }
    }

    /// The slot holding `key`.
    #[inline]
    fn find(&self, key: &CacheKey) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(key.hash_code(), |&i| slots[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    /// Bytes the tables have allocated.
    fn allocated(&self) -> u64 {
        (self.slots.capacity() * size_of::<Slot<V>>()
            + self.index.allocation_size()
            + self.free.capacity() * size_of::<u32>()) as u64
    }

    /// Re-reads the tables' allocations into `bytes` (and the store's `total`).
    fn recount_tables(&mut self, total: &AtomicU64) {
        let now = self.allocated();
        if now >= self.table_bytes {
            total.fetch_add(now - self.table_bytes, Ordering::AcqRel);
            self.bytes += now - self.table_bytes;
        } else {
            total.fetch_sub(self.table_bytes - now, Ordering::AcqRel);
            self.bytes -= self.table_bytes - now;
        }
        self.table_bytes = now;
    }

    /// Puts a new entry in a free slot (the one freed last: just behind the hand after an
    /// eviction) and indexes it. Returns its slot.
    fn insert(
        &mut self,
        key: CacheKey,
        entry: CacheEntry<V>,
        expires_at: Instant,
        charge: u32,
        total: &AtomicU64,
    ) -> usize {
        let hash = key.hash_code();
        let slot = Slot {
            key,
            entry: Some(entry),
            expires_at,
            charge,
            referenced: AtomicBool::new(false),
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i as usize
            }
            None => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow by a quarter, not by doubling: the slack counts against the bound.
                    self.slots.reserve_exact((self.slots.len() / 4).max(4));
                }
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let slots = &self.slots;
        self.index
            .insert_unique(hash, i as u32, |&j| slots[j as usize].key.hash_code());
        self.live += 1;
        self.bytes += u64::from(charge);
        total.fetch_add(u64::from(charge), Ordering::AcqRel);
        self.soonest = Some(self.soonest.map_or(expires_at, |s| s.min(expires_at)));
        self.recount_tables(total);
        i
    }

    /// Replaces the entry in slot `i` (same key).
    fn replace(
        &mut self,
        i: usize,
        entry: CacheEntry<V>,
        expires_at: Instant,
        charge: u32,
        total: &AtomicU64,
    ) -> CacheEntry<V> {
        let slot = &mut self.slots[i];
        let old_charge = u64::from(slot.charge);
        let old = slot.entry.replace(entry).expect("indexed slots are live");
        slot.expires_at = expires_at;
        slot.charge = charge;
        // A key written again is in demand (it was just missed or refreshed).
        *slot.referenced.get_mut() = true;
        self.bytes = self.bytes - old_charge + u64::from(charge);
        total.fetch_sub(old_charge, Ordering::AcqRel);
        total.fetch_add(u64::from(charge), Ordering::AcqRel);
        self.soonest = Some(self.soonest.map_or(expires_at, |s| s.min(expires_at)));
        old
    }

    /// Empties slot `i`: out of the index, onto the free list. Returns its key and entry.
    fn take(&mut self, i: usize, total: &AtomicU64) -> (CacheKey, CacheEntry<V>) {
        let slot = &mut self.slots[i];
        let key = std::mem::replace(&mut slot.key, CacheKey::placeholder());
        let entry = slot.entry.take().expect("indexed slots are live");
        let charge = u64::from(std::mem::take(&mut slot.charge));
        let hash = key.hash_code();
        if let Ok(found) = self.index.find_entry(hash, |&j| j as usize == i) {
            found.remove();
        }
        self.free.push(i as u32);
        self.live -= 1;
        self.bytes -= charge;
        total.fetch_sub(charge, Ordering::AcqRel);
        (key, entry)
    }

    /// One step of CLOCK: evicts the first entry from the hand on that has expired or was not
    /// read since the hand last passed (clearing the bits of those that were), never slot
    /// `keep`. `None` when there is nothing else to evict.
    fn evict_one(
        &mut self,
        now: Instant,
        keep: Option<usize>,
        total: &AtomicU64,
    ) -> Option<(CacheKey, CacheEntry<V>, Cause)> {
        if self.live <= usize::from(keep.is_some()) {
            return None;
        }
        let n = self.slots.len();
        // Within two turns every bit has been cleared once, so a victim is found.
        for _ in 0..2 * n + 1 {
            let i = self.hand;
            self.hand = if i + 1 == n { 0 } else { i + 1 };
            if Some(i) == keep {
                continue;
            }
            let slot = &mut self.slots[i];
            if slot.entry.is_none() {
                continue;
            }
            let cause = if slot.expires_at <= now {
                Cause::Expired
            } else if std::mem::take(slot.referenced.get_mut()) {
                continue; // second chance
            } else {
                Cause::Size
            };
            let (key, entry) = self.take(i, total);
            return Some((key, entry, cause));
        }
        None
    }

    /// Drops every expired entry, if any may have expired and the last sweep is far enough back
    /// (`force` skips the second condition). Returns what was dropped.
    fn sweep(
        &mut self,
        now: Instant,
        force: bool,
        total: &AtomicU64,
    ) -> Vec<(CacheKey, CacheEntry<V>)> {
        let due = self.soonest.is_some_and(|s| s <= now)
            && (force || self.next_sweep.is_none_or(|at| at <= now));
        if !due {
            return Vec::new();
        }
        self.next_sweep = Some(now + SWEEP_EVERY);
        let mut dropped = Vec::new();
        let mut soonest: Option<Instant> = None;
        for i in 0..self.slots.len() {
            let slot = &self.slots[i];
            if slot.entry.is_none() {
                continue;
            }
            let at = slot.expires_at;
            if at <= now {
                dropped.push(self.take(i, total));
            } else {
                soonest = Some(soonest.map_or(at, |s| s.min(at)));
            }
        }
        self.soonest = soonest;
        dropped
    }

    /// Gives memory back when most slots are free: moves the live ones together and rebuilds
    /// the index at their size.
    fn shrink_if_sparse(&mut self, total: &AtomicU64) {
        if self.slots.len() < 64 || self.live * 4 >= self.slots.len() {
            if self.live == 0 && self.slots.capacity() > 0 {
                self.slots = Vec::new();
                self.index = HashTable::new();
                self.free = Vec::new();
                self.hand = 0;
                self.recount_tables(total);
            }
            return;
        }
        let mut slots = Vec::with_capacity(self.live + self.live / 4 + 4);
        slots.extend(self.slots.drain(..).filter(|s| s.entry.is_some()));
        let mut index = HashTable::with_capacity(slots.len());
        for (i, slot) in slots.iter().enumerate() {
            index.insert_unique(slot.key.hash_code(), i as u32, |&j: &u32| {
                slots[j as usize].key.hash_code()
            });
        }
        self.slots = slots;
        self.index = index;
        self.free = Vec::new();
        self.hand = 0;
        self.recount_tables(total);
    }
}

impl<V: Send + Sync + 'static> MemoryCacheStore<V> {
    fn new(spec: &CacheSpec) -> Self {
        let max_bytes = spec.max_bytes;
        // Shards of at least MIN_SHARD_BYTES each, a power of two (the index is a mask).
        let wanted = (max_bytes / MIN_SHARD_BYTES).clamp(1, MAX_SHARDS as u64);
        let count = 1usize << wanted.ilog2();
        let shards = (0..count)
            .map(|_| Shard {
                lock: ShardedLock::new(Table::new()),
            })
            .collect();
        Self {
            shards,
            shard_mask: count as u64 - 1,
            max_bytes,
            bytes: AtomicU64::new(0),
            cursor: AtomicUsize::new(0),
            name: spec.name,
            #[cfg(feature = "metrics")]
            meters: StoreMeters::default(),
        }
    }
}

impl<V> MemoryCacheStore<V> {
    /// The shard of a key: the hash's middle bits (hashbrown takes the low ones for the bucket
    /// and the top seven for its tags).
    #[inline]
    fn shard_of(&self, key: &CacheKey) -> usize {
        ((key.hash_code() >> 32) & self.shard_mask) as usize
    }

    /// Bytes held: entries (their values' weights, keys and headers) and the tables that hold
    /// them. At most [`max_bytes`](Self::max_bytes) once each write has made room (writes in
    /// progress on other threads may be over by an entry each, for a moment).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// The bound on [`bytes`](Self::bytes).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Entries held (expired ones not dropped yet included; see [`sync`](Self::sync)).
    pub fn entry_count(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| s.lock.read().unwrap_or_else(PoisonError::into_inner).live as u64)
            .sum()
    }

    /// Drops every expired entry now. They go by themselves as the store is written to; tests
    /// and metrics call this for exact figures.
    pub fn sync(&self) {
        let now = Instant::now();
        for shard in self.shards.iter() {
            let mut t = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
            let dropped = t.sweep(now, true, &self.bytes);
            t.shrink_if_sparse(&self.bytes);
            drop(t);
            self.report_all(dropped, Cause::Expired);
        }
        self.report_bytes();
    }

    /// The entry under `key` unless it has expired at `now`.
    #[inline]
    fn lookup(&self, key: &CacheKey, now: Instant) -> Option<CacheEntry<V>> {
        let shard = &self.shards[self.shard_of(key)];
        let t = shard.lock.read().unwrap_or_else(PoisonError::into_inner);
        let slot = &t.slots[t.find(key)?];
        if slot.expires_at <= now {
            return None; // dropped on the write path
        }
        // Set the bit only when it is clear: a hot entry's line stays shared between readers.
        if !slot.referenced.load(Ordering::Relaxed) {
            slot.referenced.store(true, Ordering::Relaxed);
        }
        slot.entry.clone()
    }

    fn report(&self, key: &CacheKey, cause: Cause) {
        let reason = match cause {
            Cause::Size => "size",
            Cause::Expired => "expired",
        };
        tracing::trace!(cache = self.name, key = %key.for_logs(), reason, "cache entry evicted");
        #[cfg(feature = "metrics")]
        self.meters.evicted(self.name, cause, 1);
    }

    fn report_all(&self, dropped: Vec<(CacheKey, CacheEntry<V>)>, cause: Cause) {
        for (key, _) in &dropped {
            self.report(key, cause);
        }
    }

    fn report_bytes(&self) {
        #[cfg(feature = "metrics")]
        self.meters.bytes(self.name, self.bytes());
    }

    fn over(&self) -> bool {
        self.bytes.load(Ordering::Acquire) > self.max_bytes
    }

    /// Evicts from the shards other than `home`, one lock at a time, until the store is within
    /// its bound or they have nothing left.
    fn evict_elsewhere(&self, home: usize, now: Instant) {
        let n = self.shards.len();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..n {
            let s = (start + k) % n;
            if s == home {
                continue;
            }
            let mut t = self.shards[s]
                .lock
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            while self.over() {
                match t.evict_one(now, None, &self.bytes) {
                    Some((key, _entry, cause)) => self.report(&key, cause),
                    None => break,
                }
            }
            t.shrink_if_sparse(&self.bytes);
            drop(t);
            if !self.over() {
                return;
            }
        }
    }

    /// Removes the entries whose key `remove` picks, from every shard.
    fn remove_where(&self, mut remove: impl FnMut(&CacheKey) -> bool) {
        for shard in self.shards.iter() {
            let mut t = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
            let mut dropped = Vec::new();
            for i in 0..t.slots.len() {
                if t.slots[i].entry.is_some() && remove(&t.slots[i].key) {
                    dropped.push(t.take(i, &self.bytes));
                }
            }
            t.shrink_if_sparse(&self.bytes);
            drop(t);
            drop(dropped); // values are dropped outside the lock
        }
        self.report_bytes();
    }
}

impl<V: Send + Sync + 'static> CacheStore<V> for MemoryCacheStore<V> {
    type Future<T: Send + 'static> = std::future::Pending<Result<T, BackendError>>;

    #[inline]
    fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
        StoreOp::Ready(Ok(self.lookup(key, Instant::now())))
    }

    #[inline]
    fn get_at(&self, key: &CacheKey, now: Instant) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
        StoreOp::Ready(Ok(self.lookup(key, now)))
    }

    /// One process's store takes no lock (the layer's single flight is its lock), but answers a
    /// fresh entry all the same, as a shared store does: a miss's lookup and its joining the
    /// flight are two steps, and another request's fill may have stored the entry and ended its
    /// flight between them.
    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<V>, Self::Future<FillLock<V>>> {
        let _ = hold;
        if mode == LockMode::UnlessFresh {
            let now = Instant::now();
            if let Some(entry) = self.lookup(key, now)
                && entry.freshness(now) == Freshness::Fresh
            {
                return StoreOp::Ready(Ok(FillLock::Fresh(entry)));
            }
        }
        StoreOp::Ready(Ok(FillLock::NotShared))
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), Self::Future<()>> {
        // The layer stores entries as it makes them, stamped with the time: no second clock read
        // on the miss path. An entry stamped earlier only makes this an earlier "now", which
        // drops nothing before its time.
        let now = entry.timing().stored_at;
        let charge = charge_of(&key, &entry);
        let expires_at = entry.timing().expires_at();
        if expires_at <= now || charge > self.max_bytes {
            // Of no use, or more than the whole store may hold: whatever was there goes too
            // (it is older than what was just fetched).
            let cause = if expires_at <= now {
                Cause::Expired
            } else {
                Cause::Size
            };
            let _ = self.invalidate(&key);
            self.report(&key, cause);
            return StoreOp::Ready(Ok(()));
        }
        let charge = u32::try_from(charge).unwrap_or(u32::MAX);
        let home = self.shard_of(&key);
        let mut t = self.shards[home]
            .lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let expired = t.sweep(now, false, &self.bytes);
        let existing = t.find(&key);
        let old_charge = existing.map_or(0, |i| u64::from(t.slots[i].charge));
        // Usually one victim: kept out of a vector so the common case allocates nothing.
        let mut victim = None;
        let mut more = Vec::new();
        let mut evict = |t: &mut Table<V>, keep: Option<usize>, room: u64| {
            while self.bytes.load(Ordering::Acquire) + room > self.max_bytes {
                match t.evict_one(now, keep, &self.bytes) {
                    Some(v) if victim.is_none() => victim = Some(v),
                    Some(v) => more.push(v),
                    None => break,
                }
            }
        };
        // Room first, so that a new entry takes the slot the hand has just freed (right behind
        // it: a whole turn before the hand comes back), and the tables need not grow.
        evict(
            &mut t,
            existing,
            u64::from(charge).saturating_sub(old_charge),
        );
        let (slot, replaced) = match existing {
            Some(i) => {
                let old = t.replace(i, entry.clone(), expires_at, charge, &self.bytes);
                (i, Some(old))
            }
            None => (
                t.insert(key.clone(), entry.clone(), expires_at, charge, &self.bytes),
                None,
            ),
        };
        // The tables grew, or other threads wrote meanwhile.
        evict(&mut t, Some(slot), 0);
        drop(t);
        // Values are dropped (and evictions reported) outside the lock.
        drop(replaced);
        self.report_all(expired, Cause::Expired);
        for (key, _, cause) in victim.iter().chain(&more) {
            self.report(key, *cause);
        }
        drop((victim, more));
        if self.over() {
            // Its own shard had nothing more to give (a large entry): the others give.
            self.evict_elsewhere(home, now);
            if self.over() {
                // Even so, it does not fit beside the tables: it goes too.
                let mut t = self.shards[home]
                    .lock
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                let ours = t
                    .find(&key)
                    .filter(|&i| t.slots[i].entry.as_ref().is_some_and(|e| e.ptr_eq(&entry)));
                let taken = ours.map(|i| t.take(i, &self.bytes));
                t.shrink_if_sparse(&self.bytes);
                drop(t);
                if taken.is_some() {
                    self.report(&key, Cause::Size);
                }
            }
        }
        self.report_bytes();
        StoreOp::Ready(Ok(()))
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), Self::Future<()>> {
        let mut t = self.shards[self.shard_of(key)]
            .lock
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let taken = t.find(key).map(|i| t.take(i, &self.bytes));
        if taken.is_some() {
            t.shrink_if_sparse(&self.bytes);
        }
        drop(t);
        drop(taken);
        self.report_bytes();
        StoreOp::Ready(Ok(()))
    }

    /// Walks every entry and removes those under `prefix`: O(entries), and exact.
    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), Self::Future<()>> {
        self.remove_where(|key| key.starts_with(prefix));
        StoreOp::Ready(Ok(()))
    }

    fn clear(&self) -> StoreOp<(), Self::Future<()>> {
        for shard in self.shards.iter() {
            let mut t = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
            let old = std::mem::replace(&mut *t, Table::new());
            self.bytes.fetch_sub(old.bytes, Ordering::AcqRel);
            drop(t);
            drop(old);
        }
        self.report_bytes();
        StoreOp::Ready(Ok(()))
    }
}

impl<V, C> CacheBackend<V> for MemoryBackend<C>
where
    V: Send + Sync + 'static,
    C: Clock,
{
    type Store = MemoryCacheStore<V>;

    fn cache_store(&self, spec: &CacheSpec) -> Result<Self::Store, ConfigError> {
        Ok(MemoryCacheStore::new(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Lifetimes;

    fn store(max_bytes: u64) -> MemoryCacheStore<u64> {
        MemoryCacheStore::new(&CacheSpec {
            name: "test",
            max_bytes,
        })
    }

    fn entry(value: u64, weight: usize, ttl: Duration) -> CacheEntry<u64> {
        CacheEntry::new(
            value,
            Timing::new(Instant::now(), Lifetimes::ttl(ttl)),
            weight,
        )
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn get(s: &MemoryCacheStore<u64>, key: u64) -> Option<u64> {
        match s.get(&CacheKey::from(key)) {
            StoreOp::Ready(Ok(found)) => found.map(|e| *e.value()),
            _ => unreachable!("the memory store answers at once"),
        }
    }

    fn put(s: &MemoryCacheStore<u64>, key: u64, weight: usize) {
        let _ = s.put(CacheKey::from(key), entry(key, weight, HOUR));
    }

    #[tokio::test(start_paused = true)]
    async fn the_lock_answers_a_fresh_entry_unless_forced_and_never_a_stale_one() {
        let s = store(1 << 20);
        let lock = |key: u64, mode| match s.lock(&CacheKey::from(key), HOUR, mode) {
            StoreOp::Ready(Ok(lock)) => lock,
            _ => unreachable!("the memory store answers at once"),
        };
        assert!(matches!(
            lock(1, LockMode::UnlessFresh),
            FillLock::NotShared
        ));
        let lifetimes = Lifetimes {
            ttl: Duration::from_secs(10),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(10),
        };
        let fresh = CacheEntry::new(1, Timing::new(Instant::now(), lifetimes), 8);
        let _ = s.put(CacheKey::from(1u64), fresh);
        assert!(matches!(
            lock(1, LockMode::UnlessFresh),
            FillLock::Fresh(e) if *e.value() == 1
        ));
        assert!(matches!(lock(1, LockMode::Always), FillLock::NotShared));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(get(&s, 1), Some(1), "stale, still stored");
        assert!(matches!(
            lock(1, LockMode::UnlessFresh),
            FillLock::NotShared
        ));
    }

    #[test]
    fn a_flood_of_keys_stays_within_the_bound_tables_included() {
        let s = store(32 * 1024);
        assert_eq!(s.shards.len(), 1);
        for k in 0..10_000 {
            put(&s, k, 100);
            assert!(
                s.bytes() <= s.max_bytes(),
                "{} > {}",
                s.bytes(),
                s.max_bytes()
            );
        }
        let held = s.entry_count();
        // An entry is charged 100 + its header; a slot and an index bucket come on top.
        assert!(held > 80 && held < 32 * 1024 / 100, "{held} entries held");
        assert_eq!(get(&s, 9_999), Some(9_999), "the newest entry is kept");
        let tables = s.shards[0].lock.read().unwrap().table_bytes;
        let charges: u64 = held * (100 + ENTRY_HEADER);
        assert_eq!(
            s.bytes(),
            tables + charges,
            "bytes are the entries' charges and the tables"
        );
    }

    #[test]
    fn entries_read_since_the_hand_passed_survive_a_scan_of_one_off_keys() {
        let s = store(32 * 1024);
        let hot: Vec<u64> = (1_000_000..1_000_010).collect();
        for &k in &hot {
            put(&s, k, 100);
        }
        for k in 0..5_000 {
            put(&s, k, 100);
            for &h in &hot {
                assert_eq!(
                    get(&s, h),
                    Some(h),
                    "hot key {h} evicted after {k} one-off keys"
                );
            }
        }
        // Keys that are not read go: the oldest one-off keys are gone.
        assert_eq!(get(&s, 0), None);
    }

    #[test]
    fn a_new_entry_has_a_whole_turn_of_the_hand_to_be_read() {
        let s = store(32 * 1024);
        for k in 0..1_000 {
            put(&s, k, 100);
        }
        // Once full, each insert evicts one entry: the oldest, not the one inserted just before
        // (which took the slot the hand had just freed). Looked at without being marked read.
        let held = |k: u64| {
            s.shards[0]
                .lock
                .read()
                .unwrap()
                .find(&CacheKey::from(k))
                .is_some()
        };
        let count = s.entry_count();
        for k in 1_000..3_000 {
            put(&s, k, 100);
            assert!(held(k - 1) && held(k), "{k}");
            assert!(!held(k - count), "{k}: the oldest went");
        }
    }

    #[test]
    fn a_large_entry_takes_room_from_other_shards_and_one_too_large_is_not_kept() {
        let s = store(4 * 1024 * 1024);
        assert!(s.shards.len() > 1);
        for k in 0..30_000 {
            put(&s, k, 100);
        }
        assert!(s.bytes() <= s.max_bytes());
        // Most of the store, in one entry: its own shard cannot give that much.
        put(&s, 7, 3 * 1024 * 1024);
        assert_eq!(get(&s, 7), Some(7));
        assert!(s.bytes() <= s.max_bytes(), "{}", s.bytes());
        // More than the store may hold: not kept, and the older entry under its key goes.
        put(&s, 7, 5 * 1024 * 1024);
        assert_eq!(get(&s, 7), None);
        assert!(s.bytes() <= s.max_bytes());
    }

    #[test]
    fn replacing_an_entry_recharges_it() {
        let s = store(1024 * 1024);
        put(&s, 1, 100);
        let one = s.bytes();
        put(&s, 1, 1_100);
        assert_eq!(s.entry_count(), 1);
        assert_eq!(s.bytes(), one + 1_000);
        put(&s, 1, 100);
        assert_eq!(s.bytes(), one);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_never_returned_and_are_dropped_on_writes_and_sync() {
        let s = store(64 * 1024);
        assert_eq!(s.shards.len(), 1);
        let _ = s.put(CacheKey::from(1u64), entry(1, 100, Duration::from_secs(10)));
        let _ = s.put(
            CacheKey::from(2u64),
            entry(2, 100, Duration::from_secs(100)),
        );
        assert_eq!(get(&s, 1), Some(1));
        let at = Instant::now() + Duration::from_secs(10);
        assert!(matches!(
            s.get_at(&CacheKey::from(1u64), at),
            StoreOp::Ready(Ok(None))
        ));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(get(&s, 1), None, "expired: not returned");
        assert_eq!(s.entry_count(), 2, "but still held until a write or a sync");
        // A write to its shard sweeps it.
        put(&s, 3, 100);
        assert_eq!(s.entry_count(), 2);
        assert_eq!(get(&s, 2), Some(2));
        tokio::time::advance(Duration::from_secs(90)).await;
        s.sync();
        assert_eq!(s.entry_count(), 1, "entry 2 expired and went at the sync");
        assert_eq!(get(&s, 3), Some(3));
    }

    #[test]
    fn invalidation_by_key_prefix_and_all_gives_the_memory_back() {
        let s = store(4 * 1024 * 1024);
        for k in 0..2_000u64 {
            let key = CacheKey::from(format!("{}:{k}", if k % 2 == 0 { "even" } else { "odd" }));
            let _ = s.put(key, entry(k, 100, HOUR));
        }
        assert_eq!(s.entry_count(), 2_000);
        let _ = s.invalidate(&CacheKey::from("even:0"));
        assert_eq!(s.entry_count(), 1_999);
        let _ = s.invalidate_prefix(b"odd:");
        assert_eq!(s.entry_count(), 999);
        let tables: u64 = s
            .shards
            .iter()
            .map(|sh| sh.lock.read().unwrap().table_bytes)
            .sum();
        // Every key here is inline: no heap bytes of its own.
        assert_eq!(s.bytes(), tables + 999 * (100 + ENTRY_HEADER));
        let _ = s.clear();
        assert_eq!(s.entry_count(), 0);
        assert_eq!(s.bytes(), 0, "cleared: the tables are freed too");
        // Still usable.
        put(&s, 5, 100);
        assert_eq!(get(&s, 5), Some(5));
    }
}
