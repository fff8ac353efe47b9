//! The state of a circuit, and its changes as hooks see them: from, to, and why.

use std::fmt;
use std::sync::Arc;

use crate::hooks::Event;

/// An event of a circuit breaker, as its [hooks](crate::hooks) see it
/// ([`on_event`](super::CircuitBreakerBuilder::on_event)).
///
/// Calls refused by an open circuit are not events (an open circuit refuses every call; count
/// them with the `rampart_circuit_rejected_total` metric, or read
/// [`CircuitSnapshot`](super::CircuitSnapshot)).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CircuitEvent {
    /// A circuit changed state: from, to, and the typed [`TransitionReason`].
    StateChanged(Transition),
}

impl Event for CircuitEvent {
    fn layer_name(&self) -> &str {
        match self {
            Self::StateChanged(t) => t.name,
        }
    }

    /// `state_changed`.
    fn kind(&self) -> &'static str {
        match self {
            Self::StateChanged(_) => "state_changed",
        }
    }
}

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
    /// Refusing every call until told otherwise ([`CircuitHandle::force_open`](super::CircuitHandle::force_open)).
    ForcedOpen,
    /// Letting every call through without counting ([`CircuitHandle::disable`](super::CircuitHandle::disable)).
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

/// A change of state, as [`CircuitEvent::StateChanged`] and
/// [`on_state_change`](super::CircuitBreakerBuilder::on_state_change) hooks carry it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub(crate) name: &'static str,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    pub(crate) reason: TransitionReason,
}

impl Transition {
    /// The circuit's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// For one of a layer's per-key circuits, its key (as text).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// The state it left.
    pub fn from(&self) -> CircuitState {
        self.from
    }

    /// The state it entered.
    pub fn to(&self) -> CircuitState {
        self.to
    }

    /// Why; its text (`Display`, [`as_str`](TransitionReason::as_str)) is what logs show, e.g.
    /// `consecutive failures`.
    pub fn reason(&self) -> TransitionReason {
        self.reason
    }
}

/// Why a circuit changed state, as [`Transition::reason`] gives it. Its text (lowercase, through
/// `Display` or [`as_str`](Self::as_str)) is the `reason` field of the state-change log events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// A shared circuit's state was made afresh in its store, or a replica met a reason it does
    /// not know (from a newer replica): `shared state reset`.
    SharedStateReset,
    /// The failure rate over the window reached the threshold: `failure rate over the threshold`.
    FailureRate,
    /// The slow-call rate over the window reached the threshold:
    /// `slow-call rate over the threshold`.
    SlowCallRate,
    /// Enough failures in a row: `consecutive failures`.
    ConsecutiveFailures,
    /// An open circuit's wait is over; probes may go through: `wait duration elapsed`.
    WaitElapsed,
    /// The half-open probes failed: `half-open probes failed`.
    ProbesFailed,
    /// The half-open probes succeeded: `half-open probes succeeded`.
    ProbesSucceeded,
    /// [`CircuitHandle::force_open`](super::CircuitHandle::force_open): `forced open`.
    ForcedOpen,
    /// [`CircuitHandle::force_closed`](super::CircuitHandle::force_closed): `forced closed`.
    ForcedClosed,
    /// [`CircuitHandle::reset`](super::CircuitHandle::reset): `reset`.
    Reset,
    /// [`CircuitHandle::disable`](super::CircuitHandle::disable): `disabled`.
    Disabled,
}

impl TransitionReason {
    /// Every reason, in the order of their codes in the shared store (the position is the code;
    /// the Lua script writes the same numbers).
    const ALL: [Self; 11] = [
        Self::SharedStateReset,
        Self::FailureRate,
        Self::SlowCallRate,
        Self::ConsecutiveFailures,
        Self::WaitElapsed,
        Self::ProbesFailed,
        Self::ProbesSucceeded,
        Self::ForcedOpen,
        Self::ForcedClosed,
        Self::Reset,
        Self::Disabled,
    ];

    /// The reason's text, as logs show it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::SharedStateReset => "shared state reset",
            Self::FailureRate => "failure rate over the threshold",
            Self::SlowCallRate => "slow-call rate over the threshold",
            Self::ConsecutiveFailures => "consecutive failures",
            Self::WaitElapsed => "wait duration elapsed",
            Self::ProbesFailed => "half-open probes failed",
            Self::ProbesSucceeded => "half-open probes succeeded",
            Self::ForcedOpen => "forced open",
            Self::ForcedClosed => "forced closed",
            Self::Reset => "reset",
            Self::Disabled => "disabled",
        }
    }

    /// The code the shared store keeps, so that every replica announces a shared transition with
    /// the same reason.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) const fn code(self) -> u8 {
        self as u8
    }

    /// The reason of a code from the shared store ([`SharedStateReset`](Self::SharedStateReset)
    /// for an unknown one).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn from_code(code: u8) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Self::SharedStateReset)
    }
}

impl fmt::Display for TransitionReason {
    /// The reason's text, lowercase: `consecutive failures`, `forced open`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::TransitionReason;

    #[test]
    fn codes_are_the_positions_the_store_and_script_use() {
        for (i, reason) in TransitionReason::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(reason.code()), i);
            assert_eq!(TransitionReason::from_code(reason.code()), reason);
        }
        assert_eq!(
            TransitionReason::from_code(200),
            TransitionReason::SharedStateReset
        );
        assert_eq!(TransitionReason::FailureRate.code(), 1);
        assert_eq!(TransitionReason::Disabled.code(), 10);
    }

    #[test]
    fn texts_are_lowercase_and_distinct() {
        let texts: std::collections::HashSet<_> = TransitionReason::ALL
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(texts.len(), TransitionReason::ALL.len());
        assert!(texts.iter().all(|t| t.chars().all(|c| !c.is_uppercase())));
    }
}
