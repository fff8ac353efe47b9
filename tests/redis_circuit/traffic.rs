//! What a shared circuit costs Redis, and the sync task's life.
//!
//! - The closed path makes no round trip per call: `INFO commandstats` before and after tens of
//!   thousands of calls on two replicas shows only the sync traffic, at most one script call per
//!   replica per sync interval (plus the first).
//! - The task stops when the layer, its clones and its services are dropped: Redis sees no more
//!   script calls.
//! - Built outside a Tokio runtime, a layer works on its local circuit, and its task starts with
//!   the first call made inside one; nobody starts it by hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tower::{Layer, ServiceExt};
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::common::redis::RedisServer;
use crate::support::{
    Outcome, Upstream, all_following, connect, outcome, replicas, script_calls, unique_prefix,
    within,
};

const INTERVAL: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_closed_path_makes_no_round_trip_per_call() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("stats");
    let url = server.url();
    let replicas = Arc::new(
        replicas(
            2,
            || connect(&url, &prefix),
            INTERVAL,
            |b| b.name("quiet").window(100),
        )
        .await,
    );
    all_following(&replicas).await;

    let before = script_calls(&[&server]);
    let start = Instant::now();
    let total = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..replicas.len())
        .map(|i| {
            let (replicas, total) = (replicas.clone(), total.clone());
            tokio::spawn(async move {
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(600) {
                    for _ in 0..200 {
                        assert_eq!(replicas[i].call().await, Outcome::Ok);
                        total.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("no panic in a caller");
    }
    let elapsed = start.elapsed();
    let after = script_calls(&[&server]);
    let calls = total.load(Ordering::Relaxed);
    let syncs = after - before;
    let per_replica_bound = (elapsed.as_millis() / INTERVAL.as_millis()) as u64 + 2;
    eprintln!(
        "{calls} calls on 2 replicas in {elapsed:?}: {syncs} script calls \
         (bound {} = 2 x ({elapsed:?} / {INTERVAL:?} + 2))",
        2 * per_replica_bound
    );
    assert!(calls >= 10_000, "enough calls to tell ({calls})");
    assert!(
        syncs <= 2 * per_replica_bound,
        "{syncs} script calls for {calls} calls: more than the sync traffic"
    );
    assert!(syncs >= 2, "the replicas kept syncing ({syncs})");
    // The outcomes did reach the shared window, in batches.
    within(
        Duration::from_secs(2),
        "the shared window holds the calls",
        || {
            replicas
                .iter()
                .all(|r| r.handle.snapshot().shared().unwrap().calls() == 100)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_task_stops_with_the_layer() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url(), &unique_prefix("drop")).await;
    let layer = CircuitBreakerLayer::builder()
        .name("dropped")
        .backend(backend)
        .sync_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let handle = layer.handle();
    let up = Upstream::default();
    let svc = layer.layer(up.service());
    let clone = layer.clone();
    assert!(layer.is_syncing(), "started by build, inside the runtime");
    within(Duration::from_secs(2), "following", || {
        handle.is_following_shared()
    })
    .await;
    let before = script_calls(&[&server]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        script_calls(&[&server]) >= before + 3,
        "syncing while alive"
    );

    drop((layer, svc));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(clone.is_syncing(), "a clone keeps it alive");
    drop(clone);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = script_calls(&[&server]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        script_calls(&[&server]),
        before,
        "no sync once the layer is gone"
    );
    // The handle outlives it, on the circuit's last state.
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_outside_a_runtime_it_starts_syncing_on_the_first_call_inside_one() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url(), &unique_prefix("lazy")).await;
    let up = Upstream::default();
    let (layer, svc) = {
        let up = up.clone();
        std::thread::spawn(move || {
            let layer = CircuitBreakerLayer::builder()
                .name("lazy")
                .consecutive_failures(2)
                .backend(backend)
                .sync_interval(INTERVAL)
                .build()
                .unwrap();
            let svc = layer.layer(up.service());
            // No runtime here: the circuit works on its own.
            let answer = futures::executor::block_on(svc.clone().oneshot(()));
            assert_eq!(outcome(answer), Outcome::Ok);
            assert!(!layer.is_syncing());
            (layer, svc)
        })
        .join()
        .expect("built on a plain thread")
    };
    assert!(!layer.is_syncing());
    assert!(!layer.handle().is_following_shared());
    assert_eq!(outcome(svc.clone().oneshot(()).await), Outcome::Ok);
    assert!(layer.is_syncing(), "started by the first call in a runtime");
    within(Duration::from_secs(2), "following", || {
        layer.handle().is_following_shared()
    })
    .await;
}
