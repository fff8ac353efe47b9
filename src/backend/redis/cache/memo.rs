//! The store's memo: the Redis names and last decoded entries of recently used keys, so that a
//! hit on a hot key neither hashes its key nor decodes its entry again.

use super::*;

/// How many keys the store remembers the Redis name and last decoded entry of.
pub(super) const MEMO_SLOTS: usize = 128;

/// The largest entry (in bytes, in Redis) whose decoding is remembered.
pub(super) const MEMO_MAX_BYTES: usize = 16 * 1024;

/// The last Redis name and decoded entry of a few keys (direct-mapped by the key's hash), so that
/// a hit on a hot key neither hashes the key again nor decodes bytes it has already decoded: the
/// bytes Redis answers are compared with those remembered (whatever has happened in Redis since,
/// the same bytes decode to the same entry). At most [`MEMO_SLOTS`] keys, entries up to
/// [`MEMO_MAX_BYTES`]: 2 MiB of remembered bytes at most.
pub(super) struct Memo<V> {
    pub(super) slots: Box<[MemoSlot<V>]>,
    pub(super) hasher: foldhash::fast::FixedState,
}

pub(super) type MemoSlot<V> = std::sync::Mutex<Option<Arc<Memoized<V>>>>;

pub(super) struct Memoized<V> {
    pub(super) key: CacheKey,
    pub(super) name: Box<[u8]>,
    /// `GET <name>`, made once: a hit on a remembered key sends it as it is. (Made per hit, the
    /// command and its growing buffers were about 860 instructions of the `instructions` bench's
    /// `redis64/rampart_cache_hit` row: `redis::cmd`, `write_arg` and the drop.)
    pub(super) get: redis::Cmd,
    pub(super) seen: Option<Seen<V>>,
}

impl<V> Memoized<V> {
    pub(super) fn new(key: CacheKey, name: Box<[u8]>, seen: Option<Seen<V>>) -> Self {
        Self {
            key,
            get: get_command(&name),
            name,
            seen,
        }
    }
}

/// `GET <name>`, its buffers sized at once.
pub(super) fn get_command(name: &[u8]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(2, 3 + name.len());
    cmd.arg("GET").arg(name);
    cmd
}

/// Bytes read at a key and what they decoded to.
pub(super) struct Seen<V> {
    pub(super) bytes: Box<[u8]>,
    pub(super) entry: CacheEntry<V>,
    /// The wall clock minus tokio's, in milliseconds, when they were decoded: an entry's times
    /// are `Instant`s, right only while this holds.
    pub(super) mapping: i128,
}

impl<V> Memo<V> {
    pub(super) fn new() -> Self {
        Self {
            slots: (0..MEMO_SLOTS)
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    pub(super) fn slot(&self, key: &CacheKey) -> &MemoSlot<V> {
        use std::hash::BuildHasher;
        &self.slots[self.hasher.hash_one(key) as usize % MEMO_SLOTS]
    }

    pub(super) fn find(&self, key: &CacheKey) -> Option<Arc<Memoized<V>>> {
        let slot = self
            .slot(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().filter(|m| m.key == *key).cloned()
    }

    pub(super) fn remember(&self, memo: Memoized<V>) {
        let slot = self.slot(&memo.key);
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(memo));
    }
}
