//! Cache keys and the extractors that compute them from requests.
//!
//! A [`CacheKey`] is a short byte string: the same representation in memory and in a shared store
//! (Redis keys are bytes), and one that [prefix invalidation](super::CacheHandle::invalidate_prefix)
//! has a meaning for. Keys of up to 86 bytes are stored inline, so building one for a typical
//! request allocates nothing.
//!
//! The layer is keyed by any extractor from [`crate::key`] whose keys convert into a `CacheKey`
//! (`Into<CacheKey>`): strings, byte strings, integers, `()` (the empty key of
//! [`GlobalKey`](crate::key::GlobalKey)), IP addresses ([`PeerIp`](crate::key::PeerIp),
//! [`ClientIp`](crate::key::ClientIp)), header values ([`HeaderKey`](crate::key::HeaderKey)),
//! and `CacheKey` itself (the HTTP default, [`HttpKey`](super::HttpKey)). A request the
//! extractor finds no key for (a key function returning `None`) must not be cached at all: it
//! goes straight to the inner service.
//!
//! # Example
//!
//! ```
//! use tower_rampart::cache::CacheKey;
//! use tower_rampart::key::key_fn;
//!
//! struct GetSummary { metric_type: String, period: &'static str }
//!
//! // One entry per metric type and period: "summary:cpu_usage:daily".
//! let key = key_fn(|req: &GetSummary| {
//!     Some(CacheKey::from_parts(&[b"summary:", req.metric_type.as_bytes(), b":", req.period.as_bytes()]))
//! });
//! # let _ = key;
//! assert_eq!(CacheKey::from(42u64).as_bytes(), b"42");
//! ```

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use crate::error::ConfigError;
use crate::key::{ExtractKey, KeyError, KeyExtractor};

/// Bytes held inline; longer keys go to the heap. Chosen so a key is 96 bytes.
///
/// It was 46 (a 56-byte key), shorter than most HTTP keys with a header in them
/// (`GET /api/metrics/summary?type=cpu_usage\naccept-encoding=gzip` is 60 bytes): each such key
/// cost two allocations (the bytes gathered in a `Vec`, then copied into an `Arc`) and their
/// frees, about 500 instructions per Redis cache hit in the `instructions` bench's
/// `redis64/rampart_cache_hit` row (`INSTRUCTIONS_ONLY=1 INSTRUCTIONS_CALLS=2000 cargo bench
/// --bench instructions --all-features -- redis64/`), where moving 40 more bytes costs a few.
const INLINE: usize = 86;

/// The key of a cache entry: a short byte string, cheap to clone.
///
/// Two keys are equal when their bytes are. Keys of up to 86 bytes live inline (no allocation),
/// longer ones in a shared `Arc<[u8]>`. A key carries a hash of its bytes, computed once when it
/// is made (with a seed chosen at random per process, so clients cannot aim for collisions):
/// the tables it goes into, which hash keys again each time they grow or clean up, then hash 8
/// bytes instead of the whole key.
#[derive(Clone)]
pub struct CacheKey {
    hash: u64,
    repr: Repr,
}

/// The per-process hasher of key bytes.
pub(crate) fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::BuildHasher;
    static STATE: std::sync::OnceLock<crate::hash::RandomState> = std::sync::OnceLock::new();
    STATE.get_or_init(Default::default).hash_one(bytes)
}

#[derive(Clone)]
enum Repr {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Arc<[u8]>),
}

