//! A circuit's state and counts at one moment, for a status endpoint (serialisable with the
//! `serde` feature).

use std::sync::Arc;
use std::time::Duration;

use super::transition::CircuitState;

/// A circuit's state and counts at one moment; serialisable (feature `serde`) for a status endpoint.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CircuitSnapshot {
    pub(crate) name: &'static str,
    #[cfg_attr(
        feature = "serde",
        serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_str")
    )]
    pub(crate) key: Option<Arc<str>>,
    pub(crate) state: CircuitState,
    /// For a shared circuit: the shared window and whether this replica follows it now.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub(crate) shared: Option<SharedSnapshot>,
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

    /// For one of a layer's per-key circuits, its key (as text).
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// Its state (in this replica; for a shared circuit following its store, the shared state as
    /// of the last sync).
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// For a circuit shared through a store ([`backend`](super::CircuitBreakerBuilder::backend)):
    /// the shared window as of the last sync, and whether this replica follows the shared state
    /// now. `None` for a circuit kept in this replica only.
    pub fn shared(&self) -> Option<&SharedSnapshot> {
        self.shared.as_ref()
    }

    /// Calls in this replica's window (at most the window size).
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

/// The shared side of a [`CircuitSnapshot`]: the window every replica reports to, as of this
/// replica's last sync, and whether it follows the shared state now.
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct SharedSnapshot {
    pub(crate) following: bool,
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) failure_rate: f64,
    pub(crate) slow_calls: u32,
    pub(crate) consecutive_failures: u32,
    #[cfg_attr(feature = "serde", serde(serialize_with = "opt_secs"))]
    pub(crate) since_sync: Option<Duration>,
}

impl SharedSnapshot {
    /// Whether this replica follows the shared state now: its last sync succeeded. While it does
    /// not (the store is unreachable, or the sync task has not run yet), the replica's own state
    /// machine decides, as a circuit that is not shared would.
    pub fn following(&self) -> bool {
        self.following
    }

    /// Calls in the shared window (reported by every replica).
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

    /// Slow calls in the shared window.
    pub fn slow_calls(&self) -> u32 {
        self.slow_calls
    }

    /// Failures in a row across replicas, as far as batches tell (see the
    /// [module documentation](super#shared-circuit-state)).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// How long ago this replica last synced successfully (`None`: never).
    pub fn since_sync(&self) -> Option<Duration> {
        self.since_sync
    }
}

#[cfg(feature = "serde")]
fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

#[cfg(feature = "serde")]
fn opt_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.serialize_some(&**v),
        None => s.serialize_none(),
    }
}

#[cfg(feature = "serde")]
fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}
