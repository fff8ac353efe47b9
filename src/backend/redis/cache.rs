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

use redis::{Cmd, Value};
use tokio::time::Instant;

use super::conn::Conn;
use super::{FailurePolicy, RedisBackend, StoreClock};
use crate::BoxError;
use crate::backend::memory::MemoryCacheStore;
use crate::backend::{BackendError, ErrorKind, MemoryBackend};
use crate::cache::entry::Timing;
use crate::cache::{
    CacheBackend, CacheEntry, CacheKey, CacheStore, FillLock, Found, LockMode, StoreOp, StoreSpec,
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

// ------------------------------------------------------------------------------------------------
// Values

/// How a value of the [`Cloned`](crate::cache::Cloned) mode is written to Redis and read back:
/// implement it for the responses you cache in Redis.
///
/// Implemented for byte and text types (`Vec<u8>`, `String`, `Box<str>`, `Arc<str>`,
/// `Arc<[u8]>`, and `bytes::Bytes` with the `http` feature). HTTP caches (`.http()`) need nothing:
/// their entries use the crate's versioned HTTP format ([`codec`](crate::cache::codec)).
///
/// The store frames the bytes with the entry's times and a format version of its own; `decode`
/// only ever sees bytes `encode` wrote (or bytes of a foreign or corrupt entry, which it should
/// refuse: the store then counts the entry as undecodable and treats it as a miss). Version your
/// encoding yourself if it may change while old entries live (a leading byte is enough).
///
/// # Example: a JSON-encoded summary
///
/// ```
/// use tower_rampart::BoxError;
/// use tower_rampart::backend::redis::CacheCodec;
///
/// #[derive(Clone, serde::Serialize, serde::Deserialize)]
/// struct Summary { count: u64, average: f64 }
///
/// impl CacheCodec for Summary {
///     fn encode(&self, out: &mut Vec<u8>) {
///         serde_json::to_writer(out, self).expect("a summary always serialises");
///     }
///
///     fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
///         Ok(serde_json::from_slice(bytes)?)
///     }
/// }
///
/// let mut bytes = Vec::new();
/// Summary { count: 3, average: 1.5 }.encode(&mut bytes);
/// assert_eq!(Summary::decode(&bytes).unwrap().count, 3);
/// assert!(Summary::decode(b"\x00garbage").is_err());
/// ```
///
/// A gRPC message (prost) is the same with `prost::Message::encode(self, out)` and
/// `M::decode(bytes)`.
pub trait CacheCodec: Sized + Send + Sync + 'static {
    /// Appends the value's bytes to `out`.
    fn encode(&self, out: &mut Vec<u8>);

    /// Reads a value written by [`encode`](Self::encode).
    ///
    /// # Errors
    ///
    /// When `bytes` are not such a value.
    fn decode(bytes: &[u8]) -> Result<Self, BoxError>;
}

impl CacheCodec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(bytes.to_vec())
    }
}

impl CacheCodec for Arc<[u8]> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(Arc::from(bytes))
    }
}

impl CacheCodec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(std::str::from_utf8(bytes)?.to_owned())
    }
}

impl CacheCodec for Box<str> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(Box::from(std::str::from_utf8(bytes)?))
    }
}

impl CacheCodec for Arc<str> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(Arc::from(std::str::from_utf8(bytes)?))
    }
}

#[cfg(feature = "http")]
impl CacheCodec for bytes::Bytes {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }

    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(bytes::Bytes::copy_from_slice(bytes))
    }
}

/// An entry read from Redis that is not a whole, valid entry of a format this version knows
/// (written by another version, corrupt, or a foreign value under the key). The store counts it
/// and answers a miss.
#[derive(Debug)]
pub struct UndecodableEntry {
    reason: &'static str,
    source: Option<BoxError>,
}

impl UndecodableEntry {
    fn new(reason: &'static str) -> Self {
        Self {
            reason,
            source: None,
        }
    }

    /// What was wrong, e.g. `"unknown format version"`.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for UndecodableEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable cache entry: {}", self.reason)
    }
}

impl std::error::Error for UndecodableEntry {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The values a cache in Redis can hold: HTTP responses
/// ([`CachedResponse`](crate::cache::CachedResponse), in the versioned HTTP format of
/// [`codec`](crate::cache::codec)) and every [`CacheCodec`] type (in the framing described on
/// [`RedisCacheStore`]). Implemented by the crate; implement [`CacheCodec`] for your own types.
pub trait RedisCacheValue: Sized + Send + Sync + 'static {
    /// The bytes of `entry`; `now` and `wall` are one reading of tokio's clock and the wall
    /// clock.
    #[doc(hidden)]
    fn to_redis(entry: &CacheEntry<Self>, now: Instant, wall: SystemTime) -> Vec<u8>;

