//! Refusals made by the circuit breaker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::transition::CircuitState;
use crate::rejection::{Rejection, RejectionKind};

/// The call was refused because the circuit is open, forced open, or half-open with all its probe
/// permits taken.
///
/// In HTTP mode it becomes a 503 (with `Retry-After` when the wait's end is known), in gRPC mode
/// `UNAVAILABLE` with retry info.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CircuitOpen {
    name: &'static str,
    key: Option<Arc<str>>,
    state: CircuitState,
    retry_after: Option<Duration>,
}

impl CircuitOpen {
    pub(crate) const fn new(
        name: &'static str,
        key: Option<Arc<str>>,
        state: CircuitState,
        retry_after: Option<Duration>,
    ) -> Self {
        Self {
            name,
            key,
            state,
            retry_after,
        }
    }

    /// The circuit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// For one of a layer's per-key circuits, its key (as text): which upstream is refused.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The state that refused the call: open, forced open or half-open.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// For an open circuit, how long until it lets a probe through; unknown otherwise.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for CircuitOpen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit open")
    }
}

impl std::error::Error for CircuitOpen {}

impl Rejection for CircuitOpen {
    fn kind(&self) -> RejectionKind {
        RejectionKind::CircuitOpen
    }

    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}
