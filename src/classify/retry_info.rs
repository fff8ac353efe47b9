//! gRPC's retry information, written and read: `grpc-retry-pushback-ms` (gRPC's retry design,
//! A6) and a `google.rpc.RetryInfo` in `grpc-status-details-bin` (read by `tonic-types` and
//! Google's client libraries). No protobuf library is needed for either.
//!
//! The gRPC rejection mode ([`AsGrpc`](crate::grpc::AsGrpc)) writes both; the
//! [`GrpcClassifier`](super::GrpcClassifier) reads them.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};

use super::{GrpcCode, Pushback};

/// `grpc-retry-pushback-ms`: how long a client should wait before retrying, in milliseconds.
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
/// `grpc-status-details-bin`: a base64 `google.rpc.Status` with details.
pub const GRPC_STATUS_DETAILS_BIN: &str = "grpc-status-details-bin";

const RETRY_INFO: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";

/// The `grpc-retry-pushback-ms` value for `d`: whole milliseconds, rounded up (at least 1), so a
/// client that waits that long is never early.
pub(crate) fn pushback_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Encodes a `google.rpc.Status { code, message, details: [RetryInfo { retry_delay }] }`.
pub(crate) fn status_details(
    code: GrpcCode,
    message: &str,
    retry_delay: Option<Duration>,
) -> Bytes {
    let mut status = Vec::with_capacity(96);
    put_varint_field(&mut status, 1, code.as_i32() as u64);
    put_bytes_field(&mut status, 2, message.as_bytes());
    if let Some(delay) = retry_delay {
        let mut duration = Vec::with_capacity(12);
        put_varint_field(&mut duration, 1, delay.as_secs());
        put_varint_field(&mut duration, 2, u64::from(delay.subsec_nanos()));
        let mut retry_info = Vec::with_capacity(16);
        put_bytes_field(&mut retry_info, 1, &duration);
        let mut any = Vec::with_capacity(64);
        put_bytes_field(&mut any, 1, RETRY_INFO);
        put_bytes_field(&mut any, 2, &retry_info);
        put_bytes_field(&mut status, 3, &any);
    }
    Bytes::from(status)
}

/// The `grpc-status-details-bin` header value for encoded `details`.
pub(crate) fn details_header(details: &[u8]) -> HeaderValue {
    HeaderValue::from_str(&STANDARD_NO_PAD.encode(details)).expect("base64 is ASCII")
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        put_varint(out, u64::from(field << 3));
        put_varint(out, v);
    }
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, u64::from(field << 3 | 2));
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// What `grpc-retry-pushback-ms` says: nothing without one, a delay for a number, "do not retry"
/// for a negative or unreadable value.
pub(crate) fn pushback(headers: &HeaderMap) -> Pushback {
    let Some(v) = headers.get(GRPC_RETRY_PUSHBACK_MS) else {
        return Pushback::None;
    };
    let text = v.to_str().unwrap_or("").trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Pushback::After(Duration::from_millis(text.parse().unwrap_or(u64::MAX)))
    } else {
        Pushback::DoNotRetry
    }
}

/// The encoded `google.rpc.Status` in a `grpc-status-details-bin` header value.
pub(crate) fn decode_details_header(b: &[u8]) -> Option<Vec<u8>> {
    let trimmed = b.strip_suffix(b"==").or(b.strip_suffix(b"=")).unwrap_or(b);
    STANDARD_NO_PAD.decode(trimmed).ok()
}

/// The `retry_delay` of a `google.rpc.RetryInfo` in an encoded `google.rpc.Status`.
pub(crate) fn retry_info_delay(status: &[u8]) -> Option<Duration> {
    // Status { 3: repeated Any details }, Any { 1: type_url, 2: value }.
    for detail in fields(status).filter_map(|f| f.bytes(3)) {
        let mut type_url = None;
        let mut value = None;
        for f in fields(detail) {
            if let Some(b) = f.bytes(1) {
                type_url = Some(b);
            } else if let Some(b) = f.bytes(2) {
                value = Some(b);
            }
        }
        if type_url != Some(RETRY_INFO) {
            continue;
        }
        // RetryInfo { 1: Duration retry_delay }, Duration { 1: int64 seconds, 2: int32 nanos }.
        let duration = fields(value?).find_map(|f| f.bytes(1))?;
        let (mut secs, mut nanos) = (0i64, 0i64);
        for f in fields(duration) {
            match f {
                Field::Varint(1, v) => secs = v as i64,
                Field::Varint(2, v) => nanos = v as i32 as i64,
                _ => {}
            }
        }
        if secs < 0 || nanos < 0 {
            return Some(Duration::ZERO);
        }
        return Some(Duration::new(secs as u64, 0) + Duration::from_nanos(nanos as u64));
    }
    None
}

