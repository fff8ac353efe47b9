//! The breaker as a state machine of its own: admitting calls, recording outcomes, opening,
//! probing and closing.

use super::*;

impl Breaker {
    pub(crate) fn new(cfg: Config, key: Option<Arc<str>>, hooks: Hooks) -> Self {
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
            meters: Meters::new(cfg.name, key.as_ref(), cfg.key_in_metrics),
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
        hooks: Hooks,
        signal: &Arc<crate::circuit_breaker::shared::Signal>,
    ) -> Self {
        let mut breaker = Self::new(cfg, key, hooks);
        breaker.link = Some(Box::new(crate::circuit_breaker::shared::Link::new(
            Arc::clone(signal),
        )));
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
            self.transition(word, CircuitState::HalfOpen, TransitionReason::WaitElapsed);
        }
    }

    /// The refusal a call made now would certainly get, without taking anything: the circuit is
    /// forced open, or open with its wait not over. `None` otherwise (closed, half-open, or
    /// open with the wait over: a call may go through). One load of the state word when closed.
    #[inline]
    pub(crate) fn sheds(&self) -> Option<(CircuitState, Option<Duration>)> {
        let word = self.state.load(Ordering::Acquire);
        if word & KIND_MASK == kind_bits(CircuitState::Closed) {
            return None;
        }
        self.sheds_slow(word)
    }

    #[inline(never)]
    fn sheds_slow(&self, word: u64) -> Option<(CircuitState, Option<Duration>)> {
        match kind(word) {
            CircuitState::ForcedOpen => Some((CircuitState::ForcedOpen, None)),
            CircuitState::Open => {
                let now = self.clock.now();
                let until = self.open_until.load(Ordering::Acquire);
                (now < until).then(|| (CircuitState::Open, Some(Duration::from_nanos(until - now))))
            }
            _ => None,
        }
    }

    /// Asks to make a call now. A refusal with a ticket is not one yet: see
    /// [`acquire_waited`](Self::acquire_waited).
    ///
    /// A closed circuit answers inline (a load of the state word); every other state goes through
    /// [`acquire_with`](Self::acquire_with), which loads the word again.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, Refusal> {
        let word = self.state.load(Ordering::Acquire);
        if word & KIND_MASK == kind_bits(CircuitState::Closed) {
            return Ok(Permit {
                epoch: epoch(word),
                probe: false,
                started: self.start_time(),
            });
        }
        self.acquire_with(true)
    }

    /// `wait`: a half-open refusal may instead hand out a ticket to wait for a probe permit.
    ///
    /// Out of line, so that [`acquire`](Self::acquire)'s closed path inlines into the service's
    /// `call` (inlined into it, this made `acquire` a call of its own: 30 instructions per call).
    #[inline(never)]
    pub(super) fn acquire_with(
        &self,
        #[allow(unused_variables)] wait: bool,
    ) -> Result<Permit, Refusal> {
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
                    self.transition(word, CircuitState::HalfOpen, TransitionReason::WaitElapsed);
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
                    #[cfg(test)]
                    claim_hook::before_claim();
                    if self
                        .state
                        .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        // A shared circuit's sync task may have lowered the allowance between
                        // the look above and this claim, giving the unused permits back to the
                        // store (`prepare_sync`): either it sees this probe (it stores the
                        // allowance, fences, then loads the state) and keeps its permit, or this
                        // caller sees the lowered allowance here and gives the permit back.
                        // Without it both went through: the store granted the permit to
                        // another replica while this one probed with it (n + 1 probes).
                        #[cfg(feature = "redis")]
                        if self.link.is_some() {
                            std::sync::atomic::fence(Ordering::SeqCst);
                            if probes(next) > self.probe_allowance.load(Ordering::Acquire) {
                                self.cancel(Permit {
                                    epoch: epoch(word),
                                    probe: true,
                                    started: 0,
                                });
                                // Decided again: refused as any caller past the allowance is
                                // (a ticket to wait, demand for the store), unless the sync
                                // task saw the probe and kept the permit meanwhile.
                                continue;
                            }
                        }
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
    pub(super) fn start_time(&self) -> Nanos {
        if self.cfg.slow_calls.is_some() {
            self.clock.now()
        } else {
            0
        }
    }

    /// Counts a refusal (also one `poll_ready` decided, by [`sheds`](Self::sheds)).
    pub(crate) fn refuse(&self, state: CircuitState, retry_after: Option<Duration>) -> Refusal {
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
    ///
    /// The common case, a success of a closed circuit that needs no clock (no slow-call
    /// detection, a count window) and is not shared, is inlined: once the window is full it is a
    /// count in the thread's stripe. Everything else is [`record_outcome`](Self::record_outcome).
    #[inline]
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome) {
        #[cfg(feature = "redis")]
        let shared = self.link.is_some();
        #[cfg(not(feature = "redis"))]
        let shared = false;
        if outcome == Outcome::Success && !permit.probe && !self.timed && !shared {
            let word = self.state.load(Ordering::Acquire);
            if epoch(word) != permit.epoch || kind(word) != CircuitState::Closed {
                return; // issued in an earlier state, or disabled
            }
            if let Window::Count(w) = &self.window
                && w.count_striped_success()
            {
                // As `record_closed` with no counts: no rate can have risen, and no failures in
                // a row reach a `consecutive_failures` of at least 1 (the builder's minimum).
                self.reset_consecutive();
                return;
            }
            self.record_closed(word, false, false, 0);
            return;
        }
        self.record_outcome(permit, outcome);
    }

    /// Records any outcome (see [`record`](Self::record) for the inlined common case).
    #[inline(never)]
    pub(super) fn record_outcome(&self, permit: Permit, outcome: Outcome) {
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
        self.record_closed(word, failed, slow, now);
    }

    /// Records a non-probe outcome of the closed circuit whose state word is `word`, and opens
    /// it if a trip condition is met.
    #[inline(never)]
    fn record_closed(&self, word: u64, failed: bool, slow: bool, now: Nanos) {
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link {
            link.count(failed, slow);
        }
        let counts = self.window.record(failed, slow, now);
        let consecutive = if failed {
            self.consecutive.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.reset_consecutive();
            0
        };
        if let Some(reason) = self.trips(counts, consecutive) {
            self.trip(word, reason);
        }
    }

    /// A success ends a run of failures (written only when there is one to end).
    #[inline]
    fn reset_consecutive(&self) {
        if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Release);
        }
    }

    /// A trip condition is met on this breaker's window: open, or for a shared circuit following
    /// its store, have the store decide at once (on the window of every replica).
    #[cold]
    pub(super) fn trip(&self, word: u64, reason: TransitionReason) {
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
    pub(super) fn trips(&self, c: Option<Counts>, consecutive: u32) -> Option<TransitionReason> {
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
            Some(TransitionReason::FailureRate)
        } else if enough
            && self
                .cfg
                .slow_calls
                .is_some_and(|s| at_least(c.slow, s.rate))
        {
            Some(TransitionReason::SlowCallRate)
        } else if self
            .cfg
            .consecutive_failures
            .is_some_and(|n| consecutive >= n)
        {
            Some(TransitionReason::ConsecutiveFailures)
        } else {
            None
        }
    }

    pub(super) fn record_probe(&self, word: u64, failed: bool) {
        let inc = if failed { 1 << 32 } else { 1 };
        let results = self.probe_results.fetch_add(inc, Ordering::AcqRel) + inc;
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link
            && link.is_following()
        {
            // The store decides, on the probes of every replica.
            link.probe_result(failed);
            return;
        }
        self.decide_probes(word, results);
    }

    /// The local decision on the half-open period of `word` from its probes' `results` (the
    /// successes in the low half, the failures in the high one): reopen, close, or wait for more.
    pub(super) fn decide_probes(&self, word: u64, results: u64) {
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
            self.transition(word, CircuitState::Open, TransitionReason::ProbesFailed);
        } else if ok + bad >= n {
            self.transition(
                word,
                CircuitState::Closed,
                TransitionReason::ProbesSucceeded,
            );
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
    pub(super) fn transition(&self, from: u64, to: CircuitState, reason: TransitionReason) {
        // A shared circuit opened by its local state machine (its store unreachable) reports the
        // opening when it rejoins.
        #[cfg(feature = "redis")]
        if to == CircuitState::Open
            && let Some(link) = &self.link
            && !link.is_following()
        {
            link.opened_locally(reason.code());
        }
        // Probes that all succeeded end the run of openings: the next wait starts from the initial.
        let forget_streak = to == CircuitState::Closed;
        self.move_to(Some(from), to, forget_streak, reason);
    }

    /// Forces a state from the handle: always moves (to the same state, it starts afresh). A shared
    /// circuit also sends the command to its store.
    pub(crate) fn force(&self, to: CircuitState, forget_streak: bool, reason: TransitionReason) {
        #[cfg(feature = "redis")]
        if let Some(link) = &self.link {
            link.command(crate::circuit_breaker::store::Command::from_force(
                to,
                forget_streak,
            ));
        }
        self.move_to(None, to, forget_streak, reason);
    }

    pub(super) fn move_to(
        &self,
        from: Option<u64>,
        to: CircuitState,
        forget_streak: bool,
        reason: TransitionReason,
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
    pub(super) fn set_state(
        &self,
        current: u64,
        to: CircuitState,
        open_for: Option<(Duration, u32)>,
    ) {
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

    pub(super) fn announce(&self, from: CircuitState, to: CircuitState, reason: TransitionReason) {
        let key = self.key.as_deref().unwrap_or("");
        if to == CircuitState::Open || to == CircuitState::ForcedOpen {
            tracing::warn!(circuit = self.cfg.name, key, %from, %to, reason = reason.as_str(), "circuit breaker state change");
        } else {
            tracing::info!(circuit = self.cfg.name, key, %from, %to, reason = reason.as_str(), "circuit breaker state change");
        }
        #[cfg(feature = "metrics")]
        self.meters.set_state(to);
        self.hooks.emit(|| {
            CircuitEvent::StateChanged(Transition {
                name: self.cfg.name,
                key: self.key.clone(),
                from,
                to,
                reason,
            })
        });
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

/// A test's pause between a caller's look at the probe allowance and its claim of a probe (the
/// window `prepare_sync` can give permits back in).
#[cfg(test)]
pub(super) mod claim_hook {
    use std::cell::RefCell;

    thread_local! {
        /// Run once, on this thread, at the next claim.
        pub(crate) static BEFORE_CLAIM: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
    }

    pub(super) fn before_claim() {
        if let Some(f) = BEFORE_CLAIM.with(|h| h.borrow_mut().take()) {
            f();
        }
    }
}
