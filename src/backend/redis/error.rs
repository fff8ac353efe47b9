//! Where Redis errors become [`BackendError`]s of the right kind (and back, for a
//! [`RedisConnection`](super::RedisConnection)'s caller), with the labels metrics count them by.

use std::time::Duration;

use redis::{ErrorKind as RedisErrorKind, RedisError, ServerErrorKind};

use crate::backend::{BackendError, ErrorKind};

/// A failed call of a [`RedisConnection`](super::RedisConnection) as `redis`'s own error: the one
/// Redis or the client answered, or, on the timeout, an I/O error of kind `TimedOut`.
pub(super) fn into_redis_error(e: BackendError, timeout: Duration) -> RedisError {
    match e.into_source().map(|s| s.downcast::<RedisError>()) {
        Some(Ok(e)) => *e,
        _ => RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("redis did not answer within {timeout:?}"),
        )),
    }
}

/// The error code of a script that ran past its caller's deadline
/// ([`Conn::eval_before_deadline`]).
pub(super) const LATE: &str = "RAMPARTLATE";

#[cfg(feature = "metrics")]
pub(super) fn kind_index(kind: ErrorKind) -> usize {
    match kind {
        ErrorKind::Unreachable => 0,
        ErrorKind::Timeout => 1,
        ErrorKind::Data => 2,
        ErrorKind::Other => 3,
    }
}

#[cfg(feature = "metrics")]
pub(super) fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Unreachable => "unreachable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Data => "data",
        ErrorKind::Other => "other",
    }
}

/// Turns a `redis` error into a [`BackendError`] of the right kind.
pub(crate) fn classify(e: RedisError) -> BackendError {
    let kind = if e.code() == Some("RAMPARTDATA") || e.code() == Some("WRONGTYPE") {
        ErrorKind::Data
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || matches!(
            e.kind(),
            RedisErrorKind::ClusterConnectionNotFound
                | RedisErrorKind::Server(
                    ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                )
        )
    {
        if e.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Unreachable
        }
    } else {
        ErrorKind::Other
    };
    let message = match kind {
        ErrorKind::Other if e.code() == Some(LATE) => {
            "redis ran the call after its deadline by its own clock (was its clock stepped?), \
             so it did not count"
                .to_string()
        }
        ErrorKind::Data => match e.detail() {
            Some(detail) => format!("redis holds data the store cannot read: {detail}"),
            None => "redis holds data the store cannot read".to_string(),
        },
        ErrorKind::Unreachable => "redis is unreachable".to_string(),
        ErrorKind::Timeout => "redis timed out".to_string(),
        ErrorKind::Other => "redis call failed".to_string(),
    };
    BackendError::with_kind(kind, message, Some(Box::new(e)))
}