/// A protobuf field: what the decoder needs of the wire format.
enum Field<'a> {
    Varint(u64, u64),
    Bytes(u64, &'a [u8]),
    Other,
}

impl<'a> Field<'a> {
    fn bytes(&self, number: u64) -> Option<&'a [u8]> {
        match *self {
            Field::Bytes(n, b) if n == number => Some(b),
            _ => None,
        }
    }
}

/// The fields of a protobuf message; stops at the first malformed byte.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Field<'_>> {
    std::iter::from_fn(move || {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(number, varint(&mut buf)?),
            1 => {
                buf = buf.get(8..)?;
                Field::Other
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                let (b, rest) = (buf.get(..len)?, buf.get(len..)?);
                buf = rest;
                Field::Bytes(number, b)
            }
            5 => {
                buf = buf.get(4..)?;
                Field::Other
            }
            _ => return None,
        };
        Some(field)
    })
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for i in 0..10 {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        v |= u64::from(b & 0x7f) << (7 * i);
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_rounds_up() {
        assert_eq!(pushback_ms(Duration::from_nanos(59_999_000_001)), 60_000);
        assert_eq!(pushback_ms(Duration::from_millis(60_000)), 60_000);
        assert_eq!(pushback_ms(Duration::from_nanos(1)), 1);
        assert_eq!(pushback_ms(Duration::ZERO), 1);
    }

    #[test]
    fn status_details_are_valid_protobuf() {
        // Status{code=8, message="x", details=[Any{RetryInfo{Duration{seconds=6, nanos=5}}}]}
        let b = status_details(GrpcCode::ResourceExhausted, "x", Some(Duration::new(6, 5)));
        let url = b"type.googleapis.com/google.rpc.RetryInfo";
        let mut expected = vec![0x08, 8, 0x12, 1, b'x', 0x1a, (2 + url.len() + 2 + 6) as u8];
        expected.extend([0x0a, url.len() as u8]);
        expected.extend(url);
        expected.extend([0x12, 6, 0x0a, 4, 0x08, 6, 0x10, 5]);
        assert_eq!(&b[..], &expected[..]);
    }

    #[test]
    fn what_is_written_is_read_back() {
        for delay in [
            Duration::new(6, 5),
            Duration::from_millis(1),
            Duration::ZERO,
        ] {
            let details = status_details(GrpcCode::Unavailable, "x", Some(delay));
            assert_eq!(retry_info_delay(&details), Some(delay));
            let header = details_header(&details);
            let decoded = decode_details_header(header.as_bytes()).unwrap();
            assert_eq!(retry_info_delay(&decoded), Some(delay));
            // Padded, as some servers send it.
            let padded = base64::engine::general_purpose::STANDARD.encode(&details);
            let decoded = decode_details_header(padded.as_bytes()).unwrap();
            assert_eq!(retry_info_delay(&decoded), Some(delay));
        }
        let details = status_details(GrpcCode::Unavailable, "x", None);
        assert_eq!(retry_info_delay(&details), None);
        let mut headers = HeaderMap::new();
        assert_eq!(pushback(&headers), Pushback::None);
        headers.insert(
            GRPC_RETRY_PUSHBACK_MS,
            pushback_ms(Duration::new(1, 1)).into(),
        );
        assert_eq!(
            pushback(&headers),
            Pushback::After(Duration::from_millis(1001))
        );
        for bad in ["-1", "soon", ""] {
            headers.insert(GRPC_RETRY_PUSHBACK_MS, HeaderValue::from_static(bad));
            assert_eq!(pushback(&headers), Pushback::DoNotRetry, "{bad:?}");
        }
    }

    #[test]
    fn malformed_status_details_are_ignored() {
        assert_eq!(retry_info_delay(&[0xff; 12]), None);
        assert_eq!(retry_info_delay(&[0x1a, 0x40, 1, 2]), None);
        assert_eq!(retry_info_delay(&[]), None);
    }
}