    /// An entry back from its bytes (owned, so that a value can keep them without a copy).
    #[doc(hidden)]
    fn from_redis(
        bytes: Vec<u8>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<CacheEntry<Self>, UndecodableEntry>;
}

/// The framing of [`CacheCodec`] values: magic and version, then the entry's times.
const MAGIC: &[u8; 3] = b"RMV";
const FRAME_VERSION: u8 = 1;
const FRAME_HEADER: usize = 4 + 4 * 8;

impl<T: CacheCodec> RedisCacheValue for T {
    fn to_redis(entry: &CacheEntry<Self>, now: Instant, wall: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER + entry.weight() as usize);
        out.extend_from_slice(MAGIC);
        out.push(FRAME_VERSION);
        let t = entry.timing();
        for at in [
            t.stored_at,
            t.fresh_until,
            t.revalidate_until,
            t.stale_if_error_until,
        ] {
            out.extend_from_slice(&to_unix_ms(at, now, wall).to_be_bytes());
        }
        entry.value().encode(&mut out);
        out
    }

    fn from_redis(
        bytes: Vec<u8>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<CacheEntry<Self>, UndecodableEntry> {
        if bytes.len() < 4 || &bytes[..3] != MAGIC {
            return Err(UndecodableEntry::new("not a cache entry"));
        }
        if bytes[3] != FRAME_VERSION {
            return Err(UndecodableEntry::new("unknown format version"));
        }
        if bytes.len() < FRAME_HEADER {
            return Err(UndecodableEntry::new("truncated"));
        }
        let mut times = [now; 4];
        for (i, t) in times.iter_mut().enumerate() {
            let at = 4 + 8 * i;
            let mut ms = [0; 8];
            ms.copy_from_slice(&bytes[at..at + 8]);
            *t = from_unix_ms(u64::from_be_bytes(ms), now, wall);
        }
        let [
            stored_at,
            fresh_until,
            revalidate_until,
            stale_if_error_until,
        ] = times;
        if !(stored_at <= fresh_until
            && fresh_until <= revalidate_until
            && fresh_until <= stale_if_error_until)
        {
            return Err(UndecodableEntry::new("times out of order"));
        }
        let body = &bytes[FRAME_HEADER..];
        let value = T::decode(body).map_err(|e| UndecodableEntry {
            reason: "the value's codec refused it",
            source: Some(e),
        })?;
        let timing = Timing {
            stored_at,
            fresh_until,
            revalidate_until,
            stale_if_error_until,
        };
        Ok(CacheEntry::new(value, timing, body.len()))
    }
}

#[cfg(feature = "http")]
impl RedisCacheValue for crate::cache::CachedResponse {
    fn to_redis(entry: &CacheEntry<Self>, now: Instant, wall: SystemTime) -> Vec<u8> {
        crate::cache::codec::encode(entry, now, wall)
    }

