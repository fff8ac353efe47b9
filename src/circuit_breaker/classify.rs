//! Deciding whether a call succeeded or failed, for the circuit's purposes.
//!
//! - [`ErrorsAreFailures`] (the default): an `Err` from the inner service is a failure, any response a
//!   success.
//! - [`HttpClassifier`] (feature `http`): also a 5xx response is a failure; 4xx are the client's
//!   problem, not the upstream's, and count as successes, except `429` if told so.
//! - [`GrpcClassifier`] (feature `http`): also a response whose `grpc-status` is `UNAVAILABLE`,
//!   `DEADLINE_EXCEEDED`, `INTERNAL` or `UNKNOWN` is a failure.
//! - [`classify_fn`]: any closure.
//!
//! # Example
//!
//! ```
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, Outcome, classify::classify_fn};
//!
//! // Timeouts trip the circuit; "not found" answers do not.
//! let layer = CircuitBreakerLayer::builder()
//!     .consecutive_failures(5)
//!     .classifier(classify_fn(|r: &Result<u16, std::io::Error>| match r {
//!         Ok(status) if *status >= 500 => Outcome::Failure,
//!         Ok(_) => Outcome::Success,
//!         Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Success,
//!         Err(_) => Outcome::Failure,
//!     }))
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! ```

use std::fmt;
use std::marker::PhantomData;

/// How a finished call counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The upstream did its job.
    Success,
    /// The upstream failed; counts towards opening the circuit.
    Failure,
}

/// Classifies the result of a call.
pub trait Classify<Res, E>: Clone + Send + Sync + 'static {
    /// How `result` counts.
    fn classify(&self, result: &Result<Res, E>) -> Outcome;
}

/// The default: errors are failures, responses successes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAreFailures;

impl<Res, E> Classify<Res, E> for ErrorsAreFailures {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// Classifies with a closure. Made by [`classify_fn`].
pub struct ClassifyFn<F, Res, E> {
    f: F,
    _types: PhantomData<fn(&Result<Res, E>)>,
}

/// Classifies results with `f`.
pub fn classify_fn<F, Res, E>(f: F) -> ClassifyFn<F, Res, E>
where
    F: Fn(&Result<Res, E>) -> Outcome,
{
    ClassifyFn {
        f,
        _types: PhantomData,
    }
}

impl<F: Clone, Res, E> Clone for ClassifyFn<F, Res, E> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _types: PhantomData,
        }
    }
}

impl<F, Res, E> fmt::Debug for ClassifyFn<F, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F, Res, E>
where
    F: Fn(&Result<Res, E>) -> Outcome + Clone + Send + Sync + 'static,
    Res: 'static,
    E: 'static,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Outcome {
        (self.f)(result)
    }
}

/// HTTP: errors and 5xx responses are failures; other responses are successes, except `429 Too Many
/// Requests` when [`rate_limited_is_failure`](Self::rate_limited_is_failure) is set.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct HttpClassifier {
    too_many_requests_fails: bool,
}

#[cfg(feature = "http")]
impl HttpClassifier {
    /// 5xx and errors are failures.
    pub const fn new() -> Self {
        Self {
            too_many_requests_fails: false,
        }
    }

    /// Also count `429 Too Many Requests` as a failure (an upstream shedding load).
    #[must_use]
    pub const fn rate_limited_is_failure(mut self, yes: bool) -> Self {
        self.too_many_requests_fails = yes;
        self
    }
}

#[cfg(feature = "http")]
impl<B, E> Classify<http::Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(res) if res.status().is_server_error() => Outcome::Failure,
            Ok(res)
                if self.too_many_requests_fails
                    && res.status() == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Failure
            }
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// gRPC: errors, and responses whose `grpc-status` header is `UNKNOWN` (2), `DEADLINE_EXCEEDED` (4),
/// `INTERNAL` (13) or `UNAVAILABLE` (14), are failures.
///
/// A status sent in trailers (after a streamed body) is not seen when the response starts, so only
/// trailers-only responses, which is how servers answer unary calls that fail, are classified by
/// status.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcClassifier;

#[cfg(feature = "http")]
impl<B, E> Classify<http::Response<B>, E> for GrpcClassifier {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Outcome {
        match result {
            Ok(res) => match res.headers().get("grpc-status").map(|v| v.as_bytes()) {
                Some(b"2" | b"4" | b"13" | b"14") => Outcome::Failure,
                _ => Outcome::Success,
            },
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    fn res(status: u16, grpc: Option<&'static str>) -> Result<http::Response<()>, ()> {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap();
        if let Some(g) = grpc {
            r.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(g));
        }
        Ok(r)
    }

    #[test]
    fn http_classifier() {
        let c = HttpClassifier::new();
        assert_eq!(c.classify(&res(200, None)), Outcome::Success);
        assert_eq!(c.classify(&res(404, None)), Outcome::Success);
        assert_eq!(c.classify(&res(429, None)), Outcome::Success);
        assert_eq!(c.classify(&res(503, None)), Outcome::Failure);
        assert_eq!(
            c.classify(&Err::<http::Response<()>, ()>(())),
            Outcome::Failure
        );
        let c = c.rate_limited_is_failure(true);
        assert_eq!(c.classify(&res(429, None)), Outcome::Failure);
    }

    #[test]
    fn grpc_classifier() {
        let c = GrpcClassifier;
        assert_eq!(c.classify(&res(200, None)), Outcome::Success);
        assert_eq!(c.classify(&res(200, Some("0"))), Outcome::Success);
        assert_eq!(
            c.classify(&res(200, Some("5"))),
            Outcome::Success,
            "NOT_FOUND"
        );
        for code in ["2", "4", "13", "14"] {
            assert_eq!(
                c.classify(&res(200, Some(code))),
                Outcome::Failure,
                "{code}"
            );
        }
    }
}
