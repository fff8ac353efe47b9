//! The cache's store in Redis (features `redis` and `cache`): entries shared by every replica,
//! with a cross-replica fill lock and invalidation by key, prefix or all.
//!
//! See [`RedisCacheStore`] for how entries are kept, and the [crate's cache
//! documentation](crate::cache) for the layer itself.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Value;
use tokio::time::Instant;

use super::conn::{Conn, Script};
use super::{FailurePolicy, RedisBackend, StoreClock};
use crate::BoxError;
use crate::backend::memory::MemoryCacheStore;
use crate::backend::{BackendError, ErrorKind, MemoryBackend};
use crate::cache::entry::Timing;
use crate::cache::{
    CacheBackend, CacheEntry, CacheKey, CacheSpec, CacheStore, FillLock, Found, LockMode, StoreOp,
};
use crate::clock::Clock;
use crate::error::ConfigError;
use crate::throttle::LogThrottle;

/// The default number of slots a cache's keys are spread over ([`RedisBackend::cache_slots`]).
pub const DEFAULT_CACHE_SLOTS: u16 = 16;

/// The most slots a cache may be spread over.
pub const MAX_CACHE_SLOTS: u16 = 1024;

/// How many keys one call of the range invalidation script removes at most.
const RANGE_BATCH: usize = 500;

/// What an entry weighs in a slot beyond its body, allowed for when a cache is built: its headers
/// and key as stored (a few KiB for most responses), then its Redis name, its key three times and
/// the 256 bytes of bookkeeping the count adds (`fill.lua`). A slot must hold the largest body
/// the mode stores plus this, or such bodies would be fetched and never stored.
const ENTRY_ALLOWANCE: u64 = 16 * 1024;

mod codec;
mod inner;
mod memo;
mod names;
mod ops;
#[cfg(test)]
mod tests;

pub use self::codec::{CacheCodec, RedisCacheValue, UndecodableEntry};
use self::inner::*;
use self::memo::*;
use self::names::*;
use crate::cache::entry::to_unix_ms;

// ------------------------------------------------------------------------------------------------
// Scripts (run through the connection's `Conn::eval`, as every store's are)

macro_rules! script {
    ($name:ident, $file:literal) => {
        fn $name() -> &'static Script {
            static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
            SCRIPT.get_or_init(|| Script::new(include_str!($file)))
        }
    };
    // A script that keeps the slot's byte count: `sizes.lua` first.
    ($name:ident, sizes + $file:literal) => {
        fn $name() -> &'static Script {
            static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
            SCRIPT.get_or_init(|| {
                Script::new(concat!(include_str!("sizes.lua"), include_str!($file)))
            })
        }
    };
}

script!(lock_script, "lock.lua");
script!(unlock_script, "unlock.lua");
script!(fill_script, sizes + "fill.lua");
script!(invalidate_script, sizes + "invalidate.lua");
script!(range_script, sizes + "invalidate_range.lua");

// ------------------------------------------------------------------------------------------------
// The store

