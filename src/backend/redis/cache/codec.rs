//! What the Redis cache store keeps: values encoded with a codec, in a frame that carries the
//! entry's timing and a format version.

use super::*;

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
    pub(super) reason: &'static str,
    pub(super) source: Option<BoxError>,
}

impl UndecodableEntry {
    pub(super) fn new(reason: &'static str) -> Self {
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
pub(super) const MAGIC: &[u8; 3] = b"RMV";
pub(super) const FRAME_VERSION: u8 = 1;
pub(super) const FRAME_HEADER: usize = 4 + 4 * 8;

impl<T: CacheCodec> RedisCacheValue for T {
    fn to_redis(entry: &CacheEntry<Self>, now: Instant, wall: SystemTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER + entry.weight() as usize);
        out.extend_from_slice(MAGIC);
        out.push(FRAME_VERSION);
        let t = entry.timing();
        for ms in t.to_unix_ms(now, wall) {
            out.extend_from_slice(&ms.to_be_bytes());
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
        let ms: [u64; 4] = std::array::from_fn(|i| {
            let at = 4 + 8 * i;
            let mut ms = [0; 8];
            ms.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(ms)
        });
        let timing = Timing::from_unix_ms(ms, now, wall)
            .ok_or_else(|| UndecodableEntry::new("times out of order"))?;
        let body = &bytes[FRAME_HEADER..];
        let value = T::decode(body).map_err(|e| UndecodableEntry {
            reason: "the value's codec refused it",
            source: Some(e),
        })?;
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
        // With the placeholders the layer's replay sets in place (no growing of the replayed
        // map's clone per hit).
        crate::cache::codec::decode_for_replay(&bytes, now, wall).map_err(|e| UndecodableEntry {
            reason: e.reason(),
            source: Some(Box::new(e)),
        })
    }
}
