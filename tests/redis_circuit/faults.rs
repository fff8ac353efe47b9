//! Redis killed, restarted and stalled under four replicas of a shared circuit.
//!
//! - Killed: every replica falls back to its local circuit (the snapshots say so), requests keep
//!   being served, a failing upstream trips one replica's local circuit only, and no call waits
//!   (calls never wait for Redis; each is checked against the backend's timeout).
//! - Restarted (with its data gone): every replica rejoins by itself; the local opening made while
//!   Redis was down is carried over to the shared circuit, which then recovers through probes; a
//!   trip after the restart propagates to every replica again.
//! - Stalled (`CLIENT PAUSE`): calls still never wait; the replicas follow again afterwards.

use std::time::{Duration, Instant};

use tower_rampart::circuit_breaker::CircuitState;

use crate::common::redis::{RedisServer, command_at};
use crate::support::{
    Outcome, Replica, all_following, all_in, connect, replicas, unique_prefix, within,
};

const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(100);
const MARGIN: Duration = Duration::from_millis(300);
const WAIT: Duration = Duration::from_millis(800);

fn configure(
    b: tower_rampart::circuit_breaker::CircuitBreakerBuilder,
) -> tower_rampart::circuit_breaker::CircuitBreakerBuilder {
    b.name("faults")
        .consecutive_failures(3)
        .wait_duration(WAIT)
        .half_open_probes(1)
}

/// `n` calls through `replica`, each timed; panics if one took as long as the backend's timeout.
async fn timed_calls(replica: &Replica, n: usize, what: &str) -> Vec<Outcome> {
    let mut out = Vec::new();
    for _ in 0..n {
        let start = Instant::now();
        out.push(replica.call().await);
        let took = start.elapsed();
        assert!(took < TIMEOUT, "{what}: a call took {took:?}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_four_replicas() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("faults");
    let url = server.url();
    let replicas = replicas(
        4,
        || async { connect(&url, &prefix).await.timeout(TIMEOUT) },
        INTERVAL,
        configure,
    )
    .await;
    all_following(&replicas).await;

    // Killed while calls are being made: none of them waits.
    server.kill();
    for (i, r) in replicas.iter().enumerate() {
        let out = timed_calls(r, 20, &format!("replica {i} as redis dies")).await;
        assert!(out.iter().all(|o| *o == Outcome::Ok));
    }
    within(
        Duration::from_secs(2),
        "every replica on its local circuit",
        || replicas.iter().all(|r| !r.following()),
    )
    .await;
    for r in &replicas {
        let snap = r.handle.snapshot();
        assert!(!snap.shared().unwrap().following());
        assert!(r.handle.is_shared());
        assert!(
            !r.backend.is_connected(),
            "the backend's health says so too"
        );
    }

    // Local circuits: replica 0's upstream fails and trips its own circuit only.
    replicas[0].up.fail(true);
    let out = timed_calls(&replicas[0], 5, "replica 0 while redis is down").await;
    assert_eq!(
        out,
        [
            Outcome::Failed,
            Outcome::Failed,
            Outcome::Failed,
            Outcome::Refused(CircuitState::Open),
            Outcome::Refused(CircuitState::Open),
        ]
    );
    for (i, r) in replicas.iter().enumerate().skip(1) {
        let out = timed_calls(r, 20, &format!("replica {i} while redis is down")).await;
        assert!(out.iter().all(|o| *o == Outcome::Ok), "replica {i} serves");
        assert_eq!(r.state(), CircuitState::Closed);
    }
    // Some time with Redis down: the sync tasks keep probing it, quietly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, r) in replicas.iter().enumerate().skip(1) {
        let out = timed_calls(r, 5, &format!("replica {i} while redis is down")).await;
        assert!(out.iter().all(|o| *o == Outcome::Ok), "replica {i} serves");
    }

    // Restarted, its data gone: every replica rejoins by itself, and replica 0 reports the
    // opening it made meanwhile, so every replica refuses until the upstream is probed.
    server.restart();
    let restarted = Instant::now();
    all_following(&replicas).await;
    let rejoined = restarted.elapsed();
    assert!(replicas.iter().all(|r| r.backend.is_connected()));
    all_in(&replicas, CircuitState::Open, INTERVAL * 2 + MARGIN).await;
    eprintln!("rejoined {rejoined:?} after the restart");
    for (i, r) in replicas.iter().enumerate().skip(1) {
        assert_eq!(
            r.seen().last(),
            Some(&(
                CircuitState::Closed,
                CircuitState::Open,
                "consecutive failures".to_string()
            )),
            "replica {i} follows the opening replica 0 carried over"
        );
        assert_eq!(r.call().await, Outcome::Refused(CircuitState::Open));
    }

    // The upstream is fine again: after the (remaining) wait a probe closes it for everyone.
    replicas[0].up.fail(false);
    let deadline = Instant::now() + WAIT + Duration::from_secs(3);
    while !replicas.iter().all(|r| r.state() == CircuitState::Closed) {
        assert!(
            Instant::now() < deadline,
            "the shared circuit did not close"
        );
        for r in &replicas {
            let _ = r.call().await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A trip after the restart propagates to every replica again.
    replicas[2].up.fail(true);
    for _ in 0..3 {
        assert_eq!(replicas[2].call().await, Outcome::Failed);
    }
    all_in(&replicas, CircuitState::Open, INTERVAL * 2 + MARGIN).await;
    assert!(
        server.connected_clients() <= 6,
        "no pile-up of connections: {}",
        server.info("clients")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_holds_no_call() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("stall");
    let url = server.url();
    let replicas = replicas(
        2,
        || async { connect(&url, &prefix).await.timeout(TIMEOUT) },
        INTERVAL,
        configure,
    )
    .await;
    all_following(&replicas).await;
    let addr = server.addr();
    let stall = std::thread::spawn(move || {
        assert_eq!(command_at(addr, "CLIENT PAUSE 500 ALL"), "+OK");
        std::thread::sleep(Duration::from_millis(550));
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(400) {
        for (i, r) in replicas.iter().enumerate() {
            let out = timed_calls(r, 10, &format!("replica {i} while redis is paused")).await;
            assert!(out.iter().all(|o| *o == Outcome::Ok));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        replicas.iter().all(|r| !r.following()),
        "the syncs timed out: each replica runs its local circuit"
    );
    stall.join().expect("the stalling thread");
    all_following(&replicas).await;
}
