//! A compact, versioned binary format for HTTP cache entries, for stores that keep entries
//! outside the process (Redis).
//!
//! An entry's times are [`tokio::time::Instant`]s, which mean nothing to another process; the
//! format carries them as Unix milliseconds instead. The caller supplies one reading of both
//! clocks, `now` and `wall_now`, taken together; the codec itself reads no clock. Replicas whose
//! wall clocks disagree see an entry's windows shifted by the difference (a store that wants
//! better can pass the shared server's time, such as Redis `TIME`, as `wall_now`).
//!
//! Format, version 1 (all integers big-endian):
//!
//! ```text
//! "RMC" 0x01                       magic and version
//! u64 stored_at   u64 fresh_until  u64 revalidate_until  u64 stale_if_error_until   (Unix ms)
//! u16 status      u8 version (0: HTTP/0.9, 1: 1.0, 2: 1.1, 3: 2, 4: 3)
//! u32 header count, then per header: u16 name length, name, u32 value length, value
//! u32 body length, body
//! ```
//!
//! Decoding never panics: bytes that are not a whole, valid version-1 entry (another version,
//! truncated, corrupt, a foreign value under the same key, a header that is not a valid header, a
//! `content-length` that does not match the body) are a [`DecodeError`], which a store reports
//! as a miss.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use bytes::Bytes;
//! use http::{HeaderMap, StatusCode, Version};
//! use tokio::time::Instant;
//! use tower_rampart::cache::{CacheEntry, CachedResponse};
//! use tower_rampart::cache::entry::{Lifetimes, Timing};
//!
//! let (now, wall) = (Instant::now(), SystemTime::now());
//! let stored = CachedResponse::new(StatusCode::OK, Version::HTTP_11, HeaderMap::new(), Bytes::from("hi"));
//! let entry = CacheEntry::new(stored, Timing::new(now, Lifetimes::ttl(Duration::from_secs(60))), 2);
//! let bytes = tower_rampart::cache::codec::encode(&entry, now, wall);
//! let back = tower_rampart::cache::codec::decode(&bytes, now, wall).unwrap();
//! assert_eq!(back.value().body(), "hi");
//! assert!(tower_rampart::cache::codec::decode(&bytes[..10], now, wall).is_err());
//! ```

use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};
use tokio::time::Instant;

use super::entry::{CacheEntry, Timing};
use super::http::CachedResponse;

const MAGIC: &[u8; 3] = b"RMC";

/// The format version [`encode`] writes.
pub const FORMAT_VERSION: u8 = 1;

/// Bytes that are not a valid entry of this format version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    reason: &'static str,
}

impl DecodeError {
    const fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// What was wrong, e.g. `"unknown format version"`.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "undecodable cache entry: {}", self.reason)
    }
}

impl std::error::Error for DecodeError {}

fn version_code(v: Version) -> u8 {
    match v {
        Version::HTTP_09 => 0,
        Version::HTTP_10 => 1,
        Version::HTTP_2 => 3,
        Version::HTTP_3 => 4,
        _ => 2,
    }
}

/// Encodes `entry` (format version [`FORMAT_VERSION`]); `now` and `wall_now` are one reading of
/// tokio's clock and the wall clock.
pub fn encode(entry: &CacheEntry<CachedResponse>, now: Instant, wall_now: SystemTime) -> Vec<u8> {
    let r = entry.value();
    let t = entry.timing();
    let headers_len: usize = r
        .headers()
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut out = Vec::with_capacity(4 + 32 + 3 + 4 + headers_len + 4 + r.body().len());
    out.extend_from_slice(MAGIC);
    out.push(FORMAT_VERSION);
    for ms in t.to_unix_ms(now, wall_now) {
        out.extend_from_slice(&ms.to_be_bytes());
    }
    out.extend_from_slice(&r.status().as_u16().to_be_bytes());
    out.push(version_code(r.version()));
    out.extend_from_slice(&(r.headers().len() as u32).to_be_bytes());
    for (name, value) in r.headers() {
        out.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value.as_bytes());
    }
    out.extend_from_slice(&(r.body().len() as u32).to_be_bytes());
    out.extend_from_slice(r.body());
    out
}

/// Reads `bytes` front to back.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::new("truncated"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
}

/// Decodes an entry written by [`encode`]; `now` and `wall_now` are one reading of tokio's clock
/// and the wall clock.
///
/// # Errors
///
/// A [`DecodeError`] for anything but a whole, valid entry of version [`FORMAT_VERSION`].
pub fn decode(
    bytes: &[u8],
    now: Instant,
    wall_now: SystemTime,
) -> Result<CacheEntry<CachedResponse>, DecodeError> {
    decode_with(bytes, now, wall_now, Bytes::copy_from_slice, false)
}

