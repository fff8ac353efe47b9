//! Reading and steering a circuit from outside: state, a metrics snapshot for a status endpoint, and
//! forcing it open, closed or disabled.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::keyed::CircuitMap;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub(crate) name: &'static str,
    pub(crate) key: Option<Arc<str>>,
    pub(crate) from: CircuitState,
    pub(crate) to: CircuitState,
    pub(crate) reason: &'static str,
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
            .field("key", &self.breaker.key)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitHandle {
    /// The circuit's name.
    pub fn name(&self) -> &'static str {
        self.breaker.cfg.name
    }

    /// For one of a layer's per-key circuits, its key (as text).
    pub fn key(&self) -> Option<&str> {
        self.breaker.key.as_deref()
    }

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

    /// Whether the circuit is shared by the replicas through a store
    /// ([`backend`](super::CircuitBreakerBuilder::backend)).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.breaker.link.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Whether the circuit is shared and this replica follows the shared state now (its last sync
    /// succeeded). A shared circuit that does not is run by this replica alone until its store
    /// answers again.
    pub fn is_following_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.breaker.link.as_ref().is_some_and(|l| l.is_following());
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Refuses every call until [`force_closed`](Self::force_closed), [`reset`](Self::reset) or
    /// [`disable`](Self::disable).
    ///
    /// On a shared circuit, this and the other commands below act on the shared state: applied in
    /// this replica at once, sent to the store by the sync task right away, and followed by the
    /// other replicas at their next sync (within one sync interval plus a round trip). While the
    /// store is unreachable, the command applies to this replica and is sent when the store
    /// answers again (the latest command wins).
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

/// Reads and steers the per-key circuits of a [`CircuitBreakerLayer`](super::CircuitBreakerLayer)
/// built with [`key`](super::CircuitBreakerBuilder::key). Cheap to clone.
pub struct CircuitsHandle<K> {
    pub(crate) map: Arc<CircuitMap<K>>,
}

impl<K> Clone for CircuitsHandle<K> {
    fn clone(&self) -> Self {
        Self {
            map: Arc::clone(&self.map),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> fmt::Debug for CircuitsHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitsHandle")
            .field("circuits", &self.map.len())
            .field("capacity", &self.map.capacity())
            .finish()
    }
}

impl<K: std::hash::Hash + Eq + Clone> CircuitsHandle<K> {
    /// The circuit of `key`, if one has been made (by a call with that key, or by
    /// [`circuit`](Self::circuit)) and not evicted since.
    pub fn get(&self, key: &K) -> Option<CircuitHandle> {
        self.map.get(key).map(|breaker| CircuitHandle { breaker })
    }

    /// The circuit of `key`, made now if there is none (for example to force it open before any
    /// call has gone to that upstream).
    pub fn circuit(&self, key: &K) -> CircuitHandle {
        CircuitHandle {
            breaker: self.map.get_or_insert(key),
        }
    }

    /// Every circuit, with its key.
    pub fn all(&self) -> Vec<(K, CircuitHandle)> {
        self.map
            .all()
            .into_iter()
            .map(|(k, breaker)| (k, CircuitHandle { breaker }))
            .collect()
    }

    /// A snapshot of every circuit (each one's [`key`](CircuitSnapshot::key) says which), for a
    /// status endpoint.
    pub fn snapshots(&self) -> Vec<CircuitSnapshot> {
        self.map
            .all()
            .into_iter()
            .map(|(_, b)| {
                b.refresh();
                b.snapshot()
            })
            .collect()
    }

    /// How many circuits there are now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no circuit has been made yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most circuits kept at once.
    pub fn capacity(&self) -> usize {
        self.map.capacity()
    }
}
