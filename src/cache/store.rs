//! Where cached responses live: the [`CacheStore`] trait, and the backends that build stores.
//!
//! The in-memory store ([`MemoryCacheStore`](crate::backend::memory::MemoryCacheStore))
//! answers every operation at once with [`StoreOp::Ready`], so the hit path allocates nothing and
//! never yields. A store that does I/O (Redis) answers
//! [`StoreOp::Pending`] with a future; the layer then waits for it in the response future (lookups)
//! or in a spawned task (writes after a miss), and treats a store error as a miss: a cache that is
//! unavailable never fails a request.
//!
//! # What a shared store must do
//!
//! - Carry [`CacheEntry`] values with their [`Timing`](super::entry::Timing): a store may drop an
//!   entry at [`expires_at`](super::entry::Timing::expires_at) (Redis: `PX`), never earlier than
//!   its stale windows need. An entry it cannot decode (old format, corrupt, foreign) is a miss
//!   (`Ok(None)`), not an error and never a panic.
//! - Invalidate one key, every key with a prefix, or everything, so that no later `get` returns
//!   an entry stored before the invalidation.
//! - Optionally take a short **fill lock** per key ([`lock`](CacheStore::lock)), so that of many
//!   replicas missing the same key at once only one calls its upstream (Redis: `SET NX PX`). The
//!   layer already merges concurrent misses within a process; stores used by one process only
//!   need no lock, and answer [`FillLock::NotShared`]. The layer takes it when it leads a fill (a
//!   miss, a background refresh) and releases it when the fill ends, however it ends: after the
//!   entry is written when the fill stores one ([`put_locked`](CacheStore::put_locked)).
//! - In the same atomic step as taking the lock, look for a fresh entry under the key (unless the
//!   fill is a forced refresh, [`LockMode::Always`]): when there is one, answer it
//!   ([`FillLock::Fresh`]) and take no lock. A miss's lookup and its lock are two steps (two round
//!   trips to Redis); another replica may store the entry and release the lock between them, and
//!   only a check made with the lock tells this replica not to call its upstream again.
//!
//! A replica that finds the lock [held elsewhere](FillLock::HeldElsewhere) checks the store for
//! the other's entry, and tries the lock again, every few milliseconds for up to
//! [`fill_lock`](super::CacheBuilder::fill_lock)'s wait: it serves the entry when it appears (from
//! its check, or from the lock's answer), leads the fill itself if the lock comes free without one
//! (the holder's call failed, or its lock lapsed), and calls through when the wait is over. With a
//! shared store only the lock's holder stores: a call made without it (the wait ran out, or the
//! lock could not be asked for) answers its requests but is not written. A background refresh is
//! left to the holder.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::entry::CacheEntry;
use super::key::CacheKey;
use crate::backend::BackendError;
use crate::error::ConfigError;

/// What a lookup finds: an entry, or nothing.
pub type Found<V> = Option<CacheEntry<V>>;

pub use crate::backend::StoreOp;

/// The answer to [`CacheStore::lock`].
#[derive(Clone, Debug)]
pub enum FillLock<V> {
    /// The store is not shared between processes: no lock is needed (the layer's own
    /// single-flight already lets one call through per key).
    NotShared,
    /// This process holds the lock for the key, identified by this token (pass it to
    /// [`unlock`](CacheStore::unlock)); it expires by itself after the hold time.
    Acquired(u64),
    /// Another process is filling the key: wait for its entry, then call through if none comes.
    HeldElsewhere,
    /// A fresh entry is stored under the key (asked with [`LockMode::UnlessFresh`]): no lock was
    /// taken; serve this entry instead of filling the key.
    Fresh(CacheEntry<V>),
}

/// How [`CacheStore::lock`] treats an entry already stored under the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LockMode {
    /// A fill of a key with no fresh entry (a miss, the refresh of a stale entry): if a fresh
    /// entry is stored when the lock is asked for, answer it ([`FillLock::Fresh`]) and take no
    /// lock. An entry is fresh while the time is before its
    /// [`fresh_until`](super::entry::Timing::fresh_until); a stale one (in its
    /// stale-while-revalidate or stale-if-error window) does not count.
    UnlessFresh,
    /// A forced refresh (a request with `Cache-Control: no-cache`): take the lock whatever is
    /// stored.
    Always,
}

/// Storage of cache entries holding values of type `V`.
///
/// A store is built for one layer by a [`CacheBackend`] and shared (in an `Arc`) by every clone
/// of the layer and every service it makes.
pub trait CacheStore<V: Send + Sync + 'static>: Send + Sync + 'static {
    /// The future of an operation that needs I/O.
    type Future<T: Send + 'static>: Future<Output = Result<T, BackendError>> + Send + 'static;

    /// The entry stored under `key`, if any. Entries that are expired or cannot be read are
    /// `Ok(None)`.
    fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, Self::Future<Found<V>>>;

