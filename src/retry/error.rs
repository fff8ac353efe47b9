//! What a request that failed through the retry layer ends with, in the default (`BoxError`) mode.
//!
//! - The inner service's error from the last attempt, inside a [`LastError`] that says how many
//!   attempts were made (its [`source`](std::error::Error::source) is the inner error).
//! - [`AttemptTimedOut`] when the last attempt ran out of time: its own per-attempt timeout, or the
//!   request's deadline.
//!
//! [`attempts`] reads the count from either. In the HTTP and gRPC modes the inner error passes
//! through unchanged, with no attempt count, and a timeout becomes a `504` / `DEADLINE_EXCEEDED`
//! response (with the [`Attempts`](super::Attempts) extension) instead.
//!
//! # Example
//!
//! ```
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::retry::{Backoff, RetryLayer, error::LastError};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let layer = RetryLayer::builder()
//!     .max_attempts(3)
//!     .backoff(Backoff::fixed(std::time::Duration::from_millis(10)))
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(service_fn(|_: ()| async {
//!     Err::<(), BoxError>(std::io::Error::other("connection refused").into())
//! }));
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let last = err.downcast_ref::<LastError>().expect("the last attempt's error");
//! assert_eq!(last.attempts(), 3);
//! assert!(last.get_ref().is::<std::io::Error>());
//! assert_eq!(err.to_string(), "connection refused (after 3 attempts)");
//! # }
//! ```

use std::error::Error;
use std::fmt;

use super::policy::TimeLimit;
use crate::error::BoxError;
use crate::rejection::{Rejection, RejectionKind};

/// The inner service's error that ended a request, with the number of attempts made.
///
/// Its `source` is the inner error: `tonic::Status::from_error` and other source-chain walkers
/// find it there.
#[derive(Debug)]
pub struct LastError {
    attempts: u32,
    inner: BoxError,
}

impl LastError {
    pub(crate) fn new(inner: BoxError, attempts: u32) -> Self {
        Self { attempts, inner }
    }

    /// How many attempts were made, the first included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The inner service's error.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.inner
    }

    /// Unwraps the inner service's error.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }
}

impl fmt::Display for LastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.attempts {
            1 => write!(f, "{} (after 1 attempt)", self.inner),
            n => write!(f, "{} (after {n} attempts)", self.inner),
        }
    }
}

impl Error for LastError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.inner)
    }
}

/// The last attempt ran out of time, and no retry could follow: it was the last allowed, the
/// request's deadline cut it short, or retrying timeouts is off.
///
/// In HTTP mode it becomes a `504 Gateway Timeout`, in gRPC mode `DEADLINE_EXCEEDED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptTimedOut {
    attempts: u32,
    limit: TimeLimit,
}

impl AttemptTimedOut {
    pub(crate) const fn new(attempts: u32, limit: TimeLimit) -> Self {
        Self { attempts, limit }
    }

    /// How many attempts were made, the one that timed out included.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether it was the request's overall deadline, rather than the attempt's own timeout, that
    /// ran out.
    pub fn is_deadline(&self) -> bool {
        self.limit == TimeLimit::Deadline
    }

    /// Which limit ran out.
    pub fn limit(&self) -> TimeLimit {
        self.limit
    }
}

impl fmt::Display for AttemptTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.limit {
            TimeLimit::Attempt => "attempt timed out",
            TimeLimit::Deadline => "deadline exceeded",
        })
    }
}

impl Error for AttemptTimedOut {}

impl Rejection for AttemptTimedOut {
    fn kind(&self) -> RejectionKind {
        RejectionKind::TimedOut
    }
}

/// The number of attempts behind an error from the retry layer: a [`LastError`] or an
/// [`AttemptTimedOut`], found in `err` or its sources (so also through other layers that wrap it).
pub fn attempts(err: &(dyn Error + 'static)) -> Option<u32> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(last) = e.downcast_ref::<LastError>() {
            return Some(last.attempts());
        }
        if let Some(t) = e.downcast_ref::<AttemptTimedOut>() {
            return Some(t.attempts());
        }
        next = e.source();
    }
    None
}
