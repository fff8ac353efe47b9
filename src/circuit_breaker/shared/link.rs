//! A shared circuit's [`Link`]: what its breaker keeps of the shared state between syncs, the
//! handle's commands not yet delivered, and what the snapshot shows of the shared window.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use crate::circuit_breaker::snapshot::SharedSnapshot;
use crate::circuit_breaker::store::Command;
use crate::circuit_breaker::window::{stripe_count, stripe_index};

use super::Signal;

/// A command from the handle, not yet delivered to the store.
#[derive(Debug, Default)]
struct PendingCommand {
    command: Option<Command>,
    /// Incremented with every command.
    generation: u64,
}

/// What the sync task remembers of a circuit between rounds.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// The store's generation of the circuit (0 before the first sync).
    pub(crate) generation: u64,
    /// The last shared epoch applied.
    pub(crate) epoch: u64,
    /// The reason of the last shared transition.
    pub(crate) reason: u8,
    /// The breaker's refusal count at the last sync (its difference is the demand for probes).
    pub(crate) last_rejected: u64,
    /// The shared window at the last sync: calls, failures, slow calls, failures in a row.
    pub(crate) counts: [u32; 4],
    pub(crate) last_sync: Option<Instant>,
    /// Whether the circuit ever followed the store (for logging the first sync quietly).
    pub(crate) ever: bool,
    /// Half-open: whether another replica waits for a probe permit (at the last sync).
    pub(crate) contended: bool,
}