    fn from_redis(
        bytes: Vec<u8>,
        now: Instant,
        wall: SystemTime,
    ) -> Result<CacheEntry<Self>, UndecodableEntry> {
        let bytes = bytes::Bytes::from(bytes);
        crate::cache::codec::decode_shared(&bytes, now, wall).map_err(|e| UndecodableEntry {
            reason: e.reason(),
            source: Some(Box::new(e)),
        })
    }
}

/// `at` as Unix milliseconds, given one reading of both clocks.
fn to_unix_ms(at: Instant, now: Instant, wall: SystemTime) -> u64 {
    let wall = if at >= now {
        wall.checked_add(at - now)
    } else {
        wall.checked_sub(now - at)
    };
    wall.and_then(|w| w.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as an `Instant`, given one reading of both clocks.
fn from_unix_ms(ms: u64, now: Instant, wall: SystemTime) -> Instant {
    let at = UNIX_EPOCH + Duration::from_millis(ms);
    match at.duration_since(wall) {
        Ok(ahead) => now
            .checked_add(ahead)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600)),
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

// ------------------------------------------------------------------------------------------------
// Scripts

/// A Lua script of this store, run with `EVALSHA` (and sent whole on `NOSCRIPT`).
struct LuaScript {
    code: &'static str,
    sha: String,
}

impl LuaScript {
    fn new(code: &'static str) -> Self {
        Self {
            code,
            sha: sha1_smol::Sha1::from(code).digest().to_string(),
        }
    }

    fn cmd(&self, verb: &str, body: &str, keys: &[&[u8]], args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(keys.len());
        for k in keys {
            cmd.arg(*k);
        }
        for a in args {
            cmd.arg(*a);
        }
        cmd
    }
}

macro_rules! script {
    ($name:ident, $file:literal) => {
        fn $name() -> &'static LuaScript {
            static SCRIPT: std::sync::OnceLock<LuaScript> = std::sync::OnceLock::new();
            SCRIPT.get_or_init(|| LuaScript::new(include_str!($file)))
        }
    };
}

script!(lock_script, "cache_lock.lua");
script!(unlock_script, "cache_unlock.lua");
script!(fill_script, "cache_fill.lua");
script!(invalidate_script, "cache_invalidate.lua");
script!(range_script, "cache_invalidate_range.lua");

/// Whether `e` is Redis answering `NOSCRIPT` (a restarted or flushed server).
fn is_noscript(e: &BackendError) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<redis::RedisError>())
        .is_some_and(|e| e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
}

/// Runs `script` within `timeout` (per round trip), sending it whole when the server does not
/// have it.
async fn eval(
    conn: &Conn,
    script: &LuaScript,
    keys: &[&[u8]],
    args: &[&[u8]],
    timeout: Duration,
) -> Result<Value, BackendError> {
    match conn
        .query(&script.cmd("EVALSHA", &script.sha, keys, args), timeout)
        .await
    {
        Err(e) if is_noscript(&e) => {
            tracing::debug!(sha = %script.sha, "redis script cache is empty; sending the cache script");
            conn.query(&script.cmd("EVAL", script.code, keys, args), timeout)
                .await
        }
        other => other,
    }
}

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
/// | `…:{<name>:<slot>}:exp` | the same keys by expiry (to trim the index) |
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
/// # Memory in Redis, and eviction
///
/// Entries expire by themselves (`PX`); a slot's index empties (and vanishes) as its keys are
/// trimmed; the slots' counters (16 small strings per cache) stay. The index and the counters have
/// no expiry, so a Redis that evicts only keys with one (`maxmemory-policy` `volatile-lru`,
/// `volatile-lfu`, `volatile-ttl`, or `noeviction`) never drops them; with an `allkeys-*` policy
/// Redis may evict an index, and a later prefix invalidation would miss the entries it listed.
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

/// How many keys the store remembers the Redis name and last decoded entry of.
const MEMO_SLOTS: usize = 128;

/// The largest entry (in bytes, in Redis) whose decoding is remembered.
const MEMO_MAX_BYTES: usize = 16 * 1024;

/// The last Redis name and decoded entry of a few keys (direct-mapped by the key's hash), so that
/// a hit on a hot key neither hashes the key again nor decodes bytes it has already decoded: the
/// bytes Redis answers are compared with those remembered (whatever has happened in Redis since,
/// the same bytes decode to the same entry). At most [`MEMO_SLOTS`] keys, entries up to
/// [`MEMO_MAX_BYTES`]: 2 MiB of remembered bytes at most.
struct Memo<V> {
    slots: Box<[MemoSlot<V>]>,
    hasher: foldhash::fast::FixedState,
}

type MemoSlot<V> = std::sync::Mutex<Option<Arc<Memoized<V>>>>;

struct Memoized<V> {
    key: CacheKey,
    name: Box<[u8]>,
    seen: Option<Seen<V>>,
}

/// Bytes read at a key and what they decoded to.
struct Seen<V> {
    bytes: Box<[u8]>,
    entry: CacheEntry<V>,
    /// The wall clock minus tokio's, in milliseconds, when they were decoded: an entry's times
    /// are `Instant`s, right only while this holds.
    mapping: i128,
}

impl<V> Memo<V> {
    fn new() -> Self {
        Self {
            slots: (0..MEMO_SLOTS)
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
            hasher: foldhash::fast::FixedState::default(),
        }
    }

    fn slot(&self, key: &CacheKey) -> &MemoSlot<V> {
        use std::hash::BuildHasher;
        &self.slots[self.hasher.hash_one(key) as usize % MEMO_SLOTS]
    }

    fn find(&self, key: &CacheKey) -> Option<Arc<Memoized<V>>> {
        let slot = self
            .slot(key)
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.as_ref().filter(|m| m.key == *key).cloned()
    }

    fn remember(&self, memo: Memoized<V>) {
        let slot = self.slot(&memo.key);
        *slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(memo));
    }
}

struct Inner {
    conn: Arc<Conn>,
    name: &'static str,
    /// `<prefix>:cache:<name>:{<name>:`: a slot's names follow it with `<slot>}:`.
    head: Box<[u8]>,
    /// Each slot's `<head><slot>}:`, made once.
    slot_heads: Box<[Box<[u8]>]>,
    slots: u16,
    timeout: Duration,
    clock: StoreClock,
    /// Redis `TIME` minus the wall clock, in milliseconds, as last seen (0 until seen).
    offset_ms: AtomicI64,
    /// The origin of [`mapping`](Self::mapping)'s tokio clock.
    base: Instant,
    /// Whether the local fallback has been used since Redis last answered.
    local_in_use: AtomicBool,
    /// Feeds token randomness.
    tokens: AtomicU64,
    token_seed: foldhash::fast::RandomState,
    log: LogThrottle,
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

/// Where one cache key lives: its slot and the key's digest.
struct Place<'a> {
    id: u16,
    /// `<head><slot>}:`
    slot: &'a [u8],
    hex: [u8; 40],
}

impl Place<'_> {
    fn name(&self, kind: &[u8]) -> Vec<u8> {
        let mut n = Vec::with_capacity(self.slot.len() + kind.len() + self.hex.len());
        n.extend_from_slice(self.slot);
        n.extend_from_slice(kind);
        n.extend_from_slice(&self.hex);
        n
    }

    fn entry(&self) -> Vec<u8> {
        self.name(b"e:")
    }

    fn lock(&self) -> Vec<u8> {
        self.name(b"l:")
    }
}

