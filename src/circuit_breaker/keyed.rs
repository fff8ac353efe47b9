//! The bounded map of a layer's per-key circuits.
//!
//! Shards of a `hashbrown::HashTable`, each behind a `crossbeam_utils::sync::ShardedLock` (readers
//! of one shard write no memory other readers read; see `backend::memory::map`). Looking up a known
//! key takes a shard's read side; a new key takes its write side, and when the shard is full, evicts
//! one circuit by the clock ("second chance") algorithm: each circuit has a `touched` flag, set by
//! lookups (only when not set already, so a busy circuit's lookups write nothing), and cleared by an
//! eviction scan as it passes. The scan evicts the first closed (or disabled) circuit it finds
//! untouched; failing that, any closed one; failing that, an open one; a forced-open circuit, an
//! operator's decision, goes last.

use std::fmt;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};

use crossbeam_utils::CachePadded;
use crossbeam_utils::sync::ShardedLock;
use hashbrown::HashTable;

use super::state::{Breaker, Config, Hooks};
use super::transition::CircuitState;

struct Slot {
    breaker: Arc<Breaker>,
    touched: AtomicBool,
}

type Shard<K> = CachePadded<ShardedLock<HashTable<(K, Slot)>>>;

/// Makes the circuit of a new key.
pub(crate) type Label<K> = fn(&K) -> Arc<str>;

pub(crate) struct CircuitMap<K> {
    shards: Box<[Shard<K>]>,
    shard_mask: u64,
    /// The most circuits one shard holds.
    cap: usize,
    hasher: crate::hash::RandomState,
    cfg: Config,
    hooks: Hooks,
    label: Label<K>,
    /// For shared circuits: the layer's sync task.
    #[cfg(feature = "redis")]
    signal: Option<Arc<super::shared::Signal>>,
}

impl<K> fmt::Debug for CircuitMap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitMap")
            .field("shards", &self.shards.len())
            .field("capacity", &(self.cap * self.shards.len()))
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> CircuitMap<K> {
    /// A map of at most `max` circuits (rounded up to a multiple of the shard count), each built
    /// with `cfg` and `hooks`, named in logs by `label`.
    pub(crate) fn new(max: usize, cfg: Config, hooks: Hooks, label: Label<K>) -> Self {
        let max = max.max(1);
        // Shards of at least 16 circuits, up to 16 shards.
        let shard_count = 1usize << (max / 16).clamp(1, 16).ilog2();
        let cap = max.div_ceil(shard_count);
        Self {
            shards: (0..shard_count)
                .map(|_| CachePadded::new(ShardedLock::new(HashTable::new())))
                .collect(),
            shard_mask: shard_count as u64 - 1,
            cap,
            hasher: crate::hash::RandomState::default(),
            cfg,
            hooks,
            label,
            #[cfg(feature = "redis")]
            signal: None,
        }
    }

    /// Makes every circuit shared through the store `signal`'s sync task talks to.
    #[cfg(feature = "redis")]
    pub(crate) fn with_signal(mut self, signal: Arc<super::shared::Signal>) -> Self {
        self.signal = Some(signal);
        self
    }

    #[inline]
    fn shard(&self, hash: u64) -> &Shard<K> {
        &self.shards[crate::hash::shard(hash, self.shard_mask)]
    }

    /// The circuit of `key`, if it has one.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<Breaker>> {
        let hash = self.hasher.hash_one(key);
        let table = self
            .shard(hash)
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        table.find(hash, |(k, _)| k == key).map(|(_, slot)| {
            if !slot.touched.load(Ordering::Relaxed) {
                slot.touched.store(true, Ordering::Relaxed);
            }
            Arc::clone(&slot.breaker)
        })
    }

    /// The circuit of `key`, made if it has none.
    #[inline]
    pub(crate) fn get_or_insert(&self, key: &K) -> Arc<Breaker> {
        if let Some(b) = self.get(key) {
            return b;
        }
        self.insert(key)
    }

    #[cold]
    fn insert(&self, key: &K) -> Arc<Breaker> {
        let hash = self.hasher.hash_one(key);
        let mut table = self
            .shard(hash)
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, slot)) = table.find(hash, |(k, _)| k == key) {
            return Arc::clone(&slot.breaker); // made by another caller meanwhile
        }
        if table.len() >= self.cap {
            self.evict_one(&mut table);
        }
        let label = Some((self.label)(key));
        #[cfg(feature = "redis")]
        let breaker = Arc::new(match &self.signal {
            Some(signal) => {
                Breaker::new_shared(self.cfg.clone(), label, self.hooks.clone(), signal)
            }
            None => Breaker::new(self.cfg.clone(), label, self.hooks.clone()),
        });
        #[cfg(not(feature = "redis"))]
        let breaker = Arc::new(Breaker::new(self.cfg.clone(), label, self.hooks.clone()));
        let slot = Slot {
            breaker: Arc::clone(&breaker),
            touched: AtomicBool::new(true),
        };
        let hasher = &self.hasher;
        table.insert_unique(hash, (key.clone(), slot), |(k, _)| hasher.hash_one(k));
        breaker
    }

    fn evict_one(&self, table: &mut HashTable<(K, Slot)>) {
        let closed = |s: &Slot| {
            matches!(
                s.breaker.state(),
                CircuitState::Closed | CircuitState::Disabled
            )
        };
        let mut victim = None;
        for (k, slot) in table.iter() {
            if closed(slot) && !slot.touched.load(Ordering::Relaxed) {
                victim = Some(k.clone());
                break;
            }
            slot.touched.store(false, Ordering::Relaxed);
        }
        let victim = victim
            .or_else(|| {
                table
                    .iter()
                    .find(|(_, s)| closed(s))
                    .map(|(k, _)| k.clone())
            })
            .or_else(|| {
                table
                    .iter()
                    .find(|(_, s)| s.breaker.state() != CircuitState::ForcedOpen)
                    .map(|(k, _)| k.clone())
            })
            .or_else(|| table.iter().next().map(|(k, _)| k.clone()));
        if let Some(key) = victim {
            let hash = self.hasher.hash_one(&key);
            if let Ok(entry) = table.find_entry(hash, |(k, _)| *k == key) {
                let ((_, slot), _) = entry.remove();
                tracing::debug!(
                    circuit = self.cfg.name,
                    key = &*slot.breaker.key.clone().unwrap_or_default(),
                    state = %slot.breaker.state(),
                    "per-key circuit evicted to make room"
                );
            }
        }
    }

    /// Every circuit, with its key.
    pub(crate) fn all(&self) -> Vec<(K, Arc<Breaker>)> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            let table = shard.read().unwrap_or_else(PoisonError::into_inner);
            out.extend(
                table
                    .iter()
                    .map(|(k, s)| (k.clone(), Arc::clone(&s.breaker))),
            );
        }
        out
    }

    /// The layer's name.
    pub(crate) fn name(&self) -> &'static str {
        self.cfg.name
    }

    /// Whether the circuits are shared through a store.
    pub(crate) fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.signal.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// How many circuits there are.
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// The most circuits the map holds.
    pub(crate) fn capacity(&self) -> usize {
        self.cap * self.shards.len()
    }
}
