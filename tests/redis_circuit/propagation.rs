//! A trip seen by one replica rejects on all of them within the sync interval (plus a round trip;
//! asserted with a margin for a loaded machine), every replica's hooks see it with the same reason,
//! and per-key circuits are shared key by key. On a single node and on a 3-master cluster.

use std::time::{Duration, Instant};

use tower::{Layer, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::key::key_fn;

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{
    Outcome, Replica, all_following, all_in, calls, connect, outcome, replicas, unique_prefix,
    within,
};

const INTERVAL: Duration = Duration::from_millis(50);
/// Added to the bound (about one sync interval plus a round trip) for a loaded 2-core
/// machine running other builds.
const MARGIN: Duration = Duration::from_millis(300);

fn configure(
    b: tower_rampart::circuit_breaker::CircuitBreakerBuilder,
) -> tower_rampart::circuit_breaker::CircuitBreakerBuilder {
    b.name("payments")
        .consecutive_failures(3)
        .wait_duration(Duration::from_secs(30))
}

async fn a_trip_on_one_replica_rejects_on_all(replicas: Vec<Replica>) {
    all_following(&replicas).await;
    for r in &replicas {
        assert!(calls(r, 10).await.iter().all(|o| *o == Outcome::Ok));
    }
    assert!(replicas.iter().all(|r| r.state() == CircuitState::Closed));

    replicas[0].up.fail(true);
    for _ in 0..3 {
        assert_eq!(replicas[0].call().await, Outcome::Failed);
    }
    let tripped = Instant::now();
    // The replica that saw the failures reports them at once (not waiting for its interval)...
    let first = within(
        INTERVAL + MARGIN,
        "replica 0 sees the shared opening",
        || replicas[0].state() == CircuitState::Open,
    )
    .await;
    // ...and every other replica follows at its next sync.
    let seen_by_one = Instant::now();
    all_in(&replicas, CircuitState::Open, INTERVAL + MARGIN).await;
    eprintln!(
        "opened on replica 0 {first:?} after the third failure; on all {:?} after that \
         (sync interval {INTERVAL:?})",
        seen_by_one.elapsed()
    );
    assert!(tripped.elapsed() < 2 * INTERVAL + 2 * MARGIN);

    for (i, r) in replicas.iter().enumerate() {
        let before = r.up.calls();
        assert_eq!(
            r.call().await,
            Outcome::Refused(CircuitState::Open),
            "replica {i}"
        );
        assert_eq!(
            r.up.calls(),
            before,
            "replica {i} did not call its upstream"
        );
        let open = r.svc.clone().oneshot(()).await.unwrap_err();
        let open = open
            .downcast_ref::<tower_rampart::circuit_breaker::error::CircuitOpen>()
            .unwrap();
        let retry = open.retry_after().expect("an open circuit knows its wait");
        assert!(
            retry > Duration::from_secs(28) && retry <= Duration::from_secs(30),
            "replica {i}: the shared wait, {retry:?}"
        );
        // Every replica announces the shared transition, with the reason the script gave.
        assert_eq!(
            r.seen(),
            vec![(
                CircuitState::Closed,
                CircuitState::Open,
                "consecutive failures".to_string()
            )],
            "replica {i}"
        );
        let snap = r.handle.snapshot();
        let shared = snap.shared().expect("a shared circuit's snapshot");
        assert!(shared.following());
        assert_eq!(shared.consecutive_failures(), 3, "replica {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_a_trip_seen_by_one_replica_rejects_on_all_four() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("prop");
    let url = server.url();
    let replicas = replicas(4, || connect(&url, &prefix), INTERVAL, configure).await;
    // Every replica's circuit is one hash, hash-tagged.
    within(Duration::from_secs(2), "the circuit's hash exists", || {
        server.command(&format!("EXISTS {prefix}:cb:{{payments/global}}")) == ":1"
    })
    .await;
    a_trip_on_one_replica_rejects_on_all(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_trip_seen_by_one_replica_rejects_on_all_four() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = unique_prefix("prop-cluster");
    let urls = cluster.urls();
    let replicas = replicas(
        4,
        || async {
            RedisBackend::connect_cluster(&urls)
                .await
                .expect("connect to the test cluster")
                .timeout(Duration::from_secs(1))
                .prefix(&prefix)
        },
        INTERVAL,
        configure,
    )
    .await;
    a_trip_on_one_replica_rejects_on_all(replicas).await;
}

/// A request to an upstream host.
#[derive(Clone, Copy, Debug)]
struct Call {
    host: &'static str,
}

async fn per_key_circuits_are_shared_key_by_key(backends: Vec<RedisBackend>) {
    let layers: Vec<_> = backends
        .into_iter()
        .map(|backend| {
            CircuitBreakerLayer::builder()
                .name("hosts")
                .consecutive_failures(2)
                .wait_duration(Duration::from_secs(30))
                .key(key_fn(|c: &Call| Some(c.host)))
                .backend(backend)
                .sync_interval(INTERVAL)
                .build()
                .unwrap()
        })
        .collect();
    let svcs: Vec<_> = layers
        .iter()
        .map(|l| {
            l.layer(tower::service_fn(|c: Call| async move {
                if c.host.starts_with("down") {
                    Err::<&str, BoxError>("refused".into())
                } else {
                    Ok("ok")
                }
            }))
        })
        .collect();
    let call = |i: usize, host: &'static str| {
        let svc = svcs[i].clone();
        async move { outcome(svc.oneshot(Call { host }).await) }
    };
    // The circuits of the three hosts exist on every replica (made here rather than by a first
    // call: outcomes seen before a circuit follows the shared state stay local).
    for l in &layers {
        for host in ["up.example", "down-a.example", "down-b.example"] {
            let _ = l.handle().circuit(&host);
        }
    }
    within(Duration::from_secs(5), "every circuit follows", || {
        layers.iter().all(|l| {
            let c = l.handle();
            c.len() == 3 && c.all().iter().all(|(_, h)| h.is_following_shared())
        })
    })
    .await;
    // One failure on down-a through replica 0, one through replica 1: two in a row for the shared
    // circuit of down-a, which opens on every replica. down-b fails once only: it stays closed.
    assert_eq!(call(0, "down-a.example").await, Outcome::Failed);
    assert_eq!(call(1, "down-a.example").await, Outcome::Failed);
    assert_eq!(call(2, "down-b.example").await, Outcome::Failed);
    for i in 0..svcs.len() {
        assert_eq!(call(i, "up.example").await, Outcome::Ok);
    }
    within(
        INTERVAL * 2 + 2 * MARGIN,
        "down-a open on every replica",
        || {
            layers.iter().all(|l| {
                l.handle()
                    .get(&"down-a.example")
                    .is_some_and(|h| h.state() == CircuitState::Open)
            })
        },
    )
    .await;
    // Another round of syncs: down-b and up stay closed everywhere.
    tokio::time::sleep(INTERVAL * 3).await;
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(
            call(i, "down-a.example").await,
            Outcome::Refused(CircuitState::Open),
            "replica {i}"
        );
        assert_eq!(call(i, "up.example").await, Outcome::Ok, "replica {i}");
        for host in ["up.example", "down-b.example"] {
            let h = l.handle().get(&host).unwrap();
            assert_eq!(h.state(), CircuitState::Closed, "replica {i}, {host}");
            assert!(h.is_following_shared());
        }
        let b = l.handle().get(&"down-b.example").unwrap().snapshot();
        assert_eq!(b.shared().unwrap().consecutive_failures(), 1, "replica {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_per_key_circuits_are_shared_key_by_key() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("keys");
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(connect(&server.url(), &prefix).await);
    }
    per_key_circuits_are_shared_key_by_key(backends).await;
    for host in ["up.example", "down-a.example", "down-b.example"] {
        assert_eq!(
            server.command(&format!("EXISTS {prefix}:cb:{{hosts/{host}}}")),
            ":1",
            "the hash of {host}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_per_key_circuits_are_shared_key_by_key() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = unique_prefix("keys-cluster");
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(
            RedisBackend::connect_cluster(cluster.urls())
                .await
                .unwrap()
                .timeout(Duration::from_secs(1))
                .prefix(&prefix),
        );
    }
    per_key_circuits_are_shared_key_by_key(backends).await;
}