/// A slot's own names.
struct SlotNames {
    seq: Vec<u8>,
    idx: Vec<u8>,
    exp: Vec<u8>,
    entry_head: Vec<u8>,
}

impl Inner {
    fn slot_of(&self, digest: &[u8; 20]) -> u16 {
        u16::from_be_bytes([digest[0], digest[1]]) % self.slots
    }

    fn place(&self, key: &CacheKey) -> Place<'_> {
        let digest = sha1_smol::Sha1::from(key.as_bytes()).digest().bytes();
        let id = self.slot_of(&digest);
        Place {
            id,
            slot: &self.slot_heads[usize::from(id)],
            hex: hex(&digest),
        }
    }

    fn slot_names(&self, slot: u16) -> SlotNames {
        let head = &self.slot_heads[usize::from(slot)];
        let with = |tail: &[u8]| [&head[..], tail].concat();
        SlotNames {
            seq: with(b"seq"),
            idx: with(b"idx"),
            exp: with(b"exp"),
            entry_head: with(b"e:"),
        }
    }

    /// One reading of tokio's clock and of the wall clock the entries' times are written in.
    fn clocks(&self) -> (Instant, SystemTime) {
        let now = Instant::now();
        let wall = match &self.clock {
            StoreClock::Redis(_) => {
                let offset = self.offset_ms.load(Ordering::Relaxed);
                let system = SystemTime::now();
                if offset >= 0 {
                    system + Duration::from_millis(offset.unsigned_abs())
                } else {
                    system - Duration::from_millis(offset.unsigned_abs())
                }
            }
            // A caller's clock (tests, simulations): its nanoseconds from a fixed epoch, so that
            // replicas given clones of one clock agree.
            StoreClock::Custom(_) => {
                UNIX_EPOCH
                    + Duration::from_secs(CUSTOM_EPOCH_SECS)
                    + Duration::from_nanos(self.clock.now())
            }
        };
        (now, wall)
    }

    /// The wall clock minus tokio's (from [`base`](Self::base)), in milliseconds, for one reading
    /// of both.
    fn mapping(&self, now: Instant, wall: SystemTime) -> i128 {
        let wall = wall
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i128);
        wall - now.saturating_duration_since(self.base).as_millis() as i128
    }

    /// Learns the offset of Redis's clock from a reply carrying its `TIME`.
    fn learn_offset(&self, secs: u64, micros: u64) {
        let redis_ms = i128::from(secs) * 1000 + i128::from(micros / 1000);
        let Ok(local) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return;
        };
        let offset = redis_ms - local.as_millis() as i128;
        if let Ok(offset) = i64::try_from(offset) {
            self.offset_ms.store(offset, Ordering::Relaxed);
        }
    }

    /// A fresh random part for a lock token.
    fn token(&self) -> u32 {
        use std::hash::BuildHasher;
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        (self.token_seed.hash_one(n) >> 32) as u32
    }

    /// Redis answered: if the local fallback was used while it did not, forget what it holds
    /// (it may be stale next time Redis goes away).
    fn redis_answered<V: Send + Sync + 'static>(&self, local: Option<&MemoryCacheStore<V>>) {
        if let Some(local) = local
            && self.local_in_use.load(Ordering::Relaxed)
            && self.local_in_use.swap(false, Ordering::AcqRel)
        {
            tracing::info!(
                cache = self.name,
                "redis answers again; dropping the entries cached in memory meanwhile"
            );
            let _ = local.clear();
        }
    }

    /// Bytes at a key that are not an entry: a miss, counted and reported.
    #[cold]
    fn undecodable(&self, key: &CacheKey, reason: &'static str) {
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(cache = self.name, key = %key.for_logs(), reason, suppressed, "undecodable cache entry in redis; treating it as a miss");
        }
        #[cfg(feature = "metrics")]
        crate::metrics::counter(&crate::metrics::key(
            "rampart_cache_undecodable_total",
            self.name,
            &[("reason", reason)],
        ))
        .increment(1);
    }

    fn decode<V: RedisCacheValue>(
        &self,
        key: &CacheKey,
        bytes: Vec<u8>,
        now: Instant,
        wall: SystemTime,
    ) -> Found<V> {
        match V::from_redis(bytes, now, wall) {
            Ok(entry) => Some(entry),
            Err(e) => {
                self.undecodable(key, e.reason());
                None
            }
        }
    }
}

/// The epoch of a caller's clock, as seconds of wall time (any fixed instant well after 1970
/// would do).
const CUSTOM_EPOCH_SECS: u64 = 1_600_000_000;

/// A SHA-1 digest in lowercase hex, as Lua's `redis.sha1hex` writes it.
fn hex(digest: &[u8; 20]) -> [u8; 40] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0; 40];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// `<head><slot>}:` for every slot.
fn slot_heads(head: &[u8], slots: u16) -> Box<[Box<[u8]>]> {
    (0..slots)
        .map(|slot| {
            [head, slot.to_string().as_bytes(), b"}:"]
                .concat()
                .into_boxed_slice()
        })
        .collect()
}

