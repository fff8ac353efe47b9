//! The breaker: state machine, window and counters shared by every service of one layer.
//!
//! # The state word
//!
//! One `AtomicU64` holds the state kind (3 bits), the number of half-open probe permits handed out
//! (13 bits) and an epoch (48 bits) that every transition increments. A call's permit remembers the
//! epoch it was issued in, and its outcome is recorded only if the circuit is still in that epoch: a
//! slow call admitted while closed can never count as a half-open probe, nor a probe from an earlier
//! half-open period as one of the current one. Handing out a probe permit is one compare-and-swap on
//! this word, so exactly `half_open_probes` permits exist per half-open period however many callers
//! race for them.
//!
//! Transitions are serialised by a mutex that only transitions take; the closed-state hot path is a
//! load of the state word and lock-free updates of the window.
//!
//! # Shared circuits
//!
//! A circuit shared through a store (feature `redis`) has a [`Link`](super::shared::Link): its
//! outcomes are also counted there for the sync task, which reports them and applies the shared
//! state with [`Breaker::apply_shared`]. While it follows the shared state, the breaker does not
//! open or close by itself: a trip condition met on its own window, or a probe's outcome, asks for
//! an early sync instead, and the shared script decides. It still moves from open to half-open when
//! the wait is over (as the shared circuit does on Redis time), but admits only the probes the store
//! granted it. While the store is unreachable it is an ordinary local breaker.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use super::snapshot::CircuitSnapshot;
use super::transition::{CircuitEvent, CircuitState, Transition, TransitionReason};
use super::window::{CountWindow, Counts, TimeWindow, Window};
use crate::clock::{Clock, Nanos, TokioClock, duration_to_nanos};

mod local;
#[cfg(feature = "redis")]
mod shared;
#[cfg(test)]
mod tests;

/// How a finished call counts, as its classifier's [`Verdict`](crate::classify::Verdict) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not a failure.
    Success,
    /// A failure; counts towards opening the circuit.
    Failure,
}

pub(super) const KIND_BITS: u64 = 3;
pub(super) const PROBE_BITS: u64 = 13;
pub(super) const KIND_MASK: u64 = (1 << KIND_BITS) - 1;
pub(super) const PROBE_MASK: u64 = ((1 << PROBE_BITS) - 1) << KIND_BITS;
pub(super) const EPOCH_SHIFT: u64 = KIND_BITS + PROBE_BITS;
/// The most probe permits one half-open period may have (13 bits).
pub(crate) const MAX_PROBES: u32 = (1 << PROBE_BITS) - 1;

pub(super) fn kind(word: u64) -> CircuitState {
    match word & KIND_MASK {
        0 => CircuitState::Closed,
        1 => CircuitState::Open,
        2 => CircuitState::HalfOpen,
        3 => CircuitState::ForcedOpen,
        _ => CircuitState::Disabled,
    }
}

pub(super) fn kind_bits(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
        CircuitState::ForcedOpen => 3,
        CircuitState::Disabled => 4,
    }
}

pub(super) fn probes(word: u64) -> u32 {
    ((word & PROBE_MASK) >> KIND_BITS) as u32
}

pub(super) fn epoch(word: u64) -> u64 {
    word >> EPOCH_SHIFT
}

/// How long the circuit stays open: `initial * multiplier^(n-1)` for the n-th opening in a row,
/// at most `max`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Wait {
    pub(crate) initial: Duration,
    pub(crate) multiplier: f64,
    pub(crate) max: Duration,
}

impl Wait {
    fn for_opening(&self, streak: u32) -> Duration {
        let factor = self.multiplier.powi(streak.min(1_000) as i32);
        let secs = (self.initial.as_secs_f64() * factor).min(self.max.as_secs_f64());
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// Which window the rates are measured over.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum WindowConfig {
    /// The last n calls.
    Count(u32),
    /// The calls of the last `span`, in `buckets` buckets.
    Time { span: Duration, buckets: u32 },
}

/// Slow-call detection: calls taking at least `threshold` are slow; the circuit opens when at least
/// `rate` of the window's calls were.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct SlowCalls {
    pub(crate) threshold: Duration,
    pub(crate) rate: f64,
}

/// A validated configuration.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: &'static str,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_calls: Option<SlowCalls>,
    pub(crate) window: WindowConfig,
    pub(crate) minimum_calls: u32,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) wait: Wait,
    pub(crate) half_open_probes: u32,
    /// Per-key circuits' metrics carry the key as a label (the builder's `key_in_metrics`).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) key_in_metrics: bool,
}

