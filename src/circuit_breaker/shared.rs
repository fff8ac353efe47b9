//! Shared circuits: each breaker's [`Link`] to the sync task, and the task itself ([`Driver`]).
//!
//! The task belongs to the layer. It is spawned, on the runtime of the caller, by the first call
//! (or the layer's `build`/`layer`, or a handle command) made inside a Tokio runtime, holds only a
//! weak reference to the layer's state between rounds, and ends when the layer, its clones and its
//! services are gone. Each round syncs the layer's circuits concurrently, one store call each
//! (a Redis script: push the batch of outcomes, pull the shared state); a circuit whose store call
//! fails falls back to its local state machine until a later round succeeds.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use crossbeam_utils::CachePadded;
use tokio::time::Instant;

use super::keyed::CircuitMap;
use super::snapshot::SharedSnapshot;
use super::state::Breaker;
use super::store::{CircuitStore, Command, SyncReply};
use super::window::{stripe_count, stripe_index};
use crate::backend::{BackendError, ErrorKind};
use crate::throttle::LogThrottle;

/// Wakes the sync task, and starts it when it is not running.
pub(crate) struct Signal {
    notify: tokio::sync::Notify,
    running: AtomicBool,
    /// A round is wanted now, without the gap between early rounds (a caller waits for it).
    now: AtomicBool,
    /// How long a caller waits for a probe permit: the store's timeout, at most one sync interval.
    probe_wait: OnceLock<Duration>,
    /// Spawns the task on the current runtime; false when there is none.
    spawn: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Signal {
    pub(crate) fn new() -> Self {
        Self {
            notify: tokio::sync::Notify::new(),
            running: AtomicBool::new(false),
            now: AtomicBool::new(false),
            probe_wait: OnceLock::new(),
            spawn: OnceLock::new(),
        }
    }

    /// Starts the sync task if it is not running and this thread is inside a Tokio runtime.
    #[inline]
    pub(crate) fn ensure_started(&self) {
        if !self.running.load(Ordering::Relaxed) {
            self.start();
        }
    }

    #[cold]
    fn start(&self) {
        let Some(spawn) = self.spawn.get() else {
            return;
        };
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && !spawn()
        {
            self.running.store(false, Ordering::Release);
        }
    }

    /// Asks the task for a round now (it keeps a minimum gap between rounds).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// Asks the task for a round at once: a caller waits for its answer.
    fn wake_now(&self) {
        self.now.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether a round was asked for at once (clears the request).
    fn take_now(&self) -> bool {
        self.now.swap(false, Ordering::AcqRel)
    }

    /// How long a caller may wait for a probe permit (zero before the task is set up).
    pub(crate) fn probe_wait(&self) -> Duration {
        self.probe_wait.get().copied().unwrap_or(Duration::ZERO)
    }

    /// Whether the task is running.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}

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

/// How a sync went for one circuit.
#[derive(Debug)]
pub(crate) enum SyncOutcome {
    /// Synced; `rejoined` when it had been following its local state machine.
    Synced { rejoined: bool },
    /// Failed; `left` when it was following the store until now.
    Failed { left: bool, error: BackendError },
    /// The store had lost the circuit while it was open here: carried over at the next sync.
    Lost,
}

/// The circuits a driver syncs.
pub(crate) enum Tracked<K> {
    One(K, Arc<Breaker>),
    PerKey(Arc<CircuitMap<K>>),
}

impl<K: Clone + std::hash::Hash + Eq> Tracked<K> {
    fn all(&self) -> Vec<(K, Arc<Breaker>)> {
        match self {
            Self::One(k, b) => vec![(k.clone(), Arc::clone(b))],
            Self::PerKey(map) => map.all(),
        }
    }
}

/// The most store calls a round has in flight at once.
const CONCURRENCY: usize = 64;

/// The sync task's state: the layer's circuits and store.
pub(crate) struct Driver<K, St> {
    store: St,
    circuits: Tracked<K>,
    interval: Duration,
    /// How long the store keeps this replica's probe permits without hearing from it.
    lease: Duration,
    replica: u64,
    signal: Arc<Signal>,
    name: &'static str,
    /// Logs of errors, of fallbacks to the local circuits, and of rejoins: each at most once per
    /// 10 s (with the number held back), so that a flapping Redis cannot flood the logs.
    log: LogThrottle,
    fallback_log: LogThrottle,
    rejoin_log: LogThrottle,
}

impl<K, St> Drop for Driver<K, St> {
    fn drop(&mut self) {
        // Wakes the task so that it sees the layer is gone and ends.
        self.signal.wake();
    }
}

/// Builds the driver of a layer's circuits and arms `signal` to spawn its task.
pub(crate) fn driver<K, St>(
    store: St,
    circuits: Tracked<K>,
    interval: Duration,
    name: &'static str,
    signal: Arc<Signal>,
) -> Arc<Driver<K, St>>
where
    K: Clone + std::hash::Hash + Eq + Send + Sync + 'static,
    St: CircuitStore<K>,
{
    let lease = interval * 4 + store.timeout();
    let _ = signal.probe_wait.set(store.timeout().min(interval));
    let driver = Arc::new(Driver {
        store,
        circuits,
        interval,
        lease,
        replica: replica_id(),
        signal: Arc::clone(&signal),
        name,
        log: LogThrottle::new(Duration::from_secs(10)),
        fallback_log: LogThrottle::new(Duration::from_secs(10)),
        rejoin_log: LogThrottle::new(Duration::from_secs(10)),
    });
    let weak = Arc::downgrade(&driver);
    let _ = signal.spawn.set(Box::new(
        move || match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(run(weak.clone()));
                true
            }
            Err(_) => false,
        },
    ));
    signal.ensure_started();
    driver
}

/// A random identifier for this replica's layer (probe permits are held per replica).
fn replica_id() -> u64 {
    use std::hash::BuildHasher;
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // Not a time for logic: only entropy, with the process id and a per-process random seed.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let id = foldhash::fast::RandomState::default().hash_one((n, std::process::id(), wall));
    id.max(1)
}

/// Marks the task stopped when it ends (the layer dropped, or its runtime shut down).
struct Running(Arc<Signal>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.store(false, Ordering::Release);
    }
}

