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
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;
use tokio::time::Instant;

use super::MemoryBackend;
use crate::backend::BackendError;
use crate::cache::entry::Freshness;
use crate::cache::{
    CacheBackend, CacheEntry, CacheKey, CacheSpec, CacheStore, FillLock, Found, LockMode, StoreOp,
};
use crate::clock::Clock;
use crate::error::ConfigError;

use self::table::{Cause, Shard, Table, charge_of};

mod table;

/// The most shards a store has. Enough that two threads writing at once rarely meet.
const MAX_SHARDS: usize = 16;

/// The least budget per shard (a shard's tables are allocated in steps; tiny shards would be all
/// table and no entries).
const MIN_SHARD_BYTES: u64 = 64 * 1024;

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
        crate::hash::shard(key.hash_code(), self.shard_mask)
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
    ///
    /// Inlined into `get` and `get_at`, themselves inlined into the layer's `call`, whatever the
    /// compiler would choose: left to it, an unrelated change once kept `get_at` out of line
    /// (returning the whole `StoreOp` through memory) and the hit cost 29 instructions more;
    /// kept out of line itself, hashbrown's `find` was no longer inlined into it.
    /// `INSTRUCTIONS_ONLY=1 cargo bench --bench instructions --all-features --
    /// u64/rampart_cache_hit`: +485 left to the compiler, +476 out of line, +465 inlined (the
    /// default-features bench, `benches/default_features`: +455 out of line, +441 inlined).
    #[inline(always)]
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

    /// Removes the variants of `base` (the keys starting with `base\n`; `base` has no newline)
    /// from every shard. A shard is looked at under its read side first, and written to only
    /// if it holds some: a write's invalidation does not stall the readers of shards it has
    /// nothing to take from.
    fn remove_variants(&self, base: &[u8]) {
        let hash = table::base_hash(base);
        let mut removed = false;
        for shard in self.shards.iter() {
            let t = shard.lock.read().unwrap_or_else(PoisonError::into_inner);
            let any = !t.variants.is_empty() && t.variants_of(base, hash).next().is_some();
            drop(t);
            if !any {
                continue;
            }
            let mut t = shard.lock.write().unwrap_or_else(PoisonError::into_inner);
            let found: Vec<usize> = t.variants_of(base, hash).collect();
            let dropped: Vec<_> = found.into_iter().map(|i| t.take(i, &self.bytes)).collect();
            t.shrink_if_sparse(&self.bytes);
            drop(t);
            removed |= !dropped.is_empty();
            drop(dropped); // values are dropped outside the lock
        }
        if removed {
            self.report_bytes();
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

    #[inline(always)]
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

    /// Removes the entries under `prefix`, exactly. A prefix whose only newline ends it (`GET
    /// /path\n`: the variants of a resource, which a write invalidates) is looked up in each
    /// shard's index of variants, in time proportional to their number; any other prefix walks
    /// every entry.
    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), Self::Future<()>> {
        match prefix.strip_suffix(b"\n") {
            Some(base) if !base.contains(&b'\n') => self.remove_variants(base),
            _ => self.remove_where(|key| key.starts_with(prefix)),
        }
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
mod tests;
