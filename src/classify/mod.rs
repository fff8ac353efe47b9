//! What counts as a failure, and what is worth another attempt: one classifier family for the
//! circuit breaker and for retries.
//!
//! A [`Classify`] looks at the result of a call and returns a [`Verdict`]. Each layer reads the
//! part it needs:
//!
//! | verdict | the circuit breaker counts | retry |
//! |---|---|---|
//! | [`Success`](Verdict::Success): done, or failed by the caller's fault (a `404`) | a success | returns it |
//! | [`Failure`](Verdict::Failure): the upstream failed, another attempt would not fix it (a `500`) | a failure | returns it |
//! | [`Transient`](Verdict::Transient): the upstream failed, another attempt may work (a `503`, an error) | a failure | tries again |
//! | [`Throttled`](Verdict::Throttled): turned away, worth another attempt later (a `429`) | a success | tries again |
//! | [`Refused`](Verdict::Refused): refused by one of this crate's layers below, before the upstream (see [`Refused`](crate::rejection::Refused)) | nothing | tries again only when the layer will admit in time |
//!
//! The retried verdicts carry a [`Pushback`]: how long the server asked the client to wait
//! (`Retry-After`, gRPC pushback or `google.rpc.RetryInfo`), that it asked not to retry at all,
//! or how long a layer below will refuse.
//!
//! One classifier serves both layers, with the same defaults:
//!
//! - [`ErrorsAreFailures`] (the default of both layers): an `Err` from the inner service is a
//!   transient failure, any response a success.
//! - [`HttpClassifier`] (feature `http`; what `.http()` sets on both layers): errors and `502`,
//!   `503`, `504` are transient, other `5xx` failures, `429` throttled; honours `Retry-After`.
//!   Both status sets can be changed.
//! - [`GrpcClassifier`] (feature `http`; what `.grpc()` sets on both layers): errors and
//!   `UNAVAILABLE` are transient; `UNKNOWN`, `DEADLINE_EXCEEDED` and `INTERNAL` failures;
//!   `RESOURCE_EXHAUSTED` throttled; honours the server's pushback. Status codes are typed
//!   ([`GrpcCode`]).
//! - [`classify_fn`]: any closure.
//!
//! Set a classifier with `.classify(c)` on [`RetryBuilder`](crate::retry::RetryBuilder) or
//! [`CircuitBreakerBuilder`](crate::circuit_breaker::CircuitBreakerBuilder).
//!
//! # Example
//!
//! ```
//! use std::io;
//! use tower_rampart::classify::{Reason, Verdict, classify_fn};
//! use tower_rampart::circuit_breaker::CircuitBreakerLayer;
//! use tower_rampart::retry::RetryLayer;
//!
//! // Connection failures trip the circuit and are retried; "not found" answers do neither.
//! let classify = classify_fn(|r: &Result<String, io::Error>| match r {
//!     Err(e) if e.kind() == io::ErrorKind::NotFound => Verdict::Success,
//!     Err(_) => Verdict::transient(Reason::Error),
//!     Ok(_) => Verdict::Success,
//! });
//! let retry = RetryLayer::builder().classify(classify.clone()).build().unwrap();
//! let breaker = CircuitBreakerLayer::builder()
//!     .consecutive_failures(5)
//!     .classify(classify)
//!     .build()
//!     .unwrap();
//! # let _ = (retry, breaker);
//! ```

mod code;
mod function;
#[cfg(feature = "http")]
mod grpc;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "http")]
pub(crate) mod retry_info;

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

pub use self::code::{GrpcCode, UnknownCode};
pub use self::function::{ClassifyFn, classify_fn};
#[cfg(feature = "http")]
pub use self::grpc::{GRPC_STATUS, GrpcClassifier};
#[cfg(feature = "http")]
pub use self::http::HttpClassifier;
#[cfg(feature = "http")]
pub use self::retry_info::{GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS_DETAILS_BIN};