/// The `ZRANGEBYLEX` bounds of the keys starting with `prefix`: `[prefix` up to the first string
/// after every such key (the prefix with its last byte below `0xff` incremented, and what follows
/// dropped), or to the end.
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (b"-".to_vec(), b"+".to_vec());
    }
    let mut min = Vec::with_capacity(prefix.len() + 1);
    min.push(b'[');
    min.extend_from_slice(prefix);
    let max = match prefix.iter().rposition(|&b| b != 0xff) {
        Some(i) => {
            let mut max = Vec::with_capacity(i + 2);
            max.push(b'(');
            max.extend_from_slice(&prefix[..i]);
            max.push(prefix[i] + 1);
            max
        }
        None => b"+".to_vec(),
    };
    (min, max)
}

/// A lock token: a random part (what Redis holds) and the slot's invalidation counter when the
/// lock was taken, modulo 2^32 (what the fill script checks).
fn token(random: u32, seq: u64) -> u64 {
    (u64::from(random) << 32) | (seq & 0xffff_ffff)
}

fn token_parts(token: u64) -> (String, String) {
    ((token >> 32).to_string(), (token & 0xffff_ffff).to_string())
}

fn bulk_u64(v: &Value) -> Option<u64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

fn unexpected(what: &str) -> BackendError {
    BackendError::with_kind(
        ErrorKind::Other,
        format!("unexpected reply from the cache's {what} script"),
        None,
    )
}

/// Whether an error means Redis could not be reached (rather than, say, a script error).
fn is_outage(e: &BackendError) -> bool {
    e.is_unreachable() || e.is_timeout()
}

/// The hard expiry of an entry in milliseconds from now, at least 1; `None` if it has passed.
fn lifetime_ms(timing: &Timing, now: Instant) -> Option<u64> {
    let left = timing.expires_at().saturating_duration_since(now);
    if left.is_zero() {
        return None;
    }
    Some(u64::try_from(left.as_millis()).unwrap_or(u64::MAX).max(1))
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

impl<V: RedisCacheValue> RedisCacheStore<V> {
    /// The Redis key of `key`'s entry, for inspecting it with `redis-cli` (binary-safe bytes).
    pub fn redis_key(&self, key: &CacheKey) -> Vec<u8> {
        self.inner.place(key).entry()
    }

    /// The cache's name (the layer's).
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// How many slots the cache's keys are spread over.
    pub fn slots(&self) -> u16 {
        self.inner.slots
    }

    /// The local fallback, while Redis is down ([`FailurePolicy::Local`]).
    fn fallback(&self) -> Option<&MemoryCacheStore<V>> {
        let local = self.local.as_deref()?;
        self.inner.local_in_use.store(true, Ordering::Release);
        Some(local)
    }

    /// A write Redis cannot take now: to the fallback, or the error.
    fn down_write(
        &self,
        local: impl FnOnce(&MemoryCacheStore<V>) -> StoreOp<(), NeverFuture<()>>,
    ) -> StoreOp<(), RedisCacheFuture<()>> {
        match self.fallback() {
            Some(store) => StoreOp::Ready(ready(local(store))),
            None => StoreOp::Ready(Err(self.inner.conn.down_error())),
        }
    }

    /// Writes `entry` under `key` in one script, holding (and then releasing) the lock of
    /// `token`, or without a lock.
    fn write(
        &self,
        key: &CacheKey,
        entry: CacheEntry<V>,
        token: Option<u64>,
    ) -> StoreOp<(), RedisCacheFuture<()>> {
        let inner = Arc::clone(&self.inner);
        let local = self.local.clone();
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            let (now, wall) = inner.clocks();
            let Some(px) = lifetime_ms(entry.timing(), now) else {
                // Expired already: nothing to keep, but the lock must still be released.
                return match token {
                    Some(token) => {
                        let lock = inner.place(&key).lock();
                        let (random, _) = token_parts(token);
                        eval(
                            &inner.conn,
                            unlock_script(),
                            &[&lock],
                            &[random.as_bytes()],
                            inner.timeout,
                        )
                        .await
                        .map(|_| ())
                    }
                    None => Ok(()),
                };
            };
            let bytes = V::to_redis(&entry, now, wall);
            let place = inner.place(&key);
            let names = inner.slot_names(place.id);
            let (random, seq) = match token {
                Some(t) => token_parts(t),
                None => (String::new(), String::new()),
            };
            let px = px.to_string();
            let result = eval(
                &inner.conn,
                fill_script(),
                &[
                    &place.entry(),
                    &place.lock(),
                    &names.seq,
                    &names.idx,
                    &names.exp,
                ],
                &[
                    random.as_bytes(),
                    seq.as_bytes(),
                    px.as_bytes(),
                    key.as_bytes(),
                    &bytes,
                ],
                inner.timeout,
            )
            .await;
            match result {
                Ok(Value::Int(1)) => {
                    inner.redis_answered(local.as_deref());
                    Ok(())
                }
                Ok(Value::Int(_)) => {
                    inner.redis_answered(local.as_deref());
                    tracing::debug!(cache = inner.name, key = %key.for_logs(), "not stored: invalidated while fetching (seen in redis)");
                    Ok(())
                }
                Ok(_) => Err(unexpected("fill")),
                Err(e) if is_outage(&e) && token.is_none() && local.is_some() => {
                    let local = local.expect("checked");
                    inner.local_in_use.store(true, Ordering::Release);
                    ready(local.put(key, entry))
                }
                Err(e) => Err(e),
            }
        }))
    }

    /// Invalidates the keys of every slot within a `ZRANGEBYLEX` range.
    fn invalidate_range(&self, min: Vec<u8>, max: Vec<u8>) -> StoreOp<(), RedisCacheFuture<()>> {
        let inner = Arc::clone(&self.inner);
        StoreOp::Pending(RedisCacheFuture::new(async move {
            let slots = (0..inner.slots).map(|slot| {
                let inner = Arc::clone(&inner);
                let (min, max) = (min.clone(), max.clone());
                async move {
                    let names = inner.slot_names(slot);
                    let batch = RANGE_BATCH.to_string();
                    let mut first = true;
                    loop {
                        let bump: &[u8] = if first { b"1" } else { b"0" };
                        first = false;
                        let n = eval(
                            &inner.conn,
                            range_script(),
                            &[&names.seq, &names.idx, &names.exp],
                            &[&min, &max, batch.as_bytes(), &names.entry_head, bump],
                            inner.timeout,
                        )
                        .await?;
                        match n {
                            Value::Int(n) if usize::try_from(n).is_ok_and(|n| n < RANGE_BATCH) => {
                                return Ok(());
                            }
                            Value::Int(_) => {}
                            _ => return Err(unexpected("invalidation")),
                        }
                    }
                }
            });
            join_all(slots.collect()).await
        }))
    }
}

