//! One shard of the in-memory cache store: a ring of slots swept by the CLOCK hand, an index of
//! the occupied ones by key hash, an index of the variant keys by their base, and the bytes they
//! hold.

use std::mem::size_of;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::sync::ShardedLock;
use hashbrown::HashTable;
use tokio::time::Instant;

use crate::cache::entry::Timing;
use crate::cache::{CacheEntry, CacheKey};

/// What the allocation holding an entry costs beyond its value: two reference counts, the
/// [`Timing`] and the weight.
pub(super) const ENTRY_HEADER: u64 =
    (2 * size_of::<usize>() + size_of::<Timing>() + size_of::<u64>()) as u64;

/// How often, at most, a write to a shard sweeps it for expired entries.
pub(super) const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[repr(align(128))] // one shard per cache-line pair: no false sharing between shard locks
pub(super) struct Shard<V> {
    pub(super) lock: ShardedLock<Table<V>>,
}

/// One shard: a ring of slots (the CLOCK) and an index of the occupied ones by key hash.
pub(super) struct Table<V> {
    pub(super) index: HashTable<u32>,
    /// The slots whose key has a newline, by the hash of the bytes before it (their
    /// [`variant_base`]): the variants of one resource, as [`HttpKey`](crate::cache::HttpKey)
    /// writes them (`GET /path\nfield=value...`), found without walking the shard when a write
    /// invalidates them.
    pub(super) variants: HashTable<u32>,
    pub(super) slots: Vec<Slot<V>>,
    /// Slots not in use, the most recently freed last.
    pub(super) free: Vec<u32>,
    pub(super) live: usize,
    pub(super) hand: usize,
    /// Bytes held: the charges of live entries and the tables' allocations.
    pub(super) bytes: u64,
    /// The part of `bytes` that is tables.
    pub(super) table_bytes: u64,
    /// No live entry expires before this.
    pub(super) soonest: Option<Instant>,
    /// Not swept for expired entries again before this.
    pub(super) next_sweep: Option<Instant>,
}

pub(super) struct Slot<V> {
    pub(super) key: CacheKey,
    /// `None`: a free slot.
    pub(super) entry: Option<CacheEntry<V>>,
    pub(super) expires_at: Instant,
    pub(super) charge: u32,
    /// Read since the hand last passed.
    pub(super) referenced: AtomicBool,
}

/// Why an entry left the store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Cause {
    /// Made room (CLOCK, or too large to hold).
    Size,
    /// Past its last window.
    Expired,
}

/// What an entry is charged: its value's weight, its key's heap bytes and its allocation's
/// header (saturating at 4 GiB, far above any bound that could hold it alongside others).
pub(super) fn charge_of<V>(key: &CacheKey, entry: &CacheEntry<V>) -> u64 {
    u64::from(entry.weight()) + key.heap_len() as u64 + ENTRY_HEADER
}

/// The bytes of `key` before its first newline, when it has one: what the variants of a
/// resource share (`GET /path` in `GET /path\naccept=...`). A key starting with `base\n`, where
/// `base` has no newline, has exactly `base` as its variant base.
#[inline]
pub(super) fn variant_base(key: &[u8]) -> Option<&[u8]> {
    let at = key.iter().position(|&b| b == b'\n')?;
    Some(&key[..at])
}

/// The hash a variant base is indexed by (the keys' own per-process seeded hasher).
pub(super) fn base_hash(base: &[u8]) -> u64 {
    crate::cache::key::hash_bytes(base)
}

/// The hash of the variant base of the key in `slot` (a slot in the variants index has one).
fn slot_base_hash<V>(slot: &Slot<V>) -> u64 {
    base_hash(variant_base(slot.key.as_bytes()).unwrap_or_default())
}