    /// [`get`](Self::get), for a caller that has just read the time: entries expired at `now`
    /// are `Ok(None)`. The layer's hit path calls this with the instant it judges freshness by,
    /// so that a store which checks expiry itself (the in-memory one) need not read the clock
    /// again. The default calls `get`.
    #[inline]
    fn get_at(&self, key: &CacheKey, now: Instant) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
        let _ = now;
        self.get(key)
    }

    /// Stores `entry` under `key`, replacing what was there.
    fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), Self::Future<()>>;

    /// Removes the entry under `key`.
    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), Self::Future<()>>;

    /// Removes every entry whose key starts with `prefix`.
    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), Self::Future<()>>;

    /// Removes every entry.
    fn clear(&self) -> StoreOp<(), Self::Future<()>>;

    /// Takes the fill lock for `key` for at most `hold`, for stores shared by several processes.
    ///
    /// With [`LockMode::UnlessFresh`], a store whose lock is shared answers the fresh entry stored
    /// under `key` instead ([`FillLock::Fresh`]), if there is one, judged in the same atomic step
    /// as the lock: the layer's lookup and its lock are two steps, and another process may store
    /// the entry and release the lock between them. (Were the lock taken then, this process
    /// would call its upstream for an entry already there.)
    ///
    /// The default answers [`FillLock::NotShared`] (a store of one process: the layer's
    /// single flight is its lock).
    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<V>, Self::Future<FillLock<V>>> {
        let _ = (key, hold, mode);
        StoreOp::Ready(Ok(FillLock::NotShared))
    }

    /// Releases a lock taken by [`lock`](Self::lock) (only if `token` still holds it).
    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), Self::Future<()>> {
        let _ = (key, token);
        StoreOp::Ready(Ok(()))
    }

    /// Ends a fill that holds the lock `token` for `key`: stores `entry` and releases the lock, the
    /// release taking effect no earlier than the write (were it the other way round, another
    /// process could find the lock free and the entry missing, and fill the key again). A store
    /// may decline to store, answering `Ok`, when it knows the key was invalidated after the lock
    /// was taken (the answer may predate the invalidation).
    ///
    /// `None` (the default) means the store has no such combined operation: the layer then calls
    /// [`put`](Self::put), and [`unlock`](Self::unlock) once the put has completed.
    fn put_locked(
        &self,
        key: &CacheKey,
        entry: &CacheEntry<V>,
        token: u64,
    ) -> Option<StoreOp<(), Self::Future<()>>> {
        let _ = (key, entry, token);
        None
    }
}

impl<V: Send + Sync + 'static, S: CacheStore<V>> CacheStore<V> for Arc<S> {
    type Future<T: Send + 'static> = S::Future<T>;

    #[inline]
    fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
        (**self).get(key)
    }

    #[inline]
    fn get_at(&self, key: &CacheKey, now: Instant) -> StoreOp<Found<V>, Self::Future<Found<V>>> {
        (**self).get_at(key, now)
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), Self::Future<()>> {
        (**self).put(key, entry)
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), Self::Future<()>> {
        (**self).invalidate(key)
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), Self::Future<()>> {
        (**self).invalidate_prefix(prefix)
    }

    fn clear(&self) -> StoreOp<(), Self::Future<()>> {
        (**self).clear()
    }

    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<V>, Self::Future<FillLock<V>>> {
        (**self).lock(key, hold, mode)
    }

    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), Self::Future<()>> {
        (**self).unlock(key, token)
    }

    fn put_locked(
        &self,
        key: &CacheKey,
        entry: &CacheEntry<V>,
        token: u64,
    ) -> Option<StoreOp<(), Self::Future<()>>> {
        (**self).put_locked(key, entry, token)
    }
}

/// A source of [`CacheStore`]s: the in-memory backend, or Redis.
///
/// The layer's builder calls [`cache_store`](Self::cache_store) once, with the validated settings.
pub trait CacheBackend<V: Send + Sync + 'static> {
    /// The store this backend builds.
    type Store: CacheStore<V>;

    /// Builds a store for `spec`.
    ///
    /// # Errors
    ///
    /// When the backend cannot work with these settings.
    fn cache_store(&self, spec: &CacheSpec) -> Result<Self::Store, ConfigError>;
}

/// What a backend needs to know to build a store.
#[derive(Clone, Debug)]
pub struct CacheSpec {
    pub(crate) name: &'static str,
    pub(crate) max_bytes: u64,
    pub(crate) max_entry_bytes: Option<u64>,
}

impl CacheSpec {
    /// The cache's name (for key prefixes and metrics labels).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The most bytes of entries the store should hold (the in-memory store's bound).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The largest value the cache's mode may store, when it knows one (HTTP: its body cap; see
    /// [`ModeConfig::max_entry_bytes`](super::ModeConfig::max_entry_bytes)): a store that splits
    /// its bound (Redis, over its slots) checks that each part can hold one.
    pub fn max_entry_bytes(&self) -> Option<u64> {
        self.max_entry_bytes
    }
}