type NeverFuture<T> = std::future::Pending<Result<T, BackendError>>;

/// The result of an operation of the in-memory store (always ready).
fn ready<T>(op: StoreOp<T, NeverFuture<T>>) -> Result<T, BackendError> {
    match op {
        StoreOp::Ready(r) => r,
        StoreOp::Pending(_) => unreachable!("the in-memory store answers at once"),
    }
}

/// Runs `futs` concurrently; the first error, once all are done.
async fn join_all<F>(futs: Vec<F>) -> Result<(), BackendError>
where
    F: Future<Output = Result<(), BackendError>> + Send,
{
    let mut futs: Vec<Option<Pin<Box<F>>>> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut error = None;
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for slot in &mut futs {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        *slot = None;
                        if let Err(e) = r {
                            error.get_or_insert(e);
                        }
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(error.take().map_or(Ok(()), Err))
        }
    })
    .await
}

impl<V: RedisCacheValue> CacheStore<V> for RedisCacheStore<V> {
    type Future<T: Send + 'static> = RedisCacheFuture<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, RedisCacheFuture<Found<V>>> {
        let inner = &self.inner;
        if !inner.conn.admit() {
            return match self.fallback() {
                Some(local) => StoreOp::Ready(ready(local.get(key))),
                None => StoreOp::Ready(Err(inner.conn.down_error())),
            };
        }
        let memoized = self.memo.find(key);
        let mut cmd = redis::cmd("GET");
        let name = match &memoized {
            Some(m) => {
                cmd.arg(&*m.name);
                None
            }
            None => {
                let name = inner.place(key).entry();
                cmd.arg(&name);
                Some(name)
            }
        };
        let inner = Arc::clone(inner);
        let local = self.local.clone();
        let memo = Arc::clone(&self.memo);
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            match inner.conn.query(&cmd, inner.timeout).await {
                Ok(Value::Nil) => {
                    inner.redis_answered(local.as_deref());
                    if let Some(name) = name {
                        memo.remember(Memoized {
                            key,
                            name: name.into_boxed_slice(),
                            seen: None,
                        });
                    }
                    Ok(None)
                }
                Ok(Value::BulkString(bytes)) => {
                    inner.redis_answered(local.as_deref());
                    let (now, wall) = inner.clocks();
                    let mapping = inner.mapping(now, wall);
                    if let Some(seen) = memoized.as_ref().and_then(|m| m.seen.as_ref())
                        && *seen.bytes == *bytes
                        && (seen.mapping - mapping).abs() <= 1
                    {
                        return Ok(Some(seen.entry.clone()));
                    }
                    let copy = (bytes.len() <= MEMO_MAX_BYTES).then(|| Box::from(&bytes[..]));
                    let found = inner.decode::<V>(&key, bytes, now, wall);
                    let name = match (name, memoized) {
                        (Some(name), _) => name.into_boxed_slice(),
                        (None, Some(m)) => m.name.clone(),
                        (None, None) => unreachable!("a name was made or remembered"),
                    };
                    memo.remember(Memoized {
                        key,
                        name,
                        seen: found.clone().zip(copy).map(|(entry, bytes)| Seen {
                            bytes,
                            entry,
                            mapping,
                        }),
                    });
                    Ok(found)
                }
                Ok(_) => {
                    inner.undecodable(&key, "not a string");
                    Ok(None)
                }
                // A foreign type at the key (WRONGTYPE): a miss like any undecodable entry.
                Err(e) if e.is_corrupt_data() => {
                    inner.undecodable(&key, "not a string");
                    Ok(None)
                }
                Err(e) if is_outage(&e) && local.is_some() => {
                    inner.local_in_use.store(true, Ordering::Release);
                    ready(local.expect("checked").get(&key))
                }
                Err(e) => Err(e),
            }
        }))
    }

    /// Stores `entry` without a fill lock (unconditionally). The layer stores through
    /// [`put_locked`](CacheStore::put_locked); this serves a store whose lock could not be asked
    /// for while Redis was down (the local fallback).
    fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), RedisCacheFuture<()>> {
        if !self.inner.conn.admit() {
            return self.down_write(|local| local.put(key, entry));
        }
        self.write(&key, entry, None)
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), RedisCacheFuture<()>> {
        if let Some(local) = &self.local {
            let _ = local.invalidate(key);
        }
        let inner = &self.inner;
        if !inner.conn.admit() {
            return StoreOp::Ready(Err(inner.conn.down_error()));
        }
        let place = inner.place(key);
        let names = inner.slot_names(place.id);
        let entry = place.entry();
        let inner = Arc::clone(inner);
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            eval(
                &inner.conn,
                invalidate_script(),
                &[&entry, &names.seq, &names.idx, &names.exp],
                &[key.as_bytes()],
                inner.timeout,
            )
            .await
            .map(|_| ())
        }))
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), RedisCacheFuture<()>> {
        if let Some(local) = &self.local {
            let _ = local.invalidate_prefix(prefix);
        }
        if !self.inner.conn.admit() {
            return StoreOp::Ready(Err(self.inner.conn.down_error()));
        }
        let (min, max) = prefix_range(prefix);
        self.invalidate_range(min, max)
    }

    fn clear(&self) -> StoreOp<(), RedisCacheFuture<()>> {
        if let Some(local) = &self.local {
            let _ = local.clear();
        }
        if !self.inner.conn.admit() {
            return StoreOp::Ready(Err(self.inner.conn.down_error()));
        }
        self.invalidate_range(b"-".to_vec(), b"+".to_vec())
    }

    /// Takes the key's fill lock in one script that, with [`LockMode::UnlessFresh`], first
    /// looks at the key's entry and answers it instead when it is fresh (by this replica's clock,
    /// as the layer judges it). When the entry the script answers does not decode, the lock is
    /// asked for again, whatever is stored (a third round trip, for corrupt entries only; not
    /// counted as undecodable again, the lookup before the lock has counted it).
    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<V>, RedisCacheFuture<FillLock<V>>> {
        let inner = &self.inner;
        if !inner.conn.admit() {
            // With the local fallback, this process fills on its own (and stores in memory).
            return match self.fallback() {
                Some(local) => StoreOp::Ready(ready(local.lock(key, hold, mode))),
                None => StoreOp::Ready(Err(inner.conn.down_error())),
            };
        }
        let place = inner.place(key);
        let names = inner.slot_names(place.id);
        let lock = place.lock();
        let entry = place.entry();
        let random = inner.token();
        let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let inner = Arc::clone(inner);
        let local = self.local.clone();
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            let (random_arg, hold_arg) = (random.to_string(), hold_ms.to_string());
            let mut check = mode == LockMode::UnlessFresh;
            loop {
                let fresh_after = if check {
                    let (now, wall) = inner.clocks();
                    to_unix_ms(now, now, wall).to_string()
                } else {
                    String::new()
                };
                let reply = eval(
                    &inner.conn,
                    lock_script(),
                    &[&lock, &names.seq, &entry],
                    &[
                        random_arg.as_bytes(),
                        hold_arg.as_bytes(),
                        fresh_after.as_bytes(),
                    ],
                    inner.timeout,
                )
                .await;
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(e) if is_outage(&e) && local.is_some() => {
                        inner.local_in_use.store(true, Ordering::Release);
                        return ready(local.expect("checked").lock(&key, hold, mode));
                    }
                    Err(e) => return Err(e),
                };
                let Value::Array(mut parts) = reply else {
                    return Err(unexpected("lock"));
                };
                let fresh = match parts.len() {
                    5 if check => parts.pop(),
                    4 => None,
                    _ => return Err(unexpected("lock")),
                };
                let [taken, seq, secs, micros] = &parts[..] else {
                    return Err(unexpected("lock"));
                };
                let (Some(seq), Some(secs), Some(micros)) =
                    (bulk_u64(seq), bulk_u64(secs), bulk_u64(micros))
                else {
                    return Err(unexpected("lock"));
                };
                inner.learn_offset(secs, micros);
                match (taken, fresh) {
                    (Value::Int(1), None) => return Ok(FillLock::Acquired(token(random, seq))),
                    (Value::Int(0), None) => return Ok(FillLock::HeldElsewhere),
                    (Value::Int(2), Some(Value::BulkString(bytes))) => {
                        let (now, wall) = inner.clocks();
                        match V::from_redis(bytes, now, wall) {
                            Ok(entry) => return Ok(FillLock::Fresh(entry)),
                            // Not an entry to serve (the lookup before the lock counted it as
                            // undecodable): fill the key over it.
                            Err(e) => {
                                tracing::trace!(cache = inner.name, key = %key.for_logs(), reason = e.reason(), "the fill lock found an undecodable entry; taking the lock");
                                check = false;
                            }
                        }
                    }
                    _ => return Err(unexpected("lock")),
                }
            }
        }))
    }

    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), RedisCacheFuture<()>> {
        let inner = &self.inner;
        if !inner.conn.admit() {
            // The lock lapses by itself.
            return StoreOp::Ready(Ok(()));
        }
        let lock = inner.place(key).lock();
        let (random, _) = token_parts(token);
        let inner = Arc::clone(inner);
        StoreOp::Pending(RedisCacheFuture::new(async move {
            eval(
                &inner.conn,
                unlock_script(),
                &[&lock],
                &[random.as_bytes()],
                inner.timeout,
            )
            .await
            .map(|_| ())
        }))
    }

    fn put_locked(
        &self,
        key: &CacheKey,
        entry: &CacheEntry<V>,
        token: u64,
    ) -> Option<StoreOp<(), RedisCacheFuture<()>>> {
        if !self.inner.conn.admit() {
            return Some(StoreOp::Ready(Err(self.inner.conn.down_error())));
        }
        Some(self.write(key, entry.clone(), Some(token)))
    }
}

