//! gRPC glue: the gRPC rejection mode and, with the `tonic` feature, conversions to
//! `tonic::Status`.
//!
//! [`AsGrpc`] answers a refusal with a *trailers-only* gRPC response: HTTP 200, `grpc-status`
//! (`RESOURCE_EXHAUSTED` for a rate limit, `UNAVAILABLE` for an unavailable backend), `grpc-message`,
//! and, when the refusal knows when to retry, both `grpc-retry-pushback-ms` (read by gRPC's built-in
//! retry support) and a `google.rpc.RetryInfo` in `grpc-status-details-bin` (read by
//! `tonic-types` and Google's client libraries). No protobuf library is needed to produce them.
//!
//! # Example: a gRPC service limited per peer IP
//!
//! With tonic, put the layer on the server (`Server::builder().layer(limit)`): tonic records the
//! peer address the key is taken from. Here the same stack is driven by hand.
//!
//! ```
//! use std::net::SocketAddr;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::key::PeerIp;
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let limit = RateLimitLayer::builder()
//!     .quota(Quota::per_minute(1))
//!     .key(PeerIp::new())
//!     .grpc()
//!     .build()
//!     .unwrap();
//! let mut svc = limit.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
//! }));
//! let call = || {
//!     let mut req = http::Request::new(());
//!     req.extensions_mut().insert("192.0.2.7:50051".parse::<SocketAddr>().unwrap());
//!     req
//! };
//! let ok = svc.ready().await.unwrap().call(call()).await.unwrap();
//! assert!(ok.headers().get("grpc-status").is_none());
//! let refused = svc.ready().await.unwrap().call(call()).await.unwrap();
//! assert_eq!(refused.headers()["grpc-status"], "8"); // RESOURCE_EXHAUSTED
//! assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "60000");
//! # }
//! ```

use std::fmt::Write;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use bytes::Bytes;
use http::HeaderValue;

use crate::rejection::{Rejection, RejectionMode};

/// `grpc-status`.
pub const GRPC_STATUS: &str = "grpc-status";
/// `grpc-message`.
pub const GRPC_MESSAGE: &str = "grpc-message";
/// `grpc-retry-pushback-ms`: how long a client should wait before retrying, in milliseconds.
pub const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
/// `grpc-status-details-bin`: a base64 `google.rpc.Status` with details.
pub const GRPC_STATUS_DETAILS_BIN: &str = "grpc-status-details-bin";

/// Rejection mode for gRPC services: a refusal becomes a trailers-only gRPC response; the inner
/// service's errors pass through unchanged. Works with any body type with a `Default` (tonic's).
#[derive(Clone, Copy, Debug, Default)]
pub struct AsGrpc;

impl AsGrpc {
    /// The gRPC mode.
    pub const fn new() -> Self {
        Self
    }

    /// Builds the trailers-only response for `rejection`.
    pub fn response<B: Default>(&self, rejection: &dyn Rejection) -> http::Response<B> {
        let mut res = http::Response::new(B::default());
        let code = rejection.kind().grpc_code();
        let message = rejection.to_string();
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS, code.into());
        h.insert(
            GRPC_MESSAGE,
            HeaderValue::from_str(&percent_encode(&message)).expect("percent-encoded is ASCII"),
        );
        if let Some(retry_after) = rejection.retry_after() {
            h.insert(GRPC_RETRY_PUSHBACK_MS, pushback_ms(retry_after).into());
            let details = status_details(code, &message, Some(retry_after));
            let encoded = STANDARD_NO_PAD.encode(details);
            h.insert(
                GRPC_STATUS_DETAILS_BIN,
                HeaderValue::from_str(&encoded).expect("base64 is ASCII"),
            );
        }
        rejection.write_headers(h);
        res
    }
}

impl<B, E> RejectionMode<http::Response<B>, E> for AsGrpc
where
    B: Default + 'static,
    E: 'static,
{
    type Error = E;

    const WRITES_HEADERS: bool = true;

    fn reject<R: Rejection>(&self, rejection: R) -> Result<http::Response<B>, E> {
        Ok(self.response(&rejection))
    }

    #[inline]
    fn headers_mut(res: &mut http::Response<B>) -> Option<&mut http::HeaderMap> {
        Some(res.headers_mut())
    }
}

/// Whole milliseconds, rounded up (at least 1), so a client that waits that long is never early.
fn pushback_ms(d: Duration) -> u64 {
    let ms = d.as_nanos().div_ceil(1_000_000);
    u64::try_from(ms).unwrap_or(u64::MAX).max(1)
}

