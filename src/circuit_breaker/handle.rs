//! Reading and steering a circuit from outside: state, a metrics snapshot for a status endpoint, and
//! forcing it open, closed or disabled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::state::Breaker;

/// The state of a circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "SCREAMING_SNAKE_CASE"))]
pub enum CircuitState {
    /// Calls go through; outcomes are counted.
    Closed,
    /// Calls are refused until the wait duration has passed.
    Open,
    /// A fixed number of probe calls go through; their outcomes close or reopen the circuit.
    HalfOpen,
    /// Refusing every call until told otherwise ([`CircuitHandle::force_open`]).
    ForcedOpen,
    /// Letting every call through without counting ([`CircuitHandle::disable`]).
    Disabled,
}

impl fmt::Display for CircuitState {
    /// `CLOSED`, `OPEN`, `HALF_OPEN`, `FORCED_OPEN` or `DISABLED`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Closed => "CLOSED",
            Self::Open => "OPEN",
            Self::HalfOpen => "HALF_OPEN",
            Self::ForcedOpen => "FORCED_OPEN",
            Self::Disabled => "DISABLED",
        })
    }
}

/// A change of state, as passed to [`on_state_change`](super::CircuitBreakerBuilder::on_state_change)
/// hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub(crate) name: &'static str,
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    pub(crate) reason: &'static str,
}

impl Transition {
    /// The circuit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The state it left.
    pub fn from(&self) -> CircuitState {
        self.from
    }

    /// The state it entered.
    pub fn to(&self) -> CircuitState {
        self.to
    }

    /// Why, e.g. `"consecutive failures"`.
    pub fn reason(&self) -> &'static str {
        self.reason
    }
}

/// A circuit's state and counts at one moment; serialisable (feature `serde`) for a status endpoint.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CircuitSnapshot {
    pub(crate) name: &'static str,
    pub(crate) state: CircuitState,
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) failure_rate: f64,
    pub(crate) slow_calls: u32,
    pub(crate) slow_call_rate: f64,
    pub(crate) consecutive_failures: u32,
    pub(crate) rejected: u64,
    #[cfg_attr(feature = "serde", serde(serialize_with = "secs"))]
    pub(crate) in_state_for: Duration,
    #[cfg_attr(feature = "serde", serde(serialize_with = "opt_secs"))]
    pub(crate) next_attempt_in: Option<Duration>,
}

impl CircuitSnapshot {
    /// The circuit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Its state.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Calls in the window (at most the window size).
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Failures among them.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// `failures / calls`, or 0 without calls.
    pub fn failure_rate(&self) -> f64 {
        self.failure_rate
    }

    /// Calls in the window that took at least the slow-call threshold (0 without slow-call
    /// detection).
    pub fn slow_calls(&self) -> u32 {
        self.slow_calls
    }

    /// `slow_calls / calls`, or 0 without calls.
    pub fn slow_call_rate(&self) -> f64 {
        self.slow_call_rate
    }

    /// Failures in a row, up to now.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Calls refused since the circuit was built.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// How long the circuit has been in this state.
    pub fn in_state_for(&self) -> Duration {
        self.in_state_for
    }

    /// For an open circuit, how long until it lets a probe through.
    pub fn next_attempt_in(&self) -> Option<Duration> {
        self.next_attempt_in
    }
}

#[cfg(feature = "serde")]
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(feature = "serde")]
fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// Reads and steers the circuit of a [`CircuitBreakerLayer`](super::CircuitBreakerLayer). Cheap to
/// clone; every clone and the layer's services share the circuit.
#[derive(Clone)]
pub struct CircuitHandle {
    pub(crate) breaker: Arc<Breaker>,
}

impl fmt::Debug for CircuitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitHandle")
            .field("name", &self.breaker.cfg.name)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitHandle {
    /// The current state. An open circuit whose wait is over moves to half-open here, so a status
    /// endpoint shows the change even when no traffic arrives to trigger it.
    pub fn state(&self) -> CircuitState {
        self.breaker.refresh();
        self.breaker.state()
    }

    /// State and counts, for a status endpoint.
    pub fn snapshot(&self) -> CircuitSnapshot {
        self.breaker.refresh();
        self.breaker.snapshot()
    }

    /// Refuses every call until [`force_closed`](Self::force_closed), [`reset`](Self::reset) or
    /// [`disable`](Self::disable).
    pub fn force_open(&self) {
        self.breaker
            .force(CircuitState::ForcedOpen, false, "forced open");
    }

    /// Closes the circuit now, with an empty window.
    pub fn force_closed(&self) {
        self.breaker
            .force(CircuitState::Closed, false, "forced closed");
    }

    /// Closes the circuit now, with an empty window, and forgets earlier openings (the exponential
    /// wait starts again from its initial duration).
    pub fn reset(&self) {
        self.breaker.force(CircuitState::Closed, true, "reset");
    }

    /// Lets every call through without counting, until [`force_closed`](Self::force_closed) or
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.breaker
            .force(CircuitState::Disabled, false, "disabled");
    }
}