/// What the result of a call was, for the circuit breaker and for retries (see the
/// [module documentation](self) for how each reads it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// The call succeeded, or failed by no fault of the upstream's (a `404`): not a failure, not
    /// retried.
    Success,
    /// The upstream failed, and another attempt would not fix it: a failure, not retried.
    Failure {
        /// What failed, for logs and metrics.
        reason: Reason,
    },
    /// The upstream failed in a way another attempt may fix: a failure, retried.
    Transient {
        /// What failed, for logs and metrics.
        reason: Reason,
        /// What the server said about another attempt.
        pushback: Pushback,
    },
    /// The call was turned away (`429`, `RESOURCE_EXHAUSTED`), with no sign that the upstream is
    /// broken: not a failure, but retried.
    Throttled {
        /// What turned it away, for logs and metrics.
        reason: Reason,
        /// What the server said about another attempt.
        pushback: Pushback,
    },
    /// The call was refused by one of this crate's layers below, before the upstream was called
    /// (see [`Refused`](crate::rejection::Refused)): neither a success nor a failure (a circuit
    /// breaker counts nothing, and a half-open probe's permit goes back), retried as `pushback`
    /// says.
    Refused {
        /// What refused it, for logs and metrics.
        reason: Reason,
        /// When the layer admits again.
        pushback: Pushback,
    },
}

impl Verdict {
    /// A failure that another attempt would not fix.
    pub const fn failure(reason: Reason) -> Self {
        Self::Failure { reason }
    }

    /// A transient failure, retried after the backoff's delay.
    pub const fn transient(reason: Reason) -> Self {
        Self::Transient {
            reason,
            pushback: Pushback::None,
        }
    }

    /// A transient failure, retried not before `after` (as the server asked).
    pub const fn transient_after(reason: Reason, after: Duration) -> Self {
        Self::Transient {
            reason,
            pushback: Pushback::After(after),
        }
    }

    /// Turned away, retried after the backoff's delay.
    pub const fn throttled(reason: Reason) -> Self {
        Self::Throttled {
            reason,
            pushback: Pushback::None,
        }
    }

    /// Whether a circuit breaker counts it as a failure ([`Failure`](Self::Failure) or
    /// [`Transient`](Self::Transient)).
    pub const fn is_failure(&self) -> bool {
        matches!(self, Self::Failure { .. } | Self::Transient { .. })
    }

    /// Whether it is worth another attempt, unless the server (or the layer that refused) said
    /// otherwise ([`Transient`](Self::Transient), [`Throttled`](Self::Throttled) or
    /// [`Refused`](Self::Refused)).
    pub const fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Transient { .. } | Self::Throttled { .. } | Self::Refused { .. }
        )
    }

    /// What failed, unless it is a success.
    pub const fn reason(&self) -> Option<Reason> {
        match *self {
            Self::Success => None,
            Self::Failure { reason }
            | Self::Transient { reason, .. }
            | Self::Throttled { reason, .. }
            | Self::Refused { reason, .. } => Some(reason),
        }
    }
}

/// What the server said about another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushback {
    /// Nothing: the backoff decides.
    None,
    /// Not before this long (`Retry-After`, `grpc-retry-pushback-ms`, `google.rpc.RetryInfo`): a
    /// retry waits at least this long, and one that would wait longer than its longest delay or
    /// past its deadline gives up instead (the caller gets the answer and the server's wish).
    After(Duration),
    /// Not before this long, and no sooner would do: the refusal of a layer that knows when it
    /// admits again (a rate limit's quota; see [`Refused`](crate::rejection::Refused)). A retry
    /// that would not wait this long (past its longest delay or its deadline) gives up at once
    /// rather than be refused again.
    NotBefore(Duration),
    /// Do not retry (gRPC's negative or unreadable `grpc-retry-pushback-ms`).
    DoNotRetry,
}

/// Why a call failed, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The inner service returned an error.
    Error,
    /// An HTTP response with this status.
    Status(u16),
    /// A gRPC response with this `grpc-status` code.
    GrpcStatus(GrpcCode),
    /// The attempt ran out of time.
    TimedOut,
    /// Something else, named by a custom classifier.
    Other(&'static str),
}

