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

use http::HeaderValue;

use crate::classify::retry_info::{details_header, pushback_ms, status_details};
pub use crate::classify::{GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GRPC_STATUS_DETAILS_BIN};
use crate::rejection::{Rejection, RejectionMode};

/// `grpc-message`.
pub const GRPC_MESSAGE: &str = "grpc-message";

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
        res.extensions_mut()
            .insert(crate::rejection::Refused::of(rejection));
        let code = rejection.kind().grpc_code();
        let message = rejection.to_string();
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        h.insert(GRPC_STATUS, code.as_i32().into());
        h.insert(
            GRPC_MESSAGE,
            HeaderValue::from_str(&percent_encode(&message)).expect("percent-encoded is ASCII"),
        );
        if let Some(retry_after) = rejection.retry_after() {
            h.insert(GRPC_RETRY_PUSHBACK_MS, pushback_ms(retry_after).into());
            let details = status_details(code, &message, Some(retry_after));
            h.insert(GRPC_STATUS_DETAILS_BIN, details_header(&details));
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

#[cfg(feature = "tonic")]
mod tonic_status {
    use crate::classify::retry_info::{pushback_ms, status_details};
    use crate::rejection::Rejection;

    /// Converts a refusal to a `tonic::Status` carrying the same retry information as [`AsGrpc`]
    /// responses.
    ///
    /// [`AsGrpc`]: super::AsGrpc
    pub fn to_status(rejection: &dyn Rejection) -> tonic::Status {
        let code = rejection.kind().grpc_code();
        let message = rejection.to_string();
        let details = status_details(code, &message, rejection.retry_after());
        let mut status = tonic::Status::with_details(code.into(), message, details);
        if let Some(retry_after) = rejection.retry_after() {
            status.metadata_mut().insert(
                super::GRPC_RETRY_PUSHBACK_MS,
                pushback_ms(retry_after).into(),
            );
        }
        status
    }

    /// The `tonic::Status` for an error from a layer in the default (`BoxError`) mode, if it is one
    /// of this crate's refusals.
    pub fn status_from_error(err: &(dyn std::error::Error + 'static)) -> Option<tonic::Status> {
        crate::rejection::rejection_in(err).map(to_status)
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
    fn percent_encoding_follows_the_grpc_spec() {
        assert_eq!(percent_encode("rate limit exceeded"), "rate limit exceeded");
        assert_eq!(
            percent_encode("50% ünïcode\n"),
            "50%25 %C3%BCn%C3%AFcode%0A"
        );
    }
}
