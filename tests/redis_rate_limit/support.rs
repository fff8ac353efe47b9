//! Helpers shared by the Redis tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tower_rampart::backend::BackendError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::RedisRateLimitStore;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Decision, Quota, RateLimitLayer, RateLimitStore, StoreLimits,
};

/// The store of a limiter named `name` of `quota` by `algorithm` on `backend`, keyed by a `u32`.
pub(crate) fn u32_store(
    backend: RedisBackend,
    name: &'static str,
    quota: Quota,
    algorithm: Algorithm,
) -> RedisRateLimitStore<u32> {
    RateLimitLayer::builder()
        .name(name)
        .quota(quota)
        .algorithm(algorithm)
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .unwrap()
        .store()
        .clone()
}

/// One decision from `store` on the layer's default limits, waiting for it if it needs I/O.
pub(crate) async fn decide<K, St: RateLimitStore<K> + StoreLimits>(
    store: &St,
    key: &K,
) -> Result<Decision, BackendError> {
    match store.check(key, &Ask::new(store.limit_set())) {
        Check::Ready(result) => result,
        Check::Pending(fut) => fut.await,
    }
}

/// One decision from `store` for `ask`, waiting for it if it needs I/O.
pub(crate) async fn decide_ask<K, St: RateLimitStore<K>>(
    store: &St,
    key: &K,
    ask: &Ask<'_>,
) -> Result<Decision, BackendError> {
    match store.check(key, ask) {
        Check::Ready(result) => result,
        Check::Pending(fut) => fut.await,
    }
}

/// A key prefix no other test uses, so tests can share a server without meeting.
pub(crate) fn unique_prefix(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t{}-{what}", N.fetch_add(1, Ordering::Relaxed))
}

/// A backend on `url` with a timeout generous enough for a loaded test machine: tests that are not
/// about timeouts must not see any.
pub(crate) async fn connect(url: &str) -> RedisBackend {
    RedisBackend::connect(url)
        .await
        .expect("connect to the test redis-server")
        .timeout(Duration::from_secs(5))
}

/// A backend on the test cluster, as [`connect`].
pub(crate) async fn connect_cluster(urls: &[String]) -> RedisBackend {
    RedisBackend::connect_cluster(urls)
        .await
        .expect("connect to the test cluster")
        .timeout(Duration::from_secs(5))
}

/// How late this process runs a task that asked to wake up, measured while a test runs: a probe
/// task sleeps 5 ms at a time and records its largest overshoot.
///
/// A test asserting that a call took at most some time measures the machine as well as the code:
/// on a loaded CI runner timers fire late and tasks wait for a thread. Time bounds in these tests
/// are the issue's own plus an allowance for what the probe saw in the same run (see
/// [`LagProbe::allowing_for`]), so that they hold on a loaded machine yet still fail when the code waits
/// where it must not.
pub(crate) struct LagProbe {
    stop: Arc<AtomicBool>,
    worst_ns: Arc<AtomicU64>,
}

impl LagProbe {
    /// Starts probing on the current runtime, until dropped (or for 2 minutes at most).
    pub(crate) fn start() -> Self {
        const TICK: Duration = Duration::from_millis(5);
        let stop = Arc::new(AtomicBool::new(false));
        let worst_ns = Arc::new(AtomicU64::new(0));
        tokio::spawn({
            let (stop, worst_ns) = (stop.clone(), worst_ns.clone());
            async move {
                for _ in 0..24_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let asked = std::time::Instant::now();
                    tokio::time::sleep(TICK).await;
                    let late = asked.elapsed().saturating_sub(TICK);
                    worst_ns.fetch_max(late.as_nanos() as u64, Ordering::Relaxed);
                }
            }
        });
        Self { stop, worst_ns }
    }

    /// The largest lateness seen so far.
    pub(crate) fn lag(&self) -> Duration {
        Duration::from_nanos(self.worst_ns.load(Ordering::Relaxed))
    }

    /// `base`, plus twice the lateness seen so far: a bound on how long something that should
    /// take at most `base` may be seen to take on this machine now.
    pub(crate) fn allowing_for(&self, base: Duration) -> Duration {
        base + 2 * self.lag()
    }
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