/// The hooks of a layer's circuits.
pub(crate) type Hooks = crate::hooks::Hooks<CircuitEvent>;

/// Permission for one call, from [`Breaker::acquire`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Permit {
    epoch: u64,
    probe: bool,
    /// When the call started, if slow-call detection needs it (0 otherwise).
    started: Nanos,
}

/// Why a call was refused.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refusal {
    pub(crate) state: CircuitState,
    pub(crate) retry_after: Option<Duration>,
    /// Not 0: not refused yet. A shared circuit's replica asks its store for a probe permit for
    /// this caller, who may wait for the answer (see `Breaker::acquire_waited`) with this ticket.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) ticket: u64,
}

pub(crate) struct Breaker {
    pub(crate) cfg: Config,
    /// For one of a layer's per-key circuits, its key as text (in logs, hooks, metrics, refusals).
    pub(crate) key: Option<Arc<str>>,
    clock: TokioClock,
    /// Read by every call, written only by transitions: on a cache line of its own, away from the
    /// counters that failures write.
    state: CachePadded<AtomicU64>,
    open_until: AtomicU64,
    /// Openings since the circuit last closed (for the exponential wait).
    streak: AtomicU32,
    state_since: AtomicU64,
    window: Window,
    /// Whether recording needs the time (slow-call detection, or a time window).
    timed: bool,
    slow_threshold: Nanos,
    consecutive: AtomicU32,
    /// Probe outcomes this half-open period: successes in the low 32 bits, failures in the high.
    probe_results: AtomicU64,
    /// How many probe permits this half-open period may hand out: `half_open_probes`, or for a
    /// shared circuit following its store, the permits the store granted this replica.
    probe_allowance: AtomicU32,
    rejected: AtomicU64,
    transitions: Mutex<()>,
    hooks: Hooks,
    /// For a shared circuit: its link to the sync task.
    #[cfg(feature = "redis")]
    pub(crate) link: Option<Box<super::shared::Link>>,
    #[cfg(feature = "metrics")]
    meters: Meters,
}

/// The circuit's metrics keys, made once (a key with labels built per call would allocate).
#[cfg(feature = "metrics")]
pub(super) struct Meters {
    rejected: metrics::Key,
    failures: metrics::Key,
    /// `None` for a per-key circuit whose key is not a label: one gauge for every key's state
    /// would say only the last one's.
    state: Option<metrics::Key>,
    /// By target state, in `kind_bits` order.
    transitions: [metrics::Key; 5],
}

#[cfg(feature = "metrics")]
impl Meters {
    /// The keys of a circuit named `name` and, for a per-key circuit, labelled with its `key` if
    /// `key_in_metrics`.
    fn new(name: &'static str, key: Option<&Arc<str>>, key_in_metrics: bool) -> Self {
        let per_key = key.is_some();
        let key = key.filter(|_| key_in_metrics);
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut labels = vec![metrics::Label::from_static_parts(
                crate::metrics::NAME,
                name,
            )];
            if let Some(key) = key {
                labels.push(metrics::Label::new("key", key.to_string()));
            }
            if let Some((k, v)) = extra {
                labels.push(metrics::Label::from_static_parts(k, v));
            }
            labels
        };
        let transitions = ["closed", "open", "half_open", "forced_open", "disabled"].map(|to| {
            crate::metrics::key_with(
                "rampart_circuit_transitions_total",
                labels(Some(("to", to))),
            )
        });
        Self {
            rejected: crate::metrics::key_with("rampart_circuit_rejected_total", labels(None)),
            failures: crate::metrics::key_with("rampart_circuit_failures_total", labels(None)),
            state: (!per_key || key.is_some())
                .then(|| crate::metrics::key_with("rampart_circuit_state", labels(None))),
            transitions,
        }
    }

    #[inline]
    fn count(key: &metrics::Key) {
        crate::metrics::counter(key).increment(1);
    }

    fn set_state(&self, to: CircuitState) {
        let bits = kind_bits(to);
        if let Some(state) = &self.state {
            crate::metrics::gauge(state).set(bits as f64);
        }
        Self::count(&self.transitions[bits as usize]);
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("cfg", &self.cfg)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

pub(super) fn rate(part: u32, of: u32) -> f64 {
    if of == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(of)
    }
}