impl<V: RedisCacheValue> CacheBackend<V> for RedisBackend {
    type Store = RedisCacheStore<V>;

    fn cache_store(&self, spec: &StoreSpec) -> Result<Self::Store, ConfigError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_cover_exactly_the_keys_with_the_prefix() {
        assert_eq!(prefix_range(b""), (b"-".to_vec(), b"+".to_vec()));
        assert_eq!(
            prefix_range(b"GET /a"),
            (b"[GET /a".to_vec(), b"(GET /b".to_vec())
        );
        assert_eq!(
            prefix_range(b"a\xff\xff"),
            (b"[a\xff\xff".to_vec(), b"(b".to_vec())
        );
        assert_eq!(prefix_range(b"\xff"), (b"[\xff".to_vec(), b"+".to_vec()));
        // Lexicographic order of bytes: every key with the prefix is in [min, max).
        let (min, max) = prefix_range(b"ab");
        for key in [&b"ab"[..], b"ab\x00", b"ab\xff\xff", b"abz"] {
            assert!(key >= &min[1..] && key < &max[1..], "{key:?}");
        }
        for key in [&b"aa\xff"[..], b"a", b"ac", b"b"] {
            assert!(!(key >= &min[1..] && key < &max[1..]), "{key:?}");
        }
    }