/// Percent-encodes a `grpc-message` as the gRPC HTTP/2 protocol requires.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Encodes a `google.rpc.Status { code, message, details: [RetryInfo { retry_delay }] }`.
pub(crate) fn status_details(code: i32, message: &str, retry_delay: Option<Duration>) -> Bytes {
    let mut status = Vec::with_capacity(96);
    put_varint_field(&mut status, 1, code as u64);
    put_bytes_field(&mut status, 2, message.as_bytes());
    if let Some(delay) = retry_delay {
        let mut duration = Vec::with_capacity(12);
        put_varint_field(&mut duration, 1, delay.as_secs());
        put_varint_field(&mut duration, 2, u64::from(delay.subsec_nanos()));
        let mut retry_info = Vec::with_capacity(16);
        put_bytes_field(&mut retry_info, 1, &duration);
        let mut any = Vec::with_capacity(64);
        put_bytes_field(&mut any, 1, b"type.googleapis.com/google.rpc.RetryInfo");
        put_bytes_field(&mut any, 2, &retry_info);
        put_bytes_field(&mut status, 3, &any);
    }
    Bytes::from(status)
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

#[cfg(feature = "tonic")]
mod tonic_status {
    use super::status_details;
    use crate::rejection::Rejection;

    /// Converts a refusal to a `tonic::Status` carrying the same retry information as [`AsGrpc`]
    /// responses.
    ///
    /// [`AsGrpc`]: super::AsGrpc
    pub fn to_status(rejection: &dyn Rejection) -> tonic::Status {
        let code = tonic::Code::from_i32(rejection.kind().grpc_code());
        let message = rejection.to_string();
        let details = status_details(code as i32, &message, rejection.retry_after());
        let mut status = tonic::Status::with_details(code, message, details);
        if let Some(retry_after) = rejection.retry_after() {
            status.metadata_mut().insert(
                super::GRPC_RETRY_PUSHBACK_MS,
                super::pushback_ms(retry_after).into(),
            );
        }
        status
    }

    /// The `tonic::Status` for an error from a layer in the default (`BoxError`) mode, if it is one
    /// of this crate's refusals.
    pub fn status_from_error(err: &(dyn std::error::Error + 'static)) -> Option<tonic::Status> {
        #[cfg(feature = "rate-limit")]
        {
            use crate::rate_limit::error::{KeyMissing, RateLimited};
            if let Some(r) = err.downcast_ref::<RateLimited>() {
                return Some(to_status(r));
            }
            if let Some(r) = err.downcast_ref::<KeyMissing>() {
                return Some(to_status(r));
            }
        }
        #[cfg(feature = "circuit-breaker")]
        if let Some(r) = err.downcast_ref::<crate::circuit_breaker::error::CircuitOpen>() {
            return Some(to_status(r));
        }
        if let Some(r) = err.downcast_ref::<crate::backend::BackendUnavailable>() {
            return Some(to_status(r));
        }
        #[cfg(feature = "retry")]
        if let Some(r) = err.downcast_ref::<crate::retry::error::AttemptTimedOut>() {
            return Some(to_status(r));
        }
        None
    }

    #[cfg(feature = "retry")]
    impl From<crate::retry::error::AttemptTimedOut> for tonic::Status {
        fn from(r: crate::retry::error::AttemptTimedOut) -> Self {
            to_status(&r)
        }
    }

    #[cfg(feature = "circuit-breaker")]
    impl From<crate::circuit_breaker::error::CircuitOpen> for tonic::Status {
        fn from(r: crate::circuit_breaker::error::CircuitOpen) -> Self {
            to_status(&r)
        }
    }

    #[cfg(feature = "rate-limit")]
    impl From<crate::rate_limit::error::RateLimited> for tonic::Status {
        fn from(r: crate::rate_limit::error::RateLimited) -> Self {
            to_status(&r)
        }
    }

    #[cfg(feature = "rate-limit")]
    impl From<crate::rate_limit::error::KeyMissing> for tonic::Status {
        fn from(r: crate::rate_limit::error::KeyMissing) -> Self {
            to_status(&r)
        }
    }

    impl From<crate::backend::BackendUnavailable> for tonic::Status {
        fn from(r: crate::backend::BackendUnavailable) -> Self {
            to_status(&r)
        }
    }
}

#[cfg(feature = "tonic")]
pub use self::tonic_status::{status_from_error, to_status};

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
    fn percent_encoding_follows_the_grpc_spec() {
        assert_eq!(percent_encode("rate limit exceeded"), "rate limit exceeded");
        assert_eq!(
            percent_encode("50% ünïcode\n"),
            "50%25 %C3%BCn%C3%AFcode%0A"
        );
    }

    #[test]
    fn status_details_are_valid_protobuf() {
        // Status{code=8, message="x", details=[Any{RetryInfo{Duration{seconds=6, nanos=5}}}]}
        let b = status_details(8, "x", Some(Duration::new(6, 5)));
        let url = b"type.googleapis.com/google.rpc.RetryInfo";
        let mut expected = vec![0x08, 8, 0x12, 1, b'x', 0x1a, (2 + url.len() + 2 + 6) as u8];
        expected.extend([0x0a, url.len() as u8]);
        expected.extend(url);
        expected.extend([0x12, 6, 0x0a, 4, 0x08, 6, 0x10, 5]);
        assert_eq!(&b[..], &expected[..]);
    }
}