async fn run<K, St>(driver: Weak<Driver<K, St>>)
where
    K: Clone + std::hash::Hash + Eq + Send + Sync + 'static,
    St: CircuitStore<K>,
{
    let (signal, interval) = match driver.upgrade() {
        Some(d) => (Arc::clone(&d.signal), d.interval),
        None => return,
    };
    let _running = Running(Arc::clone(&signal));
    let gap = interval / 4;
    let mut next_full = Instant::now();
    loop {
        let Some(d) = driver.upgrade() else {
            return;
        };
        let started = Instant::now();
        let full = started >= next_full;
        if full {
            next_full = started + interval;
        }
        let wake_at = d.round(full).await;
        drop(d);
        // Never sooner than 1 ms after this round began, whatever a deadline says.
        let deadline = wake_at
            .map_or(next_full, |w| w.min(next_full))
            .max(started + Duration::from_millis(1));
        if tokio::time::timeout_at(deadline, signal.notify.notified())
            .await
            .is_ok()
            && !signal.take_now()
        {
            // An early round was asked for: not sooner than `gap` after the last one started
            // (unless a caller waits for a probe permit: then at once).
            tokio::time::sleep_until((started + gap).min(deadline)).await;
        }
    }
}

impl<K, St> Driver<K, St>
where
    K: Clone + std::hash::Hash + Eq + Send + Sync + 'static,
    St: CircuitStore<K>,
{
    /// Syncs the circuits (all of them, or on an early round those that asked or are open or
    /// half-open). Returns when the next round is due at the latest: the end of the earliest wait
    /// among open circuits, so that probes are asked for as soon as it is over.
    async fn round(&self, full: bool) -> Option<Instant> {
        let chosen: Vec<(K, Arc<Breaker>)> = self
            .circuits
            .all()
            .into_iter()
            .filter(|(_, b)| full || b.wants_early_sync())
            .collect();
        let mut left = 0usize;
        let mut rejoined = 0usize;
        let mut last_error = None;
        let mut rest = &chosen[..];
        if !self.store.is_connected() && !rest.is_empty() {
            // The store is down: one circuit probes it (when it is time to); the others wait for
            // the outcome rather than each waiting for a timeout.
            let probe = if self.store.is_available() {
                self.sync_batch(&rest[..1]).await
            } else {
                vec![self.skip(&rest[0].1)]
            };
            rest = &rest[1..];
            let down = !self.store.is_connected();
            for o in probe {
                self.tally(o, &mut left, &mut rejoined, &mut last_error);
            }
            if down {
                for (_, b) in rest {
                    let o = self.skip(b);
                    self.tally(o, &mut left, &mut rejoined, &mut last_error);
                }
                rest = &[];
            }
        }
        for chunk in rest.chunks(CONCURRENCY) {
            for o in self.sync_batch(chunk).await {
                self.tally(o, &mut left, &mut rejoined, &mut last_error);
            }
        }
        self.report(left, rejoined, last_error);
        let now = Instant::now();
        chosen
            .iter()
            .filter_map(|(_, b)| b.following_open_for())
            .map(|wait| now + wait + Duration::from_millis(2))
            .min()
    }

    /// A circuit not synced this round because the store is known to be down.
    fn skip(&self, breaker: &Breaker) -> SyncOutcome {
        let prepared = breaker.prepare_sync(self.replica, self.lease);
        let error = BackendError::with_kind(
            ErrorKind::Unreachable,
            "the shared circuit store is unreachable (a recent call failed; it is probed again \
             every 100 ms)",
            None,
        );
        breaker.finish_sync(prepared, Err(error))
    }

    async fn sync_batch(&self, circuits: &[(K, Arc<Breaker>)]) -> Vec<SyncOutcome> {
        let mut prepared = Vec::with_capacity(circuits.len());
        let mut calls = Vec::with_capacity(circuits.len());
        for (key, breaker) in circuits {
            let p = breaker.prepare_sync(self.replica, self.lease);
            calls.push(self.store.sync(key, &p.request));
            prepared.push(p);
        }
        let results = join_all(calls).await;
        circuits
            .iter()
            .zip(prepared)
            .zip(results)
            .map(|(((_, b), p), r)| b.finish_sync(p, r))
            .collect()
    }

    fn tally(
        &self,
        outcome: SyncOutcome,
        left: &mut usize,
        rejoined: &mut usize,
        last_error: &mut Option<BackendError>,
    ) {
        match outcome {
            SyncOutcome::Synced { rejoined: true } => *rejoined += 1,
            SyncOutcome::Synced { rejoined: false } | SyncOutcome::Lost => {}
            SyncOutcome::Failed { left: l, error } => {
                if l {
                    *left += 1;
                }
                *last_error = Some(error);
            }
        }
    }

    fn report(&self, left: usize, rejoined: usize, error: Option<BackendError>) {
        if left > 0 {
            #[cfg(feature = "metrics")]
            crate::metrics::counter(&crate::metrics::key(
                "rampart_circuit_shared_fallback_total",
                self.name,
                &[],
            ))
            .increment(left as u64);
            if let Some(suppressed) = self.fallback_log.check() {
                let error = error.as_ref().map(ToString::to_string).unwrap_or_default();
                tracing::warn!(
                    circuit = self.name,
                    circuits = left,
                    %error,
                    suppressed,
                    "shared circuit state unreachable; following the local circuit until it answers"
                );
            }
        } else if let Some(error) = error
            && error.kind() != ErrorKind::Unreachable
            && let Some(suppressed) = self.log.check()
        {
            tracing::warn!(
                circuit = self.name,
                %error,
                suppressed,
                "shared circuit sync failed"
            );
        }
        if rejoined > 0
            && let Some(suppressed) = self.rejoin_log.check()
        {
            tracing::info!(
                suppressed,
                circuit = self.name,
                circuits = rejoined,
                "shared circuit state reachable again; following it"
            );
        }
    }
}

/// Runs `futures` concurrently and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx: &mut Context<'_>| {
        let mut pending = false;
        for (fut, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match fut.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// The parts of a sync prepared by the breaker before the store call.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) request: super::store::SyncRequest,
    pub(crate) command_generation: u64,
    pub(crate) was_following: bool,
    /// Probe outcomes this local half-open period had when the request was made.
    pub(crate) results_at_send: u32,
    /// The last ticket of a waiting caller whose demand the request carries.
    pub(crate) covers: u64,
}

/// Used by the breaker to apply a reply.
pub(crate) type Reply = Result<SyncReply, BackendError>;
