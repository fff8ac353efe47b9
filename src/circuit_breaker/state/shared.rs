//! The shared side of a breaker (feature `redis`): what the sync task reports, and how it
//! applies the shared state.

use super::*;

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
    pub(crate) fn prepare_sync(
        &self,
        replica: u64,
        lease: Duration,
    ) -> crate::circuit_breaker::shared::Prepared {
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
                        // The other half of `acquire_with`'s handshake: a caller that claimed a
                        // probe before this fence is seen below; one after sees the allowance.
                        std::sync::atomic::fence(Ordering::SeqCst);
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
        let request = crate::circuit_breaker::store::SyncRequest {
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
        crate::circuit_breaker::shared::Prepared {
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
        prepared: crate::circuit_breaker::shared::Prepared,
        reply: crate::circuit_breaker::shared::Reply,
    ) -> crate::circuit_breaker::shared::SyncOutcome {
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

    pub(super) fn apply_sync(
        &self,
        prepared: crate::circuit_breaker::shared::Prepared,
        reply: crate::circuit_breaker::shared::Reply,
    ) -> crate::circuit_breaker::shared::SyncOutcome {
        use crate::circuit_breaker::shared::SyncOutcome;
        let link = self.link.as_ref().expect("only shared circuits are synced");
        let reply = match reply {
            Ok(reply) => reply,
            Err(error) => {
                let left = link.set_following(false);
                if left {
                    // On its own again: a half-open circuit probes with its own permits.
                    let half_open = {
                        let _guard = self
                            .transitions
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner);
                        let word = self.state.load(Ordering::Acquire);
                        (kind(word) == CircuitState::HalfOpen).then(|| {
                            self.probe_allowance
                                .store(self.cfg.half_open_probes, Ordering::Release);
                            word
                        })
                    };
                    // And decides on the probes it has run in this period: their results went to
                    // the store, which will not answer, and with every permit used no probe is
                    // left to report one (every call was refused until Redis came back).
                    if let Some(word) = half_open {
                        self.decide_probes(word, self.probe_results.load(Ordering::Acquire));
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
                let bumped = self.apply_shared(
                    &reply,
                    TransitionReason::from_code(reply.reason),
                    new_epoch || rejoin,
                );
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
    pub(super) fn apply_shared(
        &self,
        reply: &crate::circuit_breaker::store::SyncReply,
        reason: TransitionReason,
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
