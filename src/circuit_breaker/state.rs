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

use super::handle::{CircuitSnapshot, CircuitState, Transition};
use super::window::{CountWindow, Counts, TimeWindow, Window};
use crate::clock::{Clock, Nanos, TokioClock, duration_to_nanos};

/// How a finished call counts, as its classifier's [`Verdict`](crate::classify::Verdict) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not a failure.
    Success,
    /// A failure; counts towards opening the circuit.
    Failure,
}

const KIND_BITS: u64 = 3;
const PROBE_BITS: u64 = 13;
const KIND_MASK: u64 = (1 << KIND_BITS) - 1;
const PROBE_MASK: u64 = ((1 << PROBE_BITS) - 1) << KIND_BITS;
const EPOCH_SHIFT: u64 = KIND_BITS + PROBE_BITS;
/// The most probe permits one half-open period may have (13 bits).
pub(crate) const MAX_PROBES: u32 = (1 << PROBE_BITS) - 1;

/// Why a circuit changed state, by code: the texts hooks and logs see, and the codes the shared
/// store keeps (so that every replica announces a shared transition with the same text).
pub(crate) const REASONS: [&str; 11] = [
    "shared state reset",
    "failure rate over the threshold",
    "slow-call rate over the threshold",
    "consecutive failures",
    "wait duration elapsed",
    "half-open probes failed",
    "half-open probes succeeded",
    "forced open",
    "forced closed",
    "reset",
    "disabled",
];

/// The code of a reason text (0 for one not in [`REASONS`]).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn reason_code(reason: &str) -> u8 {
    REASONS
        .iter()
        .position(|r| *r == reason)
        .map_or(0, |i| i as u8)
}

/// The text of a reason code (the first, "shared state reset", for an unknown one).
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) fn reason_text(code: u8) -> &'static str {
    REASONS
        .get(usize::from(code))
        .copied()
        .unwrap_or(REASONS[0])
}

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

pub(crate) type Hook = Arc<dyn Fn(&Transition) + Send + Sync>;

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
    hooks: Arc<[Hook]>,
    /// For a shared circuit: its link to the sync task.
    #[cfg(feature = "redis")]
    pub(crate) link: Option<Box<super::shared::Link>>,
    #[cfg(feature = "metrics")]
    meters: Meters,
}

/// The circuit's metrics keys, made once (a key with labels built per call would allocate).
#[cfg(feature = "metrics")]
struct Meters {
    rejected: metrics::Key,
    failures: metrics::Key,
    state: metrics::Key,
    /// By target state, in `kind_bits` order.
    transitions: [metrics::Key; 5],
}