impl CacheKey {
    /// A key made of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self::from_parts(&[bytes])
    }

    /// A key made of `parts`, concatenated (without allocating when the result fits inline).
    pub fn from_parts(parts: &[&[u8]]) -> Self {
        let mut b = KeyBuf::new();
        for p in parts {
            b.push(p);
        }
        b.finish()
    }

    /// The key's bytes.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        match &self.repr {
            Repr::Inline { len, buf } => &buf[..usize::from(*len)],
            Repr::Heap(bytes) => bytes,
        }
    }

    /// The key's length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the key is empty (the key of a layer that caches one response for everything).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the key starts with `prefix`.
    #[inline]
    pub fn starts_with(&self, prefix: &[u8]) -> bool {
        self.as_bytes().starts_with(prefix)
    }

    /// An empty key that is not hashed (its hash is zero): a placeholder for a free slot of a
    /// table, never compared with real keys.
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    #[inline]
    pub(crate) const fn placeholder() -> Self {
        Self {
            hash: 0,
            repr: Repr::Inline {
                len: 0,
                buf: [0; INLINE],
            },
        }
    }

    /// The hash of the key's bytes, computed when it was made (seeded per process).
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    #[inline]
    pub(crate) fn hash_code(&self) -> u64 {
        self.hash
    }

    /// Bytes the key holds on the heap (beyond its own inline size).
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    #[inline]
    pub(crate) fn heap_len(&self) -> usize {
        match &self.repr {
            Repr::Inline { .. } => 0,
            // The slice and the `Arc`'s two counts.
            Repr::Heap(bytes) => bytes.len() + 2 * std::mem::size_of::<usize>(),
        }
    }
}

impl PartialEq for CacheKey {
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        self.hash == other.hash && self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl fmt::Display for CacheKey {
    /// The key as text, with bytes that are not printable ASCII escaped (`\n`, `\xff`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.as_bytes().utf8_chunks() {
            for c in chunk.valid().chars() {
                if c.is_control() {
                    write!(f, "{}", c.escape_default())?;
                } else {
                    fmt::Write::write_char(f, c)?;
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl CacheKey {
    /// The key for logs: up to its first newline (HTTP keys list the request headers they
    /// include after one, and those may be credentials), at most 96 bytes, escaped as by
    /// `Display`.
    pub(crate) fn for_logs(&self) -> LogKey<'_> {
        LogKey(self)
    }
}

/// A key shown in logs; see [`CacheKey::for_logs`].
pub(crate) struct LogKey<'a>(&'a CacheKey);

impl fmt::Display for LogKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.as_bytes();
        let end = bytes
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(bytes.len())
            .min(96);
        let shown = CacheKey::from_bytes(&bytes[..end]);
        write!(f, "{shown}")?;
        if end < bytes.len() {
            f.write_str("…")?;
        }
        Ok(())
    }
}

