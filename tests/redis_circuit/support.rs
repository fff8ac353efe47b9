//! Replicas of a shared circuit, each with its own upstream, `RedisBackend` and layer, as N
//! processes behind a load balancer would have.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerLayer, CircuitHandle, CircuitState,
};

/// A key prefix no other test uses, so tests can share a server without meeting.
pub(crate) fn unique_prefix(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t{}-{what}", N.fetch_add(1, Ordering::Relaxed))
}

/// An upstream that fails while `failing` is set, and holds each call at a gate while `hold` is.
#[derive(Clone)]
pub(crate) struct Upstream {
    failing: Arc<AtomicBool>,
    hold: Arc<AtomicBool>,
    /// The next call (one only) waits at the gate.
    hold_next: Arc<AtomicBool>,
    /// Held calls wait on the current gate; releasing closes it (letting them all go) and puts a
    /// fresh one in its place.
    gate: Arc<Mutex<Arc<Semaphore>>>,
    calls: Arc<AtomicUsize>,
}

impl Default for Upstream {
    fn default() -> Self {
        Self {
            failing: Arc::default(),
            hold: Arc::default(),
            hold_next: Arc::default(),
            gate: Arc::new(Mutex::new(Arc::new(Semaphore::new(0)))),
            calls: Arc::default(),
        }
    }
}

impl Upstream {
    pub(crate) fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    /// Calls wait at the gate (until [`release`](Self::release)) while `yes`.
    pub(crate) fn hold(&self, yes: bool) {
        self.hold.store(yes, Ordering::SeqCst);
    }

    /// The next call, and only that one, waits at the gate (until [`release`](Self::release)).
    pub(crate) fn hold_next(&self) {
        self.hold_next.store(true, Ordering::SeqCst);
    }

    /// Lets every call waiting at the gate go on, and stops holding new ones.
    pub(crate) fn release(&self) {
        self.hold(false);
        let mut gate = self.gate.lock().unwrap();
        gate.close();
        *gate = Arc::new(Semaphore::new(0));
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn service(&self) -> BoxCloneSyncService<(), &'static str, BoxError> {
        let this = self.clone();
        BoxCloneSyncService::new(tower::service_fn(move |()| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                if this.hold.load(Ordering::SeqCst) || this.hold_next.swap(false, Ordering::SeqCst)
                {
                    let gate = Arc::clone(&this.gate.lock().unwrap());
                    // Closed by `release`: go on.
                    let _ = gate.acquire().await;
                }
                if this.failing.load(Ordering::SeqCst) {
                    Err::<&'static str, BoxError>("upstream failed".into())
                } else {
                    Ok("ok")
                }
            }
        }))
    }
}

/// What a call came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Failed,
    Refused(CircuitState),
}

/// The transitions a replica's hook saw: (from, to, reason).
pub(crate) type Seen = Arc<Mutex<Vec<(CircuitState, CircuitState, String)>>>;

/// One replica: its backend, layer, handle, upstream and service.
pub(crate) struct Replica {
    pub(crate) backend: RedisBackend,
    pub(crate) layer: CircuitBreakerLayer,
    pub(crate) handle: CircuitHandle,
    pub(crate) up: Upstream,
    pub(crate) svc: BoxCloneSyncService<(), &'static str, BoxError>,
    pub(crate) seen: Seen,
}

impl Replica {
    /// Builds a replica whose layer is `configure(builder with a hook)`, shared through `backend`.
    pub(crate) fn new(
        backend: RedisBackend,
        configure: impl FnOnce(CircuitBreakerBuilder) -> CircuitBreakerBuilder,
        interval: Duration,
    ) -> Self {
        let seen: Seen = Arc::default();
        let hook = {
            let seen = seen.clone();
            move |t: &tower_rampart::circuit_breaker::Transition| {
                seen.lock()
                    .unwrap()
                    .push((t.from(), t.to(), t.reason().to_string()));
            }
        };
        let layer = configure(CircuitBreakerLayer::builder().on_state_change(hook))
            .backend(backend.clone())
            .sync_interval(interval)
            .build()
            .expect("valid configuration");
        let up = Upstream::default();
        let svc = BoxCloneSyncService::new(layer.layer(up.service()));
        Self {
            handle: layer.handle(),
            backend,
            layer,
            up,
            svc,
            seen,
        }
    }

    /// One call through this replica.
    pub(crate) async fn call(&self) -> Outcome {
        outcome(self.svc.clone().oneshot(()).await)
    }

    /// The transitions seen so far, as (from, to, reason).
    pub(crate) fn seen(&self) -> Vec<(CircuitState, CircuitState, String)> {
        self.seen.lock().unwrap().clone()
    }

    /// The state as a status endpoint shows it.
    pub(crate) fn state(&self) -> CircuitState {
        self.handle.state()
    }

    pub(crate) fn following(&self) -> bool {
        self.handle.is_following_shared()
    }
}

pub(crate) fn outcome(result: Result<&'static str, BoxError>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(e) => match e.downcast_ref::<CircuitOpen>() {
            Some(open) => Outcome::Refused(open.state()),
            None => Outcome::Failed,
        },
    }
}

/// `n` replicas, each on its own backend from `connect`, with a layer named `name`.
pub(crate) async fn replicas<C, Fut>(
    n: usize,
    connect: C,
    interval: Duration,
    configure: impl Fn(CircuitBreakerBuilder) -> CircuitBreakerBuilder,
) -> Vec<Replica>
where
    C: Fn() -> Fut,
    Fut: Future<Output = RedisBackend>,
{
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Replica::new(connect().await, &configure, interval));
    }
    out
}

/// Polls `cond` every 2 ms until it holds, for at most `limit`; returns how long it took, or
/// panics with `what`.
pub(crate) async fn within(
    limit: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits (at most 5 s) until every replica follows the shared state.
pub(crate) async fn all_following(replicas: &[Replica]) {
    within(
        Duration::from_secs(5),
        "every replica follows the shared state",
        || replicas.iter().all(Replica::following),
    )
    .await;
}

/// Waits (at most `limit`) until every replica is in `state` and has announced it; returns how long
/// it took.
pub(crate) async fn all_in(replicas: &[Replica], state: CircuitState, limit: Duration) -> Duration {
    // A circuit's state is visible a moment before its hooks hear of the change (they run just
    // after, on the same thread): wait for both, so that what a replica announced can be read.
    within(
        limit,
        &format!("every replica {state}, and announced"),
        || {
            replicas.iter().all(|r| {
                r.state() == state && r.seen().last().is_none_or(|(_, to, _)| *to == state)
            })
        },
    )
    .await
}

/// How many times Redis ran the circuit script (`EVALSHA` and `EVAL`), from `INFO commandstats`
/// of every node given.
pub(crate) fn script_calls(nodes: &[&crate::common::redis::RedisServer]) -> u64 {
    nodes
        .iter()
        .map(|n| n.calls("evalsha") + n.calls("eval"))
        .sum()
}

/// Calls `svc` `n` times, returns the outcomes.
pub(crate) async fn calls(replica: &Replica, n: usize) -> Vec<Outcome> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(replica.call().await);
    }
    out
}

/// A backend on `url` with a timeout generous enough for a loaded test machine.
pub(crate) async fn connect(url: &str, prefix: &str) -> RedisBackend {
    RedisBackend::connect(url)
        .await
        .expect("connect to the test redis-server")
        .timeout(Duration::from_secs(1))
        .prefix(prefix)
}

/// Makes sure `svc` is used as a tower `Service` (keeps the import honest).
#[allow(dead_code)]
fn _is_service<S: Service<()>>(_: &S) {}