impl<V> Table<V> {
    pub(super) fn new() -> Self {
        Self {
            index: HashTable::new(),
            variants: HashTable::new(),
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
    pub(super) fn find(&self, key: &CacheKey) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(key.hash_code(), |&i| slots[i as usize].key == *key)
            .map(|&i| i as usize)
    }

    /// Bytes the tables have allocated.
    pub(super) fn allocated(&self) -> u64 {
        (self.slots.capacity() * size_of::<Slot<V>>()
            + self.index.allocation_size()
            + self.variants.allocation_size()
            + self.free.capacity() * size_of::<u32>()) as u64
    }

    /// Re-reads the tables' allocations into `bytes` (and the store's `total`).
    pub(super) fn recount_tables(&mut self, total: &AtomicU64) {
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
    pub(super) fn insert(
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
        if let Some(base) = variant_base(slots[i].key.as_bytes()) {
            self.variants
                .insert_unique(base_hash(base), i as u32, |&j| {
                    slot_base_hash(&slots[j as usize])
                });
        }
        self.live += 1;
        self.bytes += u64::from(charge);
        total.fetch_add(u64::from(charge), Ordering::AcqRel);
        self.soonest = Some(self.soonest.map_or(expires_at, |s| s.min(expires_at)));
        self.recount_tables(total);
        i
    }

    /// Replaces the entry in slot `i` (same key).
    pub(super) fn replace(
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
    pub(super) fn take(&mut self, i: usize, total: &AtomicU64) -> (CacheKey, CacheEntry<V>) {
        let slot = &mut self.slots[i];
        let key = std::mem::replace(&mut slot.key, CacheKey::placeholder());
        let entry = slot.entry.take().expect("indexed slots are live");
        let charge = u64::from(std::mem::take(&mut slot.charge));
        let hash = key.hash_code();
        if let Ok(found) = self.index.find_entry(hash, |&j| j as usize == i) {
            found.remove();
        }
        if let Some(base) = variant_base(key.as_bytes())
            && let Ok(found) = self
                .variants
                .find_entry(base_hash(base), |&j| j as usize == i)
        {
            found.remove();
        }
        self.free.push(i as u32);
        self.live -= 1;
        self.bytes -= charge;
        total.fetch_sub(charge, Ordering::AcqRel);
        (key, entry)
    }

    /// The slots of the variants of `base` (a base with no newline, whose [`base_hash`] is
    /// `hash`): the keys starting with `base\n`. Proportional to their number, not to the
    /// shard's.
    pub(super) fn variants_of<'a>(
        &'a self,
        base: &'a [u8],
        hash: u64,
    ) -> impl Iterator<Item = usize> + 'a {
        self.variants
            .iter_hash(hash)
            .map(|&j| j as usize)
            .filter(move |&j| variant_base(self.slots[j].key.as_bytes()) == Some(base))
    }

    /// One step of CLOCK: evicts the first entry from the hand on that has expired or was not
    /// read since the hand last passed (clearing the bits of those that were), never slot
    /// `keep`. `None` when there is nothing else to evict.
    pub(super) fn evict_one(
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
    pub(super) fn sweep(
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
    pub(super) fn shrink_if_sparse(&mut self, total: &AtomicU64) {
        if self.slots.len() < 64 || self.live * 4 >= self.slots.len() {
            if self.live == 0 && self.slots.capacity() > 0 {
                self.slots = Vec::new();
                self.index = HashTable::new();
                self.variants = HashTable::new();
                self.free = Vec::new();
                self.hand = 0;
                self.recount_tables(total);
            }
            return;
        }
        let mut slots = Vec::with_capacity(self.live + self.live / 4 + 4);
        slots.extend(self.slots.drain(..).filter(|s| s.entry.is_some()));
        let mut index = HashTable::with_capacity(slots.len());
        let mut variants = HashTable::new();
        for (i, slot) in slots.iter().enumerate() {
            index.insert_unique(slot.key.hash_code(), i as u32, |&j: &u32| {
                slots[j as usize].key.hash_code()
            });
            if let Some(base) = variant_base(slot.key.as_bytes()) {
                variants.insert_unique(base_hash(base), i as u32, |&j: &u32| {
                    slot_base_hash(&slots[j as usize])
                });
            }
        }
        self.slots = slots;
        self.index = index;
        self.variants = variants;
        self.free = Vec::new();
        self.hand = 0;
        self.recount_tables(total);
    }
}
