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

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::classify::Outcome;
use super::handle::{CircuitSnapshot, CircuitState, Transition};
use super::window::{CountWindow, Counts, TimeWindow, Window};
use crate::clock::{Clock, Nanos, TokioClock, duration_to_nanos};

const KIND_BITS: u64 = 3;
const PROBE_BITS: u64 = 13;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;
const PROBE_MASK: u64 = ((1 << PROBE_BITS) - 1) << KIND_BITS;
const EPOCH_SHIFT: u64 = KIND_BITS + PROBE_BITS;
/// The most probe permits one half-open period may have (13 bits).
pub(crate) const MAX_PROBES: u32 = (1 << PROBE_BITS) - 1;

fn kind(word: u64) -> CircuitState {
    match word & KIND_MASK {
        0 => CircuitState::Closed,
        1 => CircuitState::Open,
        2 => CircuitState::HalfOpen,
        3 => CircuitState::ForcedOpen,
        _ => CircuitState::Disabled,
    }
}

fn kind_bits(state: CircuitState) -> u64 {
    match state {
        CircuitState::Closed => 0,
        CircuitState::Open => 1,
        CircuitState::HalfOpen => 2,
        CircuitState::ForcedOpen => 3,
        CircuitState::Disabled => 4,
    }
}

fn probes(word: u64) -> u32 {
    ((word & PROBE_MASK) >> KIND_BITS) as u32
}

fn epoch(word: u64) -> u64 {
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
}

type Hook = Arc<dyn Fn(&Transition) + Send + Sync>;

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
}