/// As [`decode`], for bytes already in a [`Bytes`]: the entry's body and header values share their
/// buffer instead of being copied out of it.
///
/// # Errors
///
/// A [`DecodeError`] for anything but a whole, valid entry of version [`FORMAT_VERSION`].
pub fn decode_shared(
    bytes: &Bytes,
    now: Instant,
    wall_now: SystemTime,
) -> Result<CacheEntry<CachedResponse>, DecodeError> {
    decode_with(bytes, now, wall_now, |body| bytes.slice_ref(body), false)
}

/// As [`decode_shared`], with the `x-cache` and `age` placeholders in the header map (see
/// `CachedResponse::with_all_placeholders`): what the Redis store hands the layer, which replays
/// it.
#[cfg(feature = "redis")]
pub(crate) fn decode_for_replay(
    bytes: &Bytes,
    now: Instant,
    wall_now: SystemTime,
) -> Result<CacheEntry<CachedResponse>, DecodeError> {
    decode_with(bytes, now, wall_now, |body| bytes.slice_ref(body), true)
}

/// Decodes `bytes`, making the body and header values with `shared` (a copy, or a slice of the
/// buffer `bytes` are in).
fn decode_with(
    bytes: &[u8],
    now: Instant,
    wall_now: SystemTime,
    shared: impl Fn(&[u8]) -> Bytes,
    placeholders: bool,
) -> Result<CacheEntry<CachedResponse>, DecodeError> {
    let mut r = Reader { bytes };
    if r.take(3)? != MAGIC {
        return Err(DecodeError::new("not a cache entry"));
    }
    if r.u8()? != FORMAT_VERSION {
        return Err(DecodeError::new("unknown format version"));
    }
    let ms = [r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    let timing = Timing::from_unix_ms(ms, now, wall_now)
        .ok_or_else(|| DecodeError::new("times out of order"))?;
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| DecodeError::new("bad status"))?;
    let version = match r.u8()? {
        0 => Version::HTTP_09,
        1 => Version::HTTP_10,
        2 => Version::HTTP_11,
        3 => Version::HTTP_2,
        4 => Version::HTTP_3,
        _ => return Err(DecodeError::new("bad http version")),
    };
    let count = r.u32()? as usize;
    // Each header takes at least 6 bytes: a count larger than the rest cannot be honest.
    if count > r.bytes.len() / 6 {
        return Err(DecodeError::new("truncated"));
    }
    // `http`'s map holds at most 24,576 names (32,768 slots) and panics past it: a corrupt or
    // foreign entry's count is an error here, not a panic.
    let too_many = |_| DecodeError::new("too many headers");
    let mut headers =
        HeaderMap::try_with_capacity(count + if placeholders { 2 } else { 0 }).map_err(too_many)?;
    for _ in 0..count {
        let len = usize::from(r.u16()?);
        let name = HeaderName::from_bytes(r.take(len)?)
            .map_err(|_| DecodeError::new("bad header name"))?;
        let len = r.u32()? as usize;
        let value = HeaderValue::from_maybe_shared(shared(r.take(len)?))
            .map_err(|_| DecodeError::new("bad header value"))?;
        headers.try_append(name, value).map_err(too_many)?;
    }
    let len = r.u32()? as usize;
    let body = shared(r.take(len)?);
    if !r.bytes.is_empty() {
        return Err(DecodeError::new("trailing bytes"));
    }
    let mut response = CachedResponse::new(status, version, headers, body);
    if !response.is_replayable() {
        return Err(DecodeError::new("content-length does not match the body"));
    }
    if placeholders {
        response = response.with_all_placeholders();
    }
    let weight = response.weight();
    Ok(CacheEntry::new(response, timing, weight))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::cache::entry::Lifetimes;

    fn sample(now: Instant) -> CacheEntry<CachedResponse> {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("link", HeaderValue::from_static("</a>; rel=a"));
        headers.append("link", HeaderValue::from_static("</b>; rel=b"));
        headers.insert("content-length", HeaderValue::from_static("11"));
        let r = CachedResponse::new(
            StatusCode::CREATED,
            Version::HTTP_2,
            headers,
            Bytes::from_static(b"{\"count\":3}"),
        );
        let lifetimes = Lifetimes {
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(600),
            age: Duration::ZERO,
        };
        CacheEntry::new(r, Timing::new(now - Duration::from_secs(5), lifetimes), 100)
    }

    #[test]
    fn round_trips_through_another_process_clock() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_760_000_000);
        let entry = sample(now);
        let bytes = encode(&entry, now, wall);
        // Another process reads it 2 s later, with a different tokio epoch.
        let later = Instant::now() + Duration::from_secs(1000);
        let back = decode(&bytes, later, wall + Duration::from_secs(2)).unwrap();
        assert_eq!(back.value().status(), StatusCode::CREATED);
        assert_eq!(back.value().version(), Version::HTTP_2);
        assert_eq!(back.value().headers(), entry.value().headers());
        assert_eq!(back.value().body(), entry.value().body());
        assert_eq!(back.age(later), Duration::from_secs(7));
        let t = back.timing();
        assert_eq!(t.fresh_until - t.stored_at, Duration::from_secs(60));
        assert_eq!(
            t.stale_if_error_until - t.fresh_until,
            Duration::from_secs(600)
        );
    }

    /// A header count past what `http`'s map holds (24,576 names), with the bytes to back it: an
    /// error, where `HeaderMap::with_capacity` panicked ("size overflows MAX_SIZE").
    #[test]
    fn a_header_count_past_what_a_map_holds_is_an_error_not_a_panic() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let whole = encode(&sample(now), now, wall);
        // Magic, version, four times, status and HTTP version come before the count.
        let at = 3 + 1 + 4 * 8 + 2 + 1;
        // The most a map holds decodes; one more is an error, whether the names are distinct or
        // one name's values (a count past what a map holds is refused before any is read).
        for (count, distinct, ok) in [
            (24_576u32, true, true),
            (24_577, true, false),
            (30_000, false, false),
        ] {
            let mut bytes = whole[..at].to_vec();
            bytes.extend_from_slice(&count.to_be_bytes());
            for i in 0..count {
                // `x<i>: ""`, or `a: ""` each time (one name, many values).
                let name = if distinct {
                    format!("x{i}")
                } else {
                    "a".into()
                };
                bytes.extend_from_slice(&(name.len() as u16).to_be_bytes());
                bytes.extend_from_slice(name.as_bytes());
                bytes.extend_from_slice(&0u32.to_be_bytes());
            }
            bytes.extend_from_slice(&0u32.to_be_bytes());
            match decode(&bytes, now, wall) {
                Ok(entry) => {
                    assert!(ok, "{count} headers decoded");
                    assert_eq!(entry.value().headers().len(), count as usize);
                }
                Err(e) => {
                    assert!(!ok, "{count} headers: {e}");
                    assert_eq!(e, DecodeError::new("too many headers"), "{count} headers");
                }
            }
        }
    }

    #[test]
    fn shared_decoding_keeps_the_body_in_the_buffer() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let bytes = Bytes::from(encode(&sample(now), now, wall));
        let back = decode_shared(&bytes, now, wall).unwrap();
        assert_eq!(back.value().body(), "{\"count\":3}");
        let body = back.value().body().as_ptr() as usize;
        let buffer = bytes.as_ptr() as usize;
        assert!(body >= buffer && body < buffer + bytes.len(), "not copied");
        assert_eq!(
            decode_shared(&bytes.slice(..bytes.len() - 1), now, wall).unwrap_err(),
            DecodeError::new("truncated")
        );
    }

    #[test]
    fn anything_but_a_whole_valid_entry_is_an_error_not_a_panic() {
        let now = Instant::now();
        let wall = SystemTime::now();
        let bytes = encode(&sample(now), now, wall);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], now, wall).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert_eq!(
            decode(&extra, now, wall).unwrap_err().reason(),
            "trailing bytes"
        );
        let mut v2 = bytes.clone();
        v2[3] = 2;
        assert_eq!(
            decode(&v2, now, wall).unwrap_err().reason(),
            "unknown format version"
        );
        let mut bad_name = bytes.clone();
        let at = bad_name
            .windows(12)
            .position(|w| w == b"content-type")
            .unwrap();
        bad_name[at] = b' ';
        assert_eq!(
            decode(&bad_name, now, wall).unwrap_err().reason(),
            "bad header name"
        );
        let mut short = bytes.clone();
        let at = short.windows(2).position(|w| w == b"11").unwrap();
        short[at] = b'9';
        assert!(
            decode(&short, now, wall).is_err(),
            "content-length 91 for 11 bytes"
        );
        assert!(decode(b"GET /x", now, wall).is_err());
        assert!(decode(b"RMC\x01\xff\xff\xff\xff", now, wall).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_and_mutated_bytes_never_panic(
            garbage in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            flips in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 1..8),
        ) {
            let now = Instant::now();
            let wall = SystemTime::now();
            let _ = decode(&garbage, now, wall);
            let mut bytes = encode(&sample(now), now, wall);
            for (at, b) in flips {
                let i = at % bytes.len();
                bytes[i] = b;
            }
            let _ = decode(&bytes, now, wall);
        }
    }
}
