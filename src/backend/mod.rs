//! State backends: where the layers keep what they remember.
//!
//! Each layer owns the trait for the state it needs (for example
//! [`RateLimitStore`](crate::rate_limit::RateLimitStore)); the backends here implement them.
//!
//! - [`memory`] (feature `memory`, on by default): bounded, in-process, lock-free on the hot path.
//! - [`redis`] (feature `redis`): shared by every replica of an application, with a
//!   [`FailurePolicy`] for when Redis is slow or gone.
//! - [`Backend`] (feature `redis`): either of the two, chosen at run time, with one type.

use std::fmt;

#[cfg(feature = "redis")]
mod either;
#[cfg(feature = "memory")]
pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "redis")]
pub use self::either::{Backend, EitherFuture, EitherStore, RedisModeStore};
#[cfg(feature = "memory")]
pub use self::memory::MemoryBackend;
#[cfg(feature = "redis")]
pub use self::redis::{FailurePolicy, RedisBackend, RedisConnection};

/// The result of a store operation, for every layer's store: known now (the in-memory stores,
/// always, so their hot path allocates nothing and never yields), or a future when it needs I/O
/// (Redis).
#[derive(Debug)]
pub enum StoreOp<T, F> {
    /// Done without I/O.
    Ready(Result<T, BackendError>),
    /// Done once the future completes.
    Pending(F),
}

/// The backend of a builder that has not been given one while the `memory` feature (the default
/// backend) is off: call the builder's `backend(..)` before `build`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBackend;

/// A backend could not answer (Redis unreachable, timed out, or holding data it cannot read).
///
/// The in-memory backend never fails. Layers turn this error into a refusal or let the request
/// through according to their failure policy.
#[derive(Debug)]
pub struct BackendError {
    message: String,
    source: Option<crate::BoxError>,
    kind: ErrorKind,
}

/// What kind of failure a [`BackendError`] is (private: read through the `is_*` accessors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) enum ErrorKind {
    /// The backend could not be reached (refused, dropped, or known to be down).
    Unreachable,
    /// The backend did not answer in time.
    Timeout,
    /// The backend answered, but holds data at the key that cannot be read.
    Data,
    /// Anything else.
    Other,
}

impl BackendError {
    /// An error with a lowercase message and an optional cause.
    pub fn new(message: impl Into<String>, source: Option<crate::BoxError>) -> Self {
        Self::with_kind(ErrorKind::Other, message, source)
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_kind(
        kind: ErrorKind,
        message: impl Into<String>,
        source: Option<crate::BoxError>,
    ) -> Self {
        Self {
            message: message.into(),
            source,
            kind,
        }
    }

    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the backend could not be reached (connection refused or dropped, or known to be
    /// down and not retried until its next probe).
    pub fn is_unreachable(&self) -> bool {
        self.kind == ErrorKind::Unreachable
    }

    /// Whether the backend did not answer within its timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether the backend answered but holds data it cannot read at the key (corrupt, foreign, or
    /// written by an incompatible version).
    pub fn is_corrupt_data(&self) -> bool {
        self.kind == ErrorKind::Data
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl BackendError {
    /// The cause, taken out.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn into_source(self) -> Option<crate::BoxError> {
        self.source
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// A request was refused because a shared backend could not decide and the layer's failure policy
/// refuses in that case (HTTP 503, gRPC `UNAVAILABLE`).
#[derive(Debug)]
pub struct BackendUnavailable {
    cause: BackendError,
}

impl BackendUnavailable {
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(crate) fn new(cause: BackendError) -> Self {
        Self { cause }
    }

    /// What went wrong with the backend.
    pub fn cause(&self) -> &BackendError {
        &self.cause
    }
}

impl fmt::Display for BackendUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "backend unavailable: {}", self.cause)
    }
}

impl std::error::Error for BackendUnavailable {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

impl crate::rejection::Rejection for BackendUnavailable {
    fn kind(&self) -> crate::rejection::RejectionKind {
        crate::rejection::RejectionKind::BackendUnavailable
    }
}