pub(crate) struct Breaker {
    pub(crate) cfg: Config,
    clock: TokioClock,
    state: AtomicU64,
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
    rejected: AtomicU64,
    transitions: Mutex<()>,
    hooks: Vec<Hook>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("cfg", &self.cfg)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl Breaker {
    pub(crate) fn new(cfg: Config, hooks: Vec<Hook>) -> Self {
        let clock = TokioClock::new();
        let window = match cfg.window {
            WindowConfig::Count(n) => Window::Count(CountWindow::new(n)),
            WindowConfig::Time { span, buckets } => Window::Time(TimeWindow::new(
                duration_to_nanos(span) / u64::from(buckets),
                buckets,
            )),
        };
        Self {
            timed: window.needs_clock() || cfg.slow_calls.is_some(),
            slow_threshold: cfg
                .slow_calls
                .map_or(u64::MAX, |s| duration_to_nanos(s.threshold)),
            window,
            cfg,
            state_since: AtomicU64::new(clock.now()),
            clock,
            state: AtomicU64::new(kind_bits(CircuitState::Closed)),
            open_until: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            probe_results: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            transitions: Mutex::new(()),
            hooks,
        }
    }

    pub(crate) fn state(&self) -> CircuitState {
        kind(self.state.load(Ordering::Acquire))
    }

    /// Moves an open circuit whose wait is over to half-open (as the next call would).
    pub(crate) fn refresh(&self) {
        let word = self.state.load(Ordering::Acquire);
        if kind(word) == CircuitState::Open
            && self.clock.now() >= self.open_until.load(Ordering::Acquire)
        {
            self.transition(word, CircuitState::HalfOpen, "wait duration elapsed");
        }
    }

    /// Asks to make a call now.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, Refusal> {
        loop {
            let word = self.state.load(Ordering::Acquire);
            match kind(word) {
                CircuitState::Closed | CircuitState::Disabled => {
                    return Ok(Permit {
                        epoch: epoch(word),
                        probe: false,
                        started: self.start_time(),
                    });
                }
                CircuitState::ForcedOpen => return Err(self.refuse(CircuitState::ForcedOpen, None)),
                CircuitState::Open => {
                    let now = self.clock.now();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        let wait = Duration::from_nanos(until - now);
                        return Err(self.refuse(CircuitState::Open, Some(wait)));
                    }
                    // The wait is over: the first caller to get here moves the circuit to half-open.
                    self.transition(word, CircuitState::HalfOpen, "wait duration elapsed");
                }
                CircuitState::HalfOpen => {
                    if probes(word) >= self.cfg.half_open_probes {
                        return Err(self.refuse(CircuitState::HalfOpen, None));
                    }
                    let next = word + (1 << KIND_BITS);
                    if self
                        .state
                        .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Ok(Permit {
                            epoch: epoch(word),
                            probe: true,
                            started: self.start_time(),
                        });
                    }
                }
            }
        }
    }

    #[inline]
    fn start_time(&self) -> Nanos {
        if self.cfg.slow_calls.is_some() {
            self.clock.now()
        } else {
            0
        }
    }

    fn refuse(&self, state: CircuitState, retry_after: Option<Duration>) -> Refusal {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!("rampart_circuit_rejected_total", "circuit" => self.cfg.name)
            .increment(1);
        Refusal { state, retry_after }
    }

    /// Records the outcome of a permitted call.
    #[inline]
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome) {
        let word = self.state.load(Ordering::Acquire);
        if epoch(word) != permit.epoch {
            return; // issued in an earlier state: it says nothing about this one
        }
        let failed = outcome == Outcome::Failure;
        #[cfg(feature = "metrics")]
        if failed {
            metrics::counter!("rampart_circuit_failures_total", "circuit" => self.cfg.name)
                .increment(1);
        }
        let now = if self.timed { self.clock.now() } else { 0 };
        let slow = now.saturating_sub(permit.started) >= self.slow_threshold;
        if permit.probe {
            // A probe that succeeds too slowly has not shown the upstream recovered.
            self.record_probe(word, failed || slow);
            return;
        }
        if kind(word) != CircuitState::Closed {
            return; // disabled
        }
        let counts = self.window.record(failed, slow, now);
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            if self.consecutive.load(Ordering::Relaxed) != 0 {
                self.consecutive.store(0, Ordering::Release);
            }
            0
        };
        if let Some(reason) = self.trips(counts, consecutive) {
            self.transition(word, CircuitState::Open, reason);
        }
    }

    /// Which condition, if any, opens the circuit given the window's counts.
    #[inline]
    fn trips(&self, c: Counts, consecutive: u32) -> Option<&'static str> {
        let enough = c.calls >= self.cfg.minimum_calls;
        let at_least = |part: u32, rate: f64| f64::from(part) >= rate * f64::from(c.calls);
        if enough
            && self
                .cfg
                .failure_rate
                .is_some_and(|r| at_least(c.failures, r))
        {
            Some("failure rate over the threshold")
        } else if enough
            && self
                .cfg
                .slow_calls
                .is_some_and(|s| at_least(c.slow, s.rate))
        {
            Some("slow-call rate over the threshold")
        } else if self
            .cfg
            .consecutive_failures
            .is_some_and(|n| consecutive >= n)
        {
            Some("consecutive failures")
        } else {
            None
        }
    }

    fn record_probe(&self, word: u64, failed: bool) {
        let inc = if failed { 1 << 32 } else { 1 };
        let results = self.probe_results.fetch_add(inc, Ordering::AcqRel) + inc;
        let (ok, bad) = (
            (results & u64::from(u32::MAX)) as u32,
            (results >> 32) as u32,
        );
        let n = self.cfg.half_open_probes;
        // Reopen as soon as the probes can no longer pass; close once all have reported and passed.
        let reopen = match self.cfg.failure_rate {
            Some(rate) => f64::from(bad) >= rate * f64::from(n),
            None => bad > 0,
        };
        if reopen {
            self.transition(word, CircuitState::Open, "half-open probes failed");
        } else if ok + bad >= n {
            self.transition(word, CircuitState::Closed, "half-open probes succeeded");
        }
    }

    /// A permitted call ended without an outcome (its future was dropped). A probe gives its permit
    /// back, so the circuit cannot be left waiting for a result that will never come.
    pub(crate) fn cancel(&self, permit: Permit) {
        if !permit.probe {
            return;
        }
        let mut word = self.state.load(Ordering::Acquire);
        while epoch(word) == permit.epoch
            && kind(word) == CircuitState::HalfOpen
            && probes(word) > 0
        {
            match self.state.compare_exchange_weak(
                word,
                word - (1 << KIND_BITS),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Moves from the state in `from` (same epoch) to `to`, unless another caller moved it first.
    fn transition(&self, from: u64, to: CircuitState, reason: &'static str) {
        // Probes that all succeeded end the run of openings: the next wait starts from the initial.
        let forget_streak = to == CircuitState::Closed;
        self.move_to(Some(from), to, forget_streak, reason);
    }

    /// Forces a state from the handle: always moves (to the same state, it starts afresh).
    pub(crate) fn force(&self, to: CircuitState, forget_streak: bool, reason: &'static str) {
        self.move_to(None, to, forget_streak, reason);
    }

    fn move_to(
        &self,
        from: Option<u64>,
        to: CircuitState,
        forget_streak: bool,
        reason: &'static str,
    ) {
        let guard = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.state.load(Ordering::Acquire);
        if from.is_some_and(|from| epoch(current) != epoch(from)) {
            return; // someone else moved it first
        }
        if forget_streak {
            self.streak.store(0, Ordering::Release);
        }
        self.set_state(current, to);
        drop(guard);
        self.announce(kind(current), to, reason);
    }

    /// Prepares and publishes `to`. Called with the transition lock held.
    fn set_state(&self, current: u64, to: CircuitState) {
        let now = self.clock.now();
        match to {
            CircuitState::Open => {
                let streak = self.streak.fetch_add(1, Ordering::AcqRel);
                let wait = self.cfg.wait.for_opening(streak);
                self.open_until.store(
                    now.saturating_add(duration_to_nanos(wait)),
                    Ordering::Release,
                );
            }
            CircuitState::HalfOpen => self.probe_results.store(0, Ordering::Release),
            CircuitState::Closed => {
                self.window.reset();
                self.consecutive.store(0, Ordering::Release);
            }
            CircuitState::ForcedOpen | CircuitState::Disabled => {}
        }
        self.state_since.store(now, Ordering::Release);
        let next_epoch = (epoch(current) + 1) << EPOCH_SHIFT;
        self.state
            .store(next_epoch | kind_bits(to), Ordering::Release);
    }

    fn announce(&self, from: CircuitState, to: CircuitState, reason: &'static str) {
        let transition = Transition {
            name: self.cfg.name,
            from,
            to,
            reason,
        };
        if to == CircuitState::Open || to == CircuitState::ForcedOpen {
            tracing::warn!(circuit = self.cfg.name, %from, %to, reason, "circuit breaker state change");
        } else {
            tracing::info!(circuit = self.cfg.name, %from, %to, reason, "circuit breaker state change");
        }
        #[cfg(feature = "metrics")]
        {
            metrics::gauge!("rampart_circuit_state", "circuit" => self.cfg.name)
                .set(kind_bits(to) as f64);
            let to_label = match to {
                CircuitState::Closed => "closed",
                CircuitState::Open => "open",
                CircuitState::HalfOpen => "half_open",
                CircuitState::ForcedOpen => "forced_open",
                CircuitState::Disabled => "disabled",
            };
            metrics::counter!("rampart_circuit_transitions_total", "circuit" => self.cfg.name, "to" => to_label)
                .increment(1);
        }
        for hook in &self.hooks {
            hook(&transition);
        }
    }

    pub(crate) fn snapshot(&self) -> CircuitSnapshot {
        let now = self.clock.now();
        let word = self.state.load(Ordering::Acquire);
        let counts = self.window.counts(now);
        let state = kind(word);
        let until = self.open_until.load(Ordering::Acquire);
        let since = self.state_since.load(Ordering::Acquire);
        CircuitSnapshot {
            name: self.cfg.name,
            state,
            calls: counts.calls,
            failures: counts.failures,
            failure_rate: rate(counts.failures, counts.calls),
            slow_calls: counts.slow,
            slow_call_rate: rate(counts.slow, counts.calls),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            in_state_for: Duration::from_nanos(now.saturating_sub(since)),
            next_attempt_in: (state == CircuitState::Open)
                .then(|| Duration::from_nanos(until.saturating_sub(now))),
        }
    }

    #[cfg(test)]
    pub(crate) fn now(&self) -> Nanos {
        self.clock.now()
    }
}

fn rate(part: u32, of: u32) -> f64 {
    if of == 0 {
        0.0
    } else {
        f64::from(part) / f64::from(of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(probes: u32) -> Breaker {
        Breaker::new(
            Config {
                name: "t",
                failure_rate: None,
                slow_calls: None,
                window: WindowConfig::Count(10),
                minimum_calls: 1,
                consecutive_failures: Some(2),
                wait: Wait {
                    initial: Duration::from_secs(10),
                    multiplier: 2.0,
                    max: Duration::from_secs(25),
                },
                half_open_probes: probes,
            },
            vec![],
        )
    }

    #[test]
    fn the_state_word_packs_kind_probes_and_epoch() {
        let w = (7u64 << EPOCH_SHIFT) | (5 << KIND_BITS) | kind_bits(CircuitState::HalfOpen);
        assert_eq!(kind(w), CircuitState::HalfOpen);
        assert_eq!(probes(w), 5);
        assert_eq!(epoch(w), 7);
    }

    #[test]
    fn exponential_wait_is_capped() {
        let w = breaker(1).cfg.wait;
        assert_eq!(w.for_opening(0), Duration::from_secs(10));
        assert_eq!(w.for_opening(1), Duration::from_secs(20));
        assert_eq!(w.for_opening(2), Duration::from_secs(25));
        assert_eq!(w.for_opening(u32::MAX), Duration::from_secs(25));
    }

    #[tokio::test(start_paused = true)]
    async fn stale_outcomes_are_ignored_and_dropped_probes_give_their_permit_back() {
        let b = breaker(1);
        let stale = b.acquire().unwrap();
        b.record(b.acquire().unwrap(), Outcome::Failure);
        b.record(b.acquire().unwrap(), Outcome::Failure);
        assert_eq!(b.state(), CircuitState::Open);
        // A success from a call admitted while closed does not touch the open circuit.
        b.record(stale, Outcome::Success);
        assert_eq!(b.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probe = b.acquire().unwrap();
        assert!(b.acquire().is_err(), "one probe only");
        b.cancel(probe);
        let probe = b.acquire().expect("the dropped probe's permit is back");
        b.record(probe, Outcome::Success);
        assert_eq!(b.state(), CircuitState::Closed);
        assert!(b.now() > 0);
    }
}