    #[test]
    fn tokens_carry_a_random_part_and_the_counter() {
        let t = token(0xdead_beef, 0x1_0000_0007);
        assert_eq!(token_parts(t), (0xdead_beefu32.to_string(), 7.to_string()));
    }

    #[test]
    fn framed_values_round_trip_and_refuse_anything_else() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let timing = Timing::new(
            now,
            crate::cache::entry::Lifetimes {
                ttl: Duration::from_secs(60),
                stale_while_revalidate: Duration::from_secs(30),
                stale_if_error: Duration::from_secs(600),
            },
        );
        let entry = CacheEntry::new(String::from("summary"), timing, 7);
        let bytes = String::to_redis(&entry, now, wall);
        let later = now + Duration::from_secs(5);
        let back = String::from_redis(bytes.clone(), later, wall + Duration::from_secs(5)).unwrap();
        assert_eq!(back.value(), "summary");
        assert_eq!(back.age(later), Duration::from_secs(5));
        assert_eq!(
            back.timing().fresh_until - back.timing().stored_at,
            Duration::from_secs(60)
        );
        for cut in 0..FRAME_HEADER {
            assert!(String::from_redis(bytes[..cut].to_vec(), now, wall).is_err());
        }
        let mut v2 = bytes.clone();
        v2[3] = 2;
        assert_eq!(
            String::from_redis(v2, now, wall).unwrap_err().reason(),
            "unknown format version"
        );
        let mut bad = bytes.clone();
        bad.push(0xff);
        assert_eq!(
            String::from_redis(bad, now, wall).unwrap_err().reason(),
            "the value's codec refused it"
        );
        assert!(
            String::from_redis(b"hello world, not an entry at all".to_vec(), now, wall).is_err()
        );
    }
}