/// A cache store in Redis, shared by every replica; built by [`RedisBackend`] for a
/// [`CacheLayer`](crate::cache::CacheLayer) given `.backend(redis)`.
///
/// # Keys
///
/// A cache's keys are spread over [`cache_slots`](RedisBackend::cache_slots) slots (16 by
/// default) by the SHA-1 of the cache key. Everything of one slot shares a Redis Cluster hash tag,
/// `{<name>:<slot>}`, so one script sees it all at once:
///
/// | Redis key | holds |
/// |---|---|
/// | `<prefix>:cache:<name>:{<name>:<slot>}:e:<sha1 of the key>` | an entry (a string with `PX` at its hard expiry) |
/// | `…:{<name>:<slot>}:l:<sha1 of the key>` | the key's fill lock (`SET NX PX`, a token) |
/// | `…:{<name>:<slot>}:seq` | the slot's invalidation counter |
/// | `…:{<name>:<slot>}:idx` | the slot's cache keys, in a sorted set (for prefix ranges) |
/// | `…:{<name>:<slot>}:exp` | the same keys by expiry (to trim the index, and to evict) |
/// | `…:{<name>:<slot>}:sz` | each key's weight in bytes, in a hash (see [Size](#size)) |
/// | `…:{<name>:<slot>}:bytes` | the sum of those weights |
///
/// Cache keys reach Redis names only as digests; they are kept as they are in the index (prefix
/// invalidation needs them), so do not put secrets in keys.
///
/// # Entries
///
/// A hit is one `GET`. HTTP entries are in the versioned binary format of
/// [`codec`](crate::cache::codec) (status, version, headers, body, and the stored-at, fresh-until
/// and two stale-until times); [`CacheCodec`] values are framed as `"RMV"`, a version byte (1),
/// the same four times (big-endian Unix milliseconds), then the value's bytes. Every entry expires
/// in Redis (`PX`) at the end of its last stale window, so stale-while-revalidate and
/// stale-if-error work across replicas: the fresh/stale judgement is made by each replica from
/// the times inside the entry. Times are read from the replicas' wall clocks, corrected by the
/// offset to Redis's `TIME` seen in the fill lock's replies, so replicas whose clocks disagree
/// still agree on an entry's age to within a round trip.
///
/// Bytes at an entry's key that are not such an entry (another format version, corrupt, a
/// foreign value or type) are a miss: counted in `rampart_cache_undecodable_total{name,reason}`,
/// logged (a rate-limited warning), never an error; the next fill overwrites them.
///
/// # Single flight across replicas
///
/// A miss takes the key's fill lock: `SET NX PX` with a token, for the layer's
/// [`fill_lock`](crate::cache::CacheBuilder::fill_lock) hold. The holder calls its upstream and
/// stores its answer in one script that also releases the lock (only its own token's), so no
/// replica can find the lock free before the entry is there. The lock script first looks at the
/// key's entry: when it is fresh (another replica stored it after this one's lookup, and has
/// released its lock since), it answers the entry, takes no lock, and the replica serves it; the
/// check and the lock are one step, so no replica fills a key whose fresh entry is already stored
/// when its lock request arrives. A forced refresh (`Cache-Control: no-cache`,
/// [`LockMode::Always`]) takes the lock whatever is stored; a stale entry (in its
/// stale-while-revalidate or stale-if-error window) does not stop it. Replicas that find the lock
/// held check for the entry, and try the lock again (the same script), after 5, 10, 20 and then
/// every 50 ms, for up to the layer's lock wait.
///
/// **Bound on upstream calls.** N concurrent misses on one key, across R replicas, make one
/// inner call when the holder's call answers within both the lock's hold and the wait, its answer
/// may be stored, and Redis answers. Otherwise each replica makes at most one call per wave of
/// concurrent misses (its own requests share it), so at most R:
///
/// - the holder's call outlives the **wait**: each other replica calls through once when its wait
///   ends (those answers are not stored; the holder's is);
/// - the holder's call outlives the **hold**: the lock lapses, and the next replica to check takes
///   it and calls (one more call per hold period, each on a replica that had not called);
/// - the holder's call **fails** (or its answer may not be stored): the lock is released, and the
///   next replica to check takes it and calls;
/// - an **invalidation** in the key's slot while the call runs: that fill will not store (its
///   answer may predate the invalidation), its lock is taken over by the next replica to check;
/// - **Redis is down**: each replica calls through (once per key per wave, by its own single
///   flight).
///
/// A replica whose lookup found no entry but whose lock request reaches Redis after the holder
/// has stored its entry and released the lock makes no call: the lock script answers the entry.
/// (The freshness the script judges by is the time the replica sends with the request, in the
/// clock the entries' times are written in, and the replica checks the entry again by its own
/// clock; an entry a hair from the end of its freshness is waited past, as a held lock is.)
///
/// # Invalidation
///
/// Every invalidation is counted in the slot's counter, atomically with its effect, and a fill
/// stores only if its slot's counter has not moved since it took the lock (a fill that was
/// already calling may have read what was invalidated). This is per slot, not per key: an
/// invalidation also keeps the fills running at that moment for other keys of its slot from
/// storing (they still answer their requests), as the layer does in its own process.
///
/// - **By key**: one script on the key's slot deletes the entry. O(1).
/// - **By prefix**: one script per slot takes the keys in the prefix's range out of the slot's
///   index (a sorted set read with `ZRANGEBYLEX`) and deletes their entries, up to 500 per call.
///   O(S·log N + M) for S slots, N keys and M matching keys; it never scans Redis's keyspace, and
///   no entry stored before it survives it (a fill that began before it is fenced by the counter).
/// - **All**: the same with the whole range: O(N) for the cache's own N keys.
///
/// The slots are invalidated concurrently; the invalidation's future completes when all have.
/// The index costs each entry its key twice more in Redis (two sorted sets), and each write two
/// `ZADD`s; keys whose entries expired are trimmed from it by later writes.
///
/// # Size
///
/// The layer's [`max_bytes`](crate::cache::CacheBuilder::max_bytes) bounds the cache in Redis
/// too, so that a flood of distinct keys (random query strings) cannot fill Redis and push out
/// what shares it (a rate limiter's counts, a breaker's state). Each slot holds at most its share,
/// `max_bytes / cache_slots` (so the cache at most `max_bytes`), as the store counts bytes: an
/// entry weighs its stored bytes, its Redis name, its cache key three times (index, expiry set,
/// weights) and 256 bytes for Redis's own bookkeeping. That is an estimate of Redis's memory, not
/// a reading of it: with 2 KB entries, `MEMORY USAGE` of the cache's keys came to about 1.13 times
/// the count in the tests (allocator size classes). A busy slot is full while another is half
/// empty only as far as the keys' SHA-1 spreads them unevenly.
///
/// The fill script keeps the count: a write that would take its slot past its share first
/// removes the slot's entries that **expire soonest** (with one TTL: the oldest), at most 16 per
/// write; an entry that still does not fit, or is larger than the slot's share, is not stored
/// (its key's previous entry goes, superseded), and the request is answered all the same. Keys
/// that expired (Redis drops them without telling) are subtracted as the write trims them from the
/// index, at most 64 per write; invalidation subtracts what it deletes; an overwrite replaces the
/// key's weight. A hit is not touched: still one `GET`.
///
/// The count repairs itself and never goes negative: a count that is missing, unreadable, or
/// short of what leaves the slot is counted again from the weights (when there are at most 1,000
/// of them; otherwise the weights are dropped and counting starts again, and the entries they
/// stood for leave by their TTL, uncounted); a count that still leaves no room after evicting is
/// counted again the same way; a slot whose index is empty counts 0. Each write samples two
/// weights and drops those whose key is no longer in the index (a previous release's scripts take
/// keys out without their weights; Redis 6.2 and later, `HRANDFIELD`). Entries stored by a previous release have no weight: they are
/// not counted (nor subtracted), may be evicted like others, and leave by their TTL. No script
/// does more than a bounded amount of work per call.
///
/// # Memory in Redis, and eviction
///
/// Entries expire by themselves (`PX`); a slot's index and weights empty (and vanish) as its keys
/// are trimmed; the slots' invalidation counters (16 small strings per cache) stay. The index, the
/// weights and the counters have no expiry, so a Redis that evicts only keys with one
/// (`maxmemory-policy` `volatile-lru`, `volatile-lfu`, `volatile-ttl`, or `noeviction`) never
/// drops them; with an `allkeys-*` policy Redis may evict an index, and a later prefix
/// invalidation would miss the entries it listed. Since the cache bounds itself, a `maxmemory`
/// above the sum of the caches' `max_bytes` (plus what else the server holds) keeps Redis from
/// evicting at all.
///
/// # Hot keys
///
/// The store remembers the Redis name and last decoded entry of 128 keys (entries up to 16 KiB):
/// a hit whose bytes are those it decoded last is served from that without hashing or decoding.
/// Whatever happened in Redis meanwhile, the same bytes are the same entry. Decoded HTTP bodies and
/// header values share the buffer the reply arrived in.
///
/// # When Redis is down
///
/// Every call is bounded by the backend's [`timeout`](RedisBackend::timeout); while Redis is known
/// to be down no request waits for it (one probes it every 100 ms). Errors are counted in
/// `rampart_redis_errors_total` and by the layer in `rampart_cache_backend_errors_total{op}`,
/// with rate-limited warnings. A cache never refuses a request because Redis is unavailable;
/// what it does meanwhile is the backend's [`FailurePolicy`]:
///
/// | policy | while Redis is down |
/// |---|---|
/// | [`Local`](FailurePolicy::Local) (default) | each replica caches in memory (bounded by the layer's [`max_bytes`](crate::cache::CacheBuilder::max_bytes)), coalescing its own misses; that memory is dropped when Redis answers again |
/// | [`Open`](FailurePolicy::Open), [`Closed`](FailurePolicy::Closed) | requests call through, uncached (a cache has nothing to refuse) |
///
/// With `Local`, an invalidation made while Redis is down reaches only the memory of the replica
/// that makes it (and its future answers the Redis error): other replicas may serve what it
/// invalidated from their memory, for up to the TTL, until Redis returns. Choose `Open` where
/// that matters more than sparing the upstream during an outage.
pub struct RedisCacheStore<V> {
    inner: Arc<Inner>,
    local: Option<Arc<MemoryCacheStore<V>>>,
    memo: Arc<Memo<V>>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for RedisCacheStore<V> {
    /// Another handle on the same store (for [`redis_key`](Self::redis_key), or a layer's
    /// store kept after the layer moved into a service).
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            local: self.local.clone(),
            memo: Arc::clone(&self.memo),
            _value: PhantomData,
        }
    }
}