impl From<&str> for CacheKey {
    fn from(s: &str) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<String> for CacheKey {
    fn from(s: String) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<&String> for CacheKey {
    fn from(s: &String) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<&[u8]> for CacheKey {
    fn from(b: &[u8]) -> Self {
        Self::from_bytes(b)
    }
}

impl From<Vec<u8>> for CacheKey {
    fn from(b: Vec<u8>) -> Self {
        if b.len() <= INLINE {
            Self::from_bytes(&b)
        } else {
            Self {
                hash: hash_bytes(&b),
                repr: Repr::Heap(Arc::from(b)),
            }
        }
    }
}

impl CacheKey {
    /// The key of an integer, in decimal: `-` if `negative`, then the digits of `magnitude`.
    /// Written straight into the inline buffer (every integer key fits), then hashed.
    #[inline]
    fn from_int(negative: bool, mut magnitude: u64) -> Self {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (magnitude % 10) as u8;
            magnitude /= 10;
            if magnitude == 0 {
                break;
            }
        }
        let mut buf = [0u8; INLINE];
        let sign = usize::from(negative);
        buf[0] = b'-';
        let len = sign + digits.len() - i;
        buf[sign..len].copy_from_slice(&digits[i..]);
        Self {
            hash: hash_bytes(&buf[..len]),
            repr: Repr::Inline {
                len: len as u8,
                buf,
            },
        }
    }
}

macro_rules! key_from_unsigned {
    ($($t:ty)*) => {$(
        impl From<$t> for CacheKey {
            /// The number in decimal, e.g. `42` → `"42"`.
            #[inline]
            fn from(n: $t) -> Self {
                Self::from_int(false, u64::from(n))
            }
        }
    )*};
}

macro_rules! key_from_signed {
    ($($t:ty)*) => {$(
        impl From<$t> for CacheKey {
            /// The number in decimal, e.g. `-42` → `"-42"`.
            #[inline]
            fn from(n: $t) -> Self {
                Self::from_int(n < 0, u64::from(n.unsigned_abs()))
            }
        }
    )*};
}

key_from_unsigned!(u8 u16 u32 u64);
key_from_signed!(i8 i16 i32 i64);

impl From<()> for CacheKey {
    /// The empty key.
    fn from((): ()) -> Self {
        Self::from_bytes(&[])
    }
}

impl From<Box<str>> for CacheKey {
    fn from(s: Box<str>) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

impl From<Arc<str>> for CacheKey {
    fn from(s: Arc<str>) -> Self {
        Self::from_bytes(s.as_bytes())
    }
}

/// Writes `value`'s `Display` form into a key (inline: addresses are short).
fn display_key(value: impl fmt::Display) -> CacheKey {
    struct Writer(KeyBuf);
    impl fmt::Write for Writer {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.push(s.as_bytes());
            Ok(())
        }
    }
    let mut w = Writer(KeyBuf::new());
    let _ = fmt::Write::write_fmt(&mut w, format_args!("{value}"));
    w.0.finish()
}

impl From<IpAddr> for CacheKey {
    /// The address as text (`203.0.113.9`, `2001:db8::`).
    fn from(ip: IpAddr) -> Self {
        display_key(ip)
    }
}

impl From<Ipv4Addr> for CacheKey {
    /// The address as text.
    fn from(ip: Ipv4Addr) -> Self {
        display_key(ip)
    }
}

impl From<Ipv6Addr> for CacheKey {
    /// The address as text.
    fn from(ip: Ipv6Addr) -> Self {
        display_key(ip)
    }
}

#[cfg(feature = "http")]
impl From<http::HeaderValue> for CacheKey {
    /// A newline, then the value's bytes: logs show a key only up to its first newline, so a
    /// header value (an API key) never reaches them, as with [`HttpKey`](super::HttpKey)'s
    /// header parts.
    fn from(value: http::HeaderValue) -> Self {
        Self::from_parts(&[b"\n", value.as_bytes()])
    }
}

/// Builds a key piece by piece, inline until it outgrows [`INLINE`].
pub(crate) struct KeyBuf {
    inline: [u8; INLINE],
    len: usize,
    heap: Option<Vec<u8>>,
}

impl KeyBuf {
    #[inline]
    pub(crate) fn new() -> Self {
        Self {
            inline: [0; INLINE],
            len: 0,
            heap: None,
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, bytes: &[u8]) {
        if let Some(heap) = &mut self.heap {
            heap.extend_from_slice(bytes);
        } else if self.len + bytes.len() <= INLINE {
            self.inline[self.len..self.len + bytes.len()].copy_from_slice(bytes);
            self.len += bytes.len();
        } else {
            let mut heap = Vec::with_capacity((self.len + bytes.len()).max(2 * INLINE));
            heap.extend_from_slice(&self.inline[..self.len]);
            heap.extend_from_slice(bytes);
            self.heap = Some(heap);
        }
    }

    /// Appends one byte (a separator): [`push`](Self::push) copies with `memcpy`, a call that
    /// costs more than the byte (the HTTP key's three separators were about 75 instructions of
    /// the `instructions` bench's `redis64/rampart_cache_hit` row).
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    #[inline]
    pub(crate) fn push_byte(&mut self, byte: u8) {
        match &mut self.heap {
            Some(heap) => heap.push(byte),
            None if self.len < INLINE => {
                self.inline[self.len] = byte;
                self.len += 1;
            }
            None => self.push(&[byte]),
        }
    }

    #[inline]
    pub(crate) fn finish(self) -> CacheKey {
        match self.heap {
            Some(heap) => CacheKey {
                hash: hash_bytes(&heap),
                repr: Repr::Heap(Arc::from(heap)),
            },
            None => CacheKey {
                hash: hash_bytes(&self.inline[..self.len]),
                repr: Repr::Inline {
                    len: self.len as u8,
                    buf: self.inline,
                },
            },
        }
    }
}

/// The key extractor of a builder that has not been given one: `build` refuses it, so that a
/// cache never serves one request's response to another by accident.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKey;

impl KeyExtractor for NoKey {
    type Key = CacheKey;

    fn validate(&self) -> Result<(), ConfigError> {
        Err(ConfigError::new(
            "key",
            "no key extractor was set; call .key(key_fn(|req| Some(...))) to say which requests \
             share a response, or .http() for HTTP services (keyed by method and URI)",
        ))
    }
}

impl<Req> ExtractKey<Req> for NoKey {
    fn extract(&self, _: &Req) -> Result<CacheKey, KeyError> {
        Err(KeyError::new("no key extractor was set"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separators_pushed_one_byte_at_a_time_make_the_key_push_would() {
        // A separator landing just before, at and just past the inline buffer's end (85, 86 and
        // 87 bytes in all), and one pushed onto a key already on the heap: the same key, inline or
        // heap alike, as the pieces joined with `from_parts`.
        for before in [INLINE - 2, INLINE - 1, INLINE, INLINE + 5] {
            let head = vec![b'a'; before];
            let mut buf = KeyBuf::new();
            buf.push(&head);
            buf.push_byte(b'\n');
            buf.push(b"tail");
            buf.push_byte(0);
            let key = buf.finish();
            let expected = CacheKey::from_parts(&[&head, b"\n", b"tail", &[0]]);
            assert_eq!(key, expected, "{before} bytes before the separator");
            assert_eq!(key.as_bytes(), expected.as_bytes());
            assert_eq!(key.hash, expected.hash, "{before}");
            let inline = before + 6 <= INLINE; // the separator, "tail" and the 0
            assert_eq!(matches!(key.repr, Repr::Inline { .. }), inline, "{before}");
        }
    }

    #[test]
    fn inline_and_heap_keys_compare_and_hash_by_bytes() {
        let short = CacheKey::from("GET /a");
        let long_text = "GET /api/metrics/summary?type=cpu_usage&period=daily&x=1\naccept-encoding=gzip, deflate, br";
        let long = CacheKey::from(long_text);
        assert!(matches!(short.repr, Repr::Inline { .. }));
        assert_eq!(std::mem::size_of::<CacheKey>(), 96);
        let typical =
            CacheKey::from("GET /api/metrics/summary?type=cpu_usage\naccept-encoding=gzip");
        assert!(matches!(typical.repr, Repr::Inline { .. }));
        assert!(matches!(long.repr, Repr::Heap(_)));
        assert_eq!(long.as_bytes(), long_text.as_bytes());
        let built = CacheKey::from_parts(&[
            b"GET /api/metrics/summary",
            b"?type=cpu_usage&period=daily&x=1",
            b"\naccept-encoding=gzip, deflate, br",
        ]);
        assert_eq!(built, long);
        let h = |k: &CacheKey| {
            use std::hash::BuildHasher;
            foldhash::fast::FixedState::with_seed(1).hash_one(k)
        };
        assert_eq!(h(&built), h(&long));
        assert!(long.starts_with(b"GET /api/metrics/"));
        assert_eq!(CacheKey::from(Vec::from(long_text)), long);
    }

    #[test]
    fn integers_are_decimal_and_display_escapes() {
        assert_eq!(CacheKey::from(0u8).as_bytes(), b"0");
        assert_eq!(CacheKey::from(-120i64).as_bytes(), b"-120");
        assert_eq!(CacheKey::from(u64::MAX).as_bytes(), b"18446744073709551615");
        assert_eq!(CacheKey::from(i64::MIN).as_bytes(), b"-9223372036854775808");
        let k = CacheKey::from_bytes(b"GET /x\naccept=\xff");
        assert_eq!(k.to_string(), "GET /x\\naccept=\\xff");
        assert!(CacheKey::from(()).is_empty());
        let with_auth = CacheKey::from_bytes(b"GET /me\nauthorization=Bearer secret");
        assert_eq!(with_auth.for_logs().to_string(), "GET /me…");
    }

    #[test]
    fn extractor_keys_convert() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(CacheKey::from(ip).as_bytes(), b"2001:db8::1");
        assert_eq!(
            CacheKey::from(Box::<str>::from("api.example.com")).as_bytes(),
            b"api.example.com"
        );
        #[cfg(feature = "http")]
        {
            let key = CacheKey::from(http::HeaderValue::from_static("secret"));
            assert_eq!(key.as_bytes(), b"\nsecret");
            assert_eq!(key.for_logs().to_string(), "…");
        }
    }
}
