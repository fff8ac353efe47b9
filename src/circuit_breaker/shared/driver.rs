//! The sync task ([`Driver`]): each round syncs the layer's circuits concurrently, one store call
//! each, and applies the replies.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{BackendError, ErrorKind};
use crate::circuit_breaker::keyed::CircuitMap;
use crate::circuit_breaker::state::Breaker;
use crate::circuit_breaker::store::{CircuitStore, SyncReply};
use crate::throttle::LogThrottle;

use super::Signal;

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
    pub(crate) request: crate::circuit_breaker::store::SyncRequest,
    pub(crate) command_generation: u64,
    pub(crate) was_following: bool,
    /// Probe outcomes this local half-open period had when the request was made.
    pub(crate) results_at_send: u32,
    /// The last ticket of a waiting caller whose demand the request carries.
    pub(crate) covers: u64,
}

/// Used by the breaker to apply a reply.
pub(crate) type Reply = Result<SyncReply, BackendError>;