impl<V> fmt::Debug for RedisCacheStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("name", &self.inner.name)
            .field("head", &String::from_utf8_lossy(&self.inner.head))
            .field("slots", &self.inner.slots)
            .field("timeout", &self.inner.timeout)
            .field("local_fallback", &self.local.is_some())
            .field("conn", &self.inner.conn)
            .finish()
    }
}

/// A pending operation of [`RedisCacheStore`] (boxed; the type is named so it can change without
/// breaking anyone).
pub struct RedisCacheFuture<T> {
    inner: Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send>>,
}

impl<T> RedisCacheFuture<T> {
    fn new(fut: impl Future<Output = Result<T, BackendError>> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(fut),
        }
    }
}

impl<T> fmt::Debug for RedisCacheFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheFuture").finish_non_exhaustive()
    }
}

impl<T> Future for RedisCacheFuture<T> {
    type Output = Result<T, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<V: RedisCacheValue> CacheBackend<V> for RedisBackend {
    type Store = RedisCacheStore<V>;

    fn cache_store(&self, spec: &CacheSpec) -> Result<Self::Store, ConfigError> {
        self.check_settings()?;
        let slots = self.settings.cache_slots;
        if slots == 0 || slots > MAX_CACHE_SLOTS {
            return Err(ConfigError::new(
                "cache_slots",
                format!("a cache is spread over 1 to {MAX_CACHE_SLOTS} slots (got {slots})"),
            ));
        }
        let name = spec.name();
        if name == "default" {
            tracing::warn!(
                prefix = %self.settings.prefix,
                "a cache in redis is named \"default\": caches sharing a name and prefix share \
                 entries, so name each cache (.name(\"summaries\")) unless this is the only one"
            );
        }
        let slot_budget = slot_budget(spec.max_bytes(), slots);
        if let Some(largest) = spec
            .max_entry_bytes()
            .map(|body| body.saturating_add(ENTRY_ALLOWANCE))
            && largest > slot_budget
        {
            return Err(ConfigError::new(
                "max_bytes",
                format!(
                    "in redis the cache's bound is split over its {slots} slots ({slot_budget} \
                     bytes each), less than the largest entry it may store ({largest} bytes: the \
                     body cap and {ENTRY_ALLOWANCE} for its headers, key and bookkeeping), which \
                     would never be stored: raise max_bytes to at least {}, or lower \
                     max_body_bytes or the backend's cache_slots",
                    largest.saturating_mul(u64::from(slots))
                ),
            ));
        }
        let head = format!("{}:cache:{name}:{{{name}:", self.settings.prefix).into_bytes();
        let slot_heads = slot_heads(&head, slots);
        let local = match self.settings.policy {
            FailurePolicy::Local => Some(Arc::new(MemoryBackend::new().cache_store(spec)?)),
            FailurePolicy::Open | FailurePolicy::Closed => None,
        };
        Ok(RedisCacheStore {
            inner: Arc::new(Inner {
                conn: Arc::clone(&self.conn),
                name,
                head: head.into_boxed_slice(),
                slot_heads,
                slots,
                slot_budget,
                timeout: self.settings.timeout,
                clock: self.settings.clock.clone(),
                offset_ms: AtomicI64::new(0),
                base: Instant::now(),
                local_in_use: AtomicBool::new(false),
                tokens: AtomicU64::new(0),
                token_seed: foldhash::fast::RandomState::default(),
                log: LogThrottle::new(Duration::from_secs(10)),
            }),
            local,
            memo: Arc::new(Memo::new()),
            _value: PhantomData,
        })
    }
}

impl RedisBackend {
    /// How many slots each cache built on this backend spreads its keys over (default
    /// [`DEFAULT_CACHE_SLOTS`], 16; 1 to [`MAX_CACHE_SLOTS`], checked when the layer is built).
    ///
    /// A slot is one Redis Cluster hash slot holding its share of the cache's entries with its
    /// own index and invalidation counter, so that one script sees them together. More slots
    /// spread a cache over more nodes of a cluster; each prefix invalidation (or invalidation of
    /// all) costs one script per slot. Every replica must use the same number (the slot is part
    /// of each key's Redis name); on a single server it only matters for that cost.
    #[must_use]
    pub fn cache_slots(mut self, slots: u16) -> Self {
        self.settings.cache_slots = slots;
        self
    }
}