#[cfg(feature = "metrics")]
impl Meters {
    fn new(name: &'static str, key: Option<&Arc<str>>) -> Self {
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
            state: crate::metrics::key_with("rampart_circuit_state", labels(None)),
            transitions,
        }
    }

    #[inline]
    fn count(key: &metrics::Key) {
        crate::metrics::counter(key).increment(1);
    }

    fn set_state(&self, to: CircuitState) {
        let bits = kind_bits(to);
        crate::metrics::gauge(&self.state).set(bits as f64);
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

impl Breaker {
    pub(crate) fn new(cfg: Config, key: Option<Arc<str>>, hooks: Arc<[Hook]>) -> Self {
        let clock = TokioClock::new();
        let cfg_probes = cfg.half_open_probes;
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
            #[cfg(feature = "metrics")]
            meters: Meters::new(cfg.name, key.as_ref()),
            cfg,
            key,
            state_since: AtomicU64::new(clock.now()),
            clock,
            state: CachePadded::new(AtomicU64::new(kind_bits(CircuitState::Closed))),
            open_until: AtomicU64::new(0),
            streak: AtomicU32::new(0),
            consecutive: AtomicU32::new(0),
            probe_results: AtomicU64::new(0),
            probe_allowance: AtomicU32::new(cfg_probes),
            rejected: AtomicU64::new(0),
            transitions: Mutex::new(()),
            hooks,
            #[cfg(feature = "redis")]
            link: None,
        }
    }

    /// A breaker whose circuit is shared through the store that `signal`'s sync task talks to.
    #[cfg(feature = "redis")]
    pub(crate) fn new_shared(
        cfg: Config,
        key: Option<Arc<str>>,
        hooks: Arc<[Hook]>,
        signal: &Arc<super::shared::Signal>,
    ) -> Self {
        let mut breaker = Self::new(cfg, key, hooks);
        breaker.link = Some(Box::new(super::shared::Link::new(Arc::clone(signal))));
        breaker
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

    /// Asks to make a call now. A refusal with a ticket is not one yet: see
    /// [`acquire_waited`](Self::acquire_waited).
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, Refusal> {
        self.acquire_with(true)
    }

    /// `wait`: a half-open refusal may instead hand out a ticket to wait for a probe permit.
    #[inline]
    fn acquire_with(&self, #[allow(unused_variables)] wait: bool) -> Result<Permit, Refusal> {
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
                    if probes(word) >= self.probe_allowance.load(Ordering::Acquire) {
                        #[cfg(feature = "redis")]
                        if let Some(link) = &self.link {
                            if wait {
                                let ticket = link.wait_for_probe(epoch(word));
                                if ticket != 0 {
                                    return Err(Refusal {
                                        state: CircuitState::HalfOpen,
                                        retry_after: None,
                                        ticket,
                                    });
                                }
                            }
                            link.want_probe();
                        }
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
        Meters::count(&self.meters.rejected);
        Refusal {
            state,
            retry_after,
            ticket: 0,
        }
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
            Meters::count(&self.meters.failures);
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
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link {
            link.count(failed, slow);
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
            self.trip(word, reason);
        }
    }

    /// A trip condition is met on this breaker's window: open, or for a shared circuit following
    /// its store, have the store decide at once (on the window of every replica).
    #[cold]
    fn trip(&self, word: u64, reason: &'static str) {
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link
            && link.is_following()
        {
            link.urge();
            return;
        }
        self.transition(word, CircuitState::Open, reason);
    }

    /// Which condition, if any, opens the circuit given the window's counts (`None` when the call
    /// could not have raised a rate) and the failures in a row.
    #[inline]
    fn trips(&self, c: Option<Counts>, consecutive: u32) -> Option<&'static str> {
        let c = c.unwrap_or(Counts {
            calls: 0,
            failures: 0,
            slow: 0,
        });
        let enough = c.calls > 0 && c.calls >= self.cfg.minimum_calls;
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
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link
            && link.is_following()
        {
            // The store decides, on the probes of every replica.
            link.probe_result(failed);
            return;
        }
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
        // A shared circuit opened by its local state machine (its store unreachable) reports the
        // opening when it rejoins.
        #[cfg(feature = "redis")]
        if to == CircuitState::Open
            && let Some(link) = &self.link
            && !link.is_following()
        {
            link.opened_locally(reason_code(reason));
        }
        // Probes that all succeeded end the run of openings: the next wait starts from the initial.
        let forget_streak = to == CircuitState::Closed;
        self.move_to(Some(from), to, forget_streak, reason);
    }

    /// Forces a state from the handle: always moves (to the same state, it starts afresh). A shared
    /// circuit also sends the command to its store.
    pub(crate) fn force(&self, to: CircuitState, forget_streak: bool, reason: &'static str) {
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link {
            link.command(super::store::Command::from_force(to, forget_streak));
        }
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
        self.set_state(current, to, None);
        drop(guard);
        self.announce(kind(current), to, reason);
    }

    /// Prepares and publishes `to`. Called with the transition lock held. `open_for` (with the
    /// streak it belongs to) is a shared circuit's remaining wait; otherwise an opening computes
    /// its own.
    fn set_state(&self, current: u64, to: CircuitState, open_for: Option<(Duration, u32)>) {
        let now = self.clock.now();
        match to {
            CircuitState::Open => {
                let wait = match open_for {
                    Some((wait, streak)) => {
                        self.streak.store(streak, Ordering::Release);
                        wait
                    }
                    None => {
                        let streak = self.streak.fetch_add(1, Ordering::AcqRel);
                        self.cfg.wait.for_opening(streak)
                    }
                };
                self.open_until.store(
                    now.saturating_add(duration_to_nanos(wait)),
                    Ordering::Release,
                );
            }
            CircuitState::HalfOpen => {
                self.probe_results.store(0, Ordering::Release);
                // Following a store, probes are the ones it grants; otherwise this breaker's own.
                #[cfg(feature = "redis")]
                let allowance = match &self.link {
                    Some(link) if link.is_following() => 0,
                    _ => self.cfg.half_open_probes,
                };
                #[cfg(not(feature = "redis"))]
                let allowance = self.cfg.half_open_probes;
                self.probe_allowance.store(allowance, Ordering::Release);
            }
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
            key: self.key.clone(),
            from,
            to,
            reason,
        };
        let key = self.key.as_deref().unwrap_or("");
        if to == CircuitState::Open || to == CircuitState::ForcedOpen {
            tracing::warn!(circuit = self.cfg.name, key, %from, %to, reason, "circuit breaker state change");
        } else {
            tracing::info!(circuit = self.cfg.name, key, %from, %to, reason, "circuit breaker state change");
        }
        #[cfg(feature = "metrics")]
        self.meters.set_state(to);
        for hook in self.hooks.iter() {
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
            key: self.key.clone(),
            #[cfg(feature = "redis")]
            shared: self.link.as_ref().map(|l| l.view()),
            #[cfg(not(feature = "redis"))]
            shared: None,
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

/// The shared side of a breaker: what the sync task reports and how it applies the shared state.
#[cfg(feature = "redis")]
impl Breaker {
    /// Whether an early round (not a full one) should sync this circuit: it asked for one, or it
    /// is open or half-open (probe permits are being handed out).
    pub(crate) fn wants_early_sync(&self) -> bool {
        let Some(link) = &self.link else {
            return false;
        };
        link.is_urgent()
            || (link.is_following()
                && matches!(self.state(), CircuitState::Open | CircuitState::HalfOpen))
    }

    /// For a caller given `ticket` by [`acquire`](Self::acquire) (half-open, no permit left here,
    /// and its replica asking the store for one): `None` while it should go on waiting, that is
    /// until the store answered this replica's request for permits in the current half-open period,
    /// or `expired`; then the call's permit, or its refusal (counted now). A ticket answered while
    /// the circuit moved on to a half-open period in which this replica has not asked yet is
    /// replaced by a new one.
    pub(crate) fn acquire_waited(
        &self,
        ticket: &mut u64,
        expired: bool,
    ) -> Option<Result<Permit, Refusal>> {
        if !expired && let Some(link) = &self.link {
            let word = self.state.load(Ordering::Acquire);
            if kind(word) == CircuitState::HalfOpen
                && probes(word) >= self.probe_allowance.load(Ordering::Acquire)
                && link.is_following()
                && !link.asked_in(epoch(word))
            {
                if link.is_answered(*ticket) {
                    *ticket = link.wait_for_probe(epoch(word));
                }
                if *ticket != 0 {
                    return None;
                }
            }
        }
        Some(self.acquire_with(false))
    }

    /// For a circuit following its store and open: how long until its wait is over.
    pub(crate) fn following_open_for(&self) -> Option<Duration> {
        let link = self.link.as_ref()?;
        if !link.is_following() || self.state() != CircuitState::Open {
            return None;
        }
        let until = self.open_until.load(Ordering::Acquire);
        Some(Duration::from_nanos(until.saturating_sub(self.clock.now())))
    }

    /// Makes this replica's report: the outcomes since the last one (dropped while it does not
    /// follow the store: they stay in its local window), probe outcomes and permits, a pending
    /// command, and an opening made locally while the store was unreachable.
    ///
    /// # Panics
    ///
    /// On a breaker that is not shared (the driver only holds shared ones).
    pub(crate) fn prepare_sync(&self, replica: u64, lease: Duration) -> super::shared::Prepared {
        let link = self.link.as_ref().expect("only shared circuits are synced");
        let following = link.is_following();
        link.take_urgent();
        let (command, command_generation) = link.pending_command();
        let (calls, failures, slow) = link.take_outcomes();
        let (probe_ok, probe_bad) = link.take_probe_results();
        let word = self.state.load(Ordering::Acquire);
        let state = kind(word);
        let rejected = self.rejected.load(Ordering::Relaxed);
        // Callers waiting for a permit count as demand, as refused ones do.
        let (waiting, covers) = link.take_waiting();
        let mut st = link.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let demand = u32::try_from(rejected.saturating_sub(st.last_rejected))
            .unwrap_or(u32::MAX)
            .saturating_add(waiting);
        st.last_rejected = rejected;
        let n = self.cfg.half_open_probes;
        let results = self.probe_results.load(Ordering::Acquire);
        let results_at_send = (results as u32).saturating_add((results >> 32) as u32);
        let (mut held, mut want) = (0, 0);
        if following {
            match state {
                CircuitState::HalfOpen => {
                    let started = probes(word);
                    let mut allowance = self.probe_allowance.load(Ordering::Acquire);
                    if allowance > started && demand == 0 && st.contended {
                        // Nobody here wants the unused permits and another replica does: give them
                        // back. (Uncontended, they are kept: a replica whose callers come seldom
                        // must get to probe.) A caller slipping in meanwhile keeps its permit.
                        self.probe_allowance.store(started, Ordering::Release);
                        let now_started = probes(self.state.load(Ordering::Acquire));
                        allowance = started.max(now_started);
                        if now_started > started {
                            self.probe_allowance.store(allowance, Ordering::Release);
                        }
                    }
                    held = allowance.saturating_sub(results_at_send);
                    if allowance <= probes(self.state.load(Ordering::Acquire)) && demand > 0 {
                        want = demand.min(n);
                    }
                }
                // The wait may be over in the store already: ask for permits for the callers
                // refused meanwhile, granted if it is.
                CircuitState::Open if demand > 0 => want = demand.min(n),
                _ => {}
            }
        }
        let assert_open = match (following, state, link.local_opening()) {
            (false, CircuitState::Open, Some(reason)) => {
                let until = self.open_until.load(Ordering::Acquire);
                let left = until.saturating_sub(self.clock.now());
                (left > 0).then(|| (Duration::from_nanos(left), reason))
            }
            _ => None,
        };
        let (calls, failures, slow, probe_ok, probe_bad) = if following {
            (calls, failures, slow, probe_ok, probe_bad)
        } else {
            (0, 0, 0, 0, 0)
        };
        let request = super::store::SyncRequest {
            replica,
            lease,
            calls,
            failures,
            slow,
            run: self.consecutive.load(Ordering::Relaxed),
            probe_epoch: st.epoch,
            probe_ok,
            probe_bad,
            held,
            want,
            command,
            assert_open,
        };
        super::shared::Prepared {
            request,
            command_generation,
            was_following: following,
            results_at_send,
            covers,
        }
    }

    /// Applies the store's answer to a report made by [`prepare_sync`](Self::prepare_sync), and
    /// wakes the callers waiting for it (see [`acquire_waited`](Self::acquire_waited)).
    pub(crate) fn finish_sync(
        &self,
        prepared: super::shared::Prepared,
        reply: super::shared::Reply,
    ) -> super::shared::SyncOutcome {
        let link = self.link.as_ref().expect("only shared circuits are synced");
        let covers = prepared.covers;
        let asked = prepared.request.want > 0 && reply.is_ok();
        let outcome = self.apply_sync(prepared, reply);
        let word = self.state.load(Ordering::Acquire);
        if asked && kind(word) == CircuitState::HalfOpen && link.is_following() {
            // The store answered this replica's request for permits in this half-open period:
            // callers refused from now on are refused at once.
            link.asked(epoch(word));
        }
        link.answered(covers);
        outcome
    }

    fn apply_sync(
        &self,
        prepared: super::shared::Prepared,
        reply: super::shared::Reply,
    ) -> super::shared::SyncOutcome {
        use super::shared::SyncOutcome;
        let link = self.link.as_ref().expect("only shared circuits are synced");
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                let left = link.set_following(false);
                if left {
                    // On its own again: a half-open circuit probes with its own permits.
                    let _guard = self
                        .transitions
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    if self.state() == CircuitState::HalfOpen {
                        self.probe_allowance
                            .store(self.cfg.half_open_probes, Ordering::Release);
                    }
                }
                return SyncOutcome::Failed { left, error };
            }
        };
        let mut st = link.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let rejoin = !prepared.was_following || !link.is_following();
        let lost = st.generation != 0 && reply.generation != st.generation;
        if lost && !rejoin && self.state() == CircuitState::Open {
            // The store lost the circuit (restarted, flushed, expired) while it was open: report
            // the opening at once rather than follow a fresh closed circuit.
            link.opened_locally(st.reason);
            link.set_following(false);
            st.generation = 0;
            drop(st);
            link.urge();
            return SyncOutcome::Lost;
        }
        st.generation = reply.generation;
        let newer_command = link.delivered(prepared.command_generation);
        if !newer_command {
            let new_epoch = reply.epoch != st.epoch;
            if new_epoch || rejoin || lost {
                // A rejoining replica's local half-open period (its own probes) ends too.
                let bumped =
                    self.apply_shared(&reply, reason_text(reply.reason), new_epoch || rejoin);
                st.epoch = reply.epoch;
                st.reason = reply.reason;
                if reply.state == CircuitState::HalfOpen {
                    let base = if bumped { 0 } else { prepared.results_at_send };
                    self.probe_allowance
                        .store(base.saturating_add(reply.held), Ordering::Release);
                }
            } else if reply.state == CircuitState::HalfOpen
                && self.state() == CircuitState::HalfOpen
            {
                self.probe_allowance.store(
                    prepared.results_at_send.saturating_add(reply.held),
                    Ordering::Release,
                );
            } else if let (CircuitState::Open, Some(left)) = (reply.state, reply.open_for)
                && self.state() == CircuitState::Open
            {
                // Still open in Redis: keep the local deadline on Redis's (the sync task wakes at
                // it to ask for probe permits).
                self.open_until.store(
                    self.clock.now().saturating_add(duration_to_nanos(left)),
                    Ordering::Release,
                );
            }
        }
        let ever = st.ever;
        st.ever = true;
        st.counts = [reply.calls, reply.failures, reply.slow, reply.run];
        st.contended = reply.contended;
        st.last_sync = Some(tokio::time::Instant::now());
        drop(st);
        link.set_following(true);
        SyncOutcome::Synced {
            rejoined: rejoin && ever,
        }
    }

    /// Moves the local state machine to the shared state, announcing the change (hooks, tracing,
    /// metrics) with the shared reason. Returns whether a new local period began (the local epoch
    /// moved), which resets the local probe counts.
    fn apply_shared(
        &self,
        reply: &super::store::SyncReply,
        reason: &'static str,
        new_epoch: bool,
    ) -> bool {
        let to = reply.state;
        let open_for = reply.open_for.unwrap_or_default();
        let guard = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let current = self.state.load(Ordering::Acquire);
        let from = kind(current);
        if from == to {
            // Same state: no announcement. An opening keeps the shared deadline; a new half-open
            // period (the local one began on the local clock) starts its probe counts afresh.
            match to {
                CircuitState::Open => {
                    let now = self.clock.now();
                    self.open_until.store(
                        now.saturating_add(duration_to_nanos(open_for)),
                        Ordering::Release,
                    );
                    self.streak.store(reply.streak, Ordering::Release);
                    false
                }
                CircuitState::HalfOpen if new_epoch => {
                    self.set_state(current, CircuitState::HalfOpen, None);
                    true
                }
                _ => false,
            }
        } else {
            self.set_state(current, to, Some((open_for, reply.streak)));
            self.streak.store(reply.streak, Ordering::Release);
            drop(guard);
            self.announce(from, to, reason);
            true
        }
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
            None,
            Arc::from(Vec::new()),
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