/// A shared breaker's side of the sync: outcomes counted for the next report, probe outcomes,
/// commands, and whether it follows the store right now.
pub(crate) struct Link {
    pub(crate) signal: Arc<Signal>,
    following: AtomicBool,
    urgent: AtomicBool,
    /// Completed calls, per thread stripe (a thread writes only its own cache line).
    calls: Box<[CachePadded<AtomicU32>]>,
    failures: AtomicU32,
    slow: AtomicU32,
    probe_ok: AtomicU32,
    probe_bad: AtomicU32,
    /// For an opening made on the local state machine, its reason code plus one (0: none).
    opened_locally: AtomicU8,
    command: Mutex<PendingCommand>,
    pub(crate) sync: Mutex<SyncState>,
    /// Callers waiting for a probe permit whose demand is not reported yet.
    waiting: AtomicU32,
    /// Tickets handed to waiting callers so far, and the last one a sync answered.
    tickets: AtomicU64,
    answered: AtomicU64,
    /// The local half-open period (its epoch plus one; 0: none) in which the store answered a
    /// request of this replica for probe permits.
    asked: AtomicU64,
    /// Woken when a sync of this circuit is over (for waiting callers).
    synced: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("following", &self.is_following())
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(crate) fn new(signal: Arc<Signal>) -> Self {
        Self {
            signal,
            following: AtomicBool::new(false),
            urgent: AtomicBool::new(false),
            calls: (0..stripe_count())
                .map(|_| CachePadded::new(AtomicU32::new(0)))
                .collect(),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
            probe_ok: AtomicU32::new(0),
            probe_bad: AtomicU32::new(0),
            opened_locally: AtomicU8::new(0),
            command: Mutex::new(PendingCommand::default()),
            sync: Mutex::new(SyncState::default()),
            waiting: AtomicU32::new(0),
            tickets: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            asked: AtomicU64::new(0),
            synced: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Counts a completed call for the next report.
    #[inline]
    pub(crate) fn count(&self, failed: bool, slow: bool) {
        let stripe = &self.calls[stripe_index() & (self.calls.len() - 1)];
        stripe.fetch_add(1, Ordering::Relaxed);
        if failed || slow {
            self.count_bad(failed, slow);
        }
        self.signal.ensure_started();
    }

    /// A failure or a slow call can trip the shared circuit: report it early.
    #[cold]
    fn count_bad(&self, failed: bool, slow: bool) {
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            self.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.urge();
    }

    /// Asks for an early sync of this circuit.
    pub(crate) fn urge(&self) {
        if !self.urgent.load(Ordering::Relaxed) && !self.urgent.swap(true, Ordering::AcqRel) {
            self.signal.wake();
        }
    }

    /// A call was refused in half-open for want of a probe permit: ask the store for some.
    #[cold]
    pub(crate) fn want_probe(&self) {
        if self.is_following() {
            self.urge();
        }
        self.signal.ensure_started();
    }

    /// A caller refused in half-open for want of a permit, in the local half-open period `epoch`.
    /// Unless the store already answered a request of this replica for permits in this period (or
    /// the replica does not follow the store, or has no sync task), registers the caller as
    /// demand, asks for a sync at once and returns a ticket (never 0) to wait with. Otherwise 0:
    /// refuse the caller now.
    ///
    /// This closes the gap of a replica that had no callers while the circuit was open: it learns
    /// of the half-open state at a sync that asked for no permits, and without the wait its first
    /// caller would be refused merely because the replica had not asked yet.
    ///
    /// Why wait rather than admit the caller locally: a permit handed out by a replica on its own
    /// (or reserved for it ahead of the wait) cannot keep "exactly N probes across replicas" with
    /// more replicas than probes; only the store knows how many are left. The wait is bounded
    /// ([`Signal::probe_wait`]), happens at most once per half-open period and replica (until the
    /// store answers), and never on the closed path: `acquire` reaches here only when refusing.
    #[cold]
    pub(crate) fn wait_for_probe(&self, epoch: u64) -> u64 {
        if self.signal.probe_wait().is_zero()
            || !self.is_following()
            || !self.signal.is_running()
            || self.asked_in(epoch)
        {
            return 0;
        }
        // Demand first, ticket second: a sync that sees the ticket carries the demand.
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        self.urgent.store(true, Ordering::Release);
        self.signal.wake_now();
        ticket
    }

    /// Takes the demand of waiting callers for a report: their number, and the last ticket it
    /// covers.
    pub(crate) fn take_waiting(&self) -> (u32, u64) {
        let covers = self.tickets.load(Ordering::SeqCst);
        (self.waiting.swap(0, Ordering::SeqCst), covers)
    }

    /// Whether the store answered a request for permits in the local half-open period `epoch`.
    pub(crate) fn asked_in(&self, epoch: u64) -> bool {
        self.asked.load(Ordering::Acquire) == epoch + 1
    }

    /// The store answered a request for permits in the local half-open period `epoch`.
    pub(crate) fn asked(&self, epoch: u64) {
        self.asked.store(epoch + 1, Ordering::Release);
    }

    /// Whether a sync carrying the demand of `ticket` is over.
    pub(crate) fn is_answered(&self, ticket: u64) -> bool {
        self.answered.load(Ordering::Acquire) >= ticket
    }

    /// A sync carrying the demand of tickets up to `covers` is over: wakes the waiting callers.
    pub(crate) fn answered(&self, covers: u64) {
        self.answered.fetch_max(covers, Ordering::AcqRel);
        if self.tickets.load(Ordering::Acquire) > 0 {
            self.synced.notify_waiters();
        }
    }

    /// Completes at the end of the next sync of this circuit (enable it before checking).
    pub(crate) fn next_sync(&self) -> tokio::sync::futures::OwnedNotified {
        Arc::clone(&self.synced).notified_owned()
    }

    /// A probe's outcome, for the store to decide on.
    #[cold]
    pub(crate) fn probe_result(&self, failed: bool) {
        if failed {
            self.probe_bad.fetch_add(1, Ordering::Relaxed);
        } else {
            self.probe_ok.fetch_add(1, Ordering::Relaxed);
        }
        self.urge();
    }

    /// The local state machine opened the circuit (the store being unreachable), for `reason`.
    pub(crate) fn opened_locally(&self, reason: u8) {
        self.opened_locally
            .store(reason.saturating_add(1), Ordering::Release);
    }

    /// The reason code of an opening made locally and not yet reported.
    pub(crate) fn local_opening(&self) -> Option<u8> {
        match self.opened_locally.load(Ordering::Acquire) {
            0 => None,
            n => Some(n - 1),
        }
    }

    /// Queues a handle's command for the store (the latest wins) and asks for a sync.
    pub(crate) fn command(&self, command: Option<Command>) {
        let Some(command) = command else {
            return;
        };
        {
            let mut pending = self.command.lock().unwrap_or_else(PoisonError::into_inner);
            pending.command = Some(command);
            pending.generation += 1;
        }
        self.signal.ensure_started();
        self.urge();
    }

    /// The command to send, and the generation to acknowledge once it is delivered.
    pub(crate) fn pending_command(&self) -> (Option<Command>, u64) {
        let pending = self.command.lock().unwrap_or_else(PoisonError::into_inner);
        (pending.command, pending.generation)
    }

    /// The command sent with `generation` was delivered. Returns whether a newer one is waiting.
    pub(crate) fn delivered(&self, generation: u64) -> bool {
        let mut pending = self.command.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.generation == generation {
            pending.command = None;
            false
        } else {
            pending.command.is_some()
        }
    }

    /// Whether the circuit follows the store now.
    #[inline]
    pub(crate) fn is_following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// Sets whether it follows the store; returns what it was.
    pub(crate) fn set_following(&self, yes: bool) -> bool {
        if yes {
            self.opened_locally.store(0, Ordering::Release);
        }
        self.following.swap(yes, Ordering::AcqRel)
    }

    /// Takes the outcomes counted since the last call: calls, failures, slow calls.
    pub(crate) fn take_outcomes(&self) -> (u32, u32, u32) {
        let calls = self
            .calls
            .iter()
            .map(|s| s.swap(0, Ordering::Relaxed))
            .fold(0u32, u32::saturating_add);
        (
            calls,
            self.failures.swap(0, Ordering::Relaxed),
            self.slow.swap(0, Ordering::Relaxed),
        )
    }

    /// Takes the probe outcomes counted since the last call: successes, failures.
    pub(crate) fn take_probe_results(&self) -> (u32, u32) {
        (
            self.probe_ok.swap(0, Ordering::Relaxed),
            self.probe_bad.swap(0, Ordering::Relaxed),
        )
    }

    /// Clears the early-sync flag; returns whether it was set.
    pub(crate) fn take_urgent(&self) -> bool {
        self.urgent.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Acquire)
    }

    /// What a snapshot shows of the shared state.
    pub(crate) fn view(&self) -> SharedSnapshot {
        let st = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let [calls, failures, slow, run] = st.counts;
        SharedSnapshot {
            following: self.is_following(),
            calls,
            failures,
            failure_rate: rate(failures, calls),
            slow_calls: slow,
            consecutive_failures: run,
            since_sync: st.last_sync.map(|t| t.elapsed()),
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