impl Reason {
    /// A short label for metrics: `error`, the HTTP status (`503`), the gRPC code name
    /// (`UNAVAILABLE`), `timeout`, or a custom classifier's own.
    pub fn label(&self) -> Cow<'static, str> {
        match *self {
            Self::Error => "error".into(),
            Self::Status(code) => code.to_string().into(),
            Self::GrpcStatus(code) => code.name().into(),
            Self::TimedOut => "timeout".into(),
            Self::Other(s) => s.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Error => f.write_str("error"),
            Self::Status(code) => write!(f, "status {code}"),
            Self::GrpcStatus(code) => {
                write!(f, "grpc-status {} {}", code.as_i32(), code.name())
            }
            Self::TimedOut => f.write_str("attempt timed out"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// Classifies the result of a call.
///
/// The circuit breaker also needs the classifier to be `Clone` (each call's future holds one).
pub trait Classify<Res, E>: Send + Sync + 'static {
    /// What `result` was.
    fn classify(&self, result: &Result<Res, E>) -> Verdict;

    /// Called by the retry layer on the final response, which took `attempts` attempts (default:
    /// nothing). The HTTP and gRPC classifiers insert the [`Attempts`] extension, and, when
    /// asked, an `x-retry-attempts` header.
    fn record_attempts(&self, response: &mut Res, attempts: u32) {
        let _ = (response, attempts);
    }
}

/// The default of both layers: an `Err` from the inner service is a transient failure (the
/// circuit counts it, retry tries again), any response a success.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAreFailures;

impl<Res, E: 'static> Classify<Res, E> for ErrorsAreFailures {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Success,
            Err(e) => refused_or(e, Verdict::transient(Reason::Error)),
        }
    }
}

/// The verdict on `error`: a refusal by one of this crate's layers as [`Refused`] reads it,
/// anything else `otherwise`.
///
/// [`Refused`]: crate::rejection::Refused
#[inline]
pub(crate) fn refused_or<E: 'static>(error: &E, otherwise: Verdict) -> Verdict {
    crate::rejection::Refused::from_error(error)
        .and_then(crate::rejection::Refused::verdict)
        .unwrap_or(otherwise)
}

/// How many attempts a request took, the first included: an extension on the final response of
/// the retry layer, set by the HTTP and gRPC classifiers. Also at
/// [`retry::Attempts`](crate::retry::Attempts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Attempts(pub u32);

impl Attempts {
    /// The attempts after the first.
    pub const fn retries(self) -> u32 {
        self.0.saturating_sub(1)
    }
}

/// `x-retry-attempts`: the number of attempts a response took, when asked for.
#[cfg(feature = "http")]
pub static X_RETRY_ATTEMPTS: ::http::HeaderName =
    ::http::HeaderName::from_static("x-retry-attempts");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_reads_its_part() {
        let r = Reason::Status(503);
        let cases = [
            (Verdict::Success, false, false),
            (Verdict::failure(r), true, false),
            (Verdict::transient(r), true, true),
            (Verdict::throttled(r), false, true),
        ];
        for (v, failure, retryable) in cases {
            assert_eq!(v.is_failure(), failure, "{v:?}");
            assert_eq!(v.is_retryable(), retryable, "{v:?}");
        }
        assert_eq!(Verdict::Success.reason(), None);
        assert_eq!(Verdict::transient(r).reason(), Some(r));
    }

    #[test]
    fn reasons_have_labels() {
        assert_eq!(
            Reason::GrpcStatus(GrpcCode::Unavailable).label(),
            "UNAVAILABLE"
        );
        assert_eq!(
            Reason::GrpcStatus(GrpcCode::Unavailable).to_string(),
            "grpc-status 14 UNAVAILABLE"
        );
        assert_eq!(Reason::Status(503).label(), "503");
        assert_eq!(Reason::TimedOut.label(), "timeout");
    }
}
