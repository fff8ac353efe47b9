//! The shared circuit recovers from what replicas and Redis lose.
//!
//! - A replica that vanishes (its runtime shut down, as in a crash) while holding the half-open
//!   probe permit does not leave the circuit stuck: its permit returns after its lease (four sync
//!   intervals plus the backend's timeout), and another replica probes.
//! - Redis losing an open circuit (`FLUSHALL`) while the replicas follow it: the replicas report
//!   their opening again rather than follow a fresh closed circuit; nobody sees it close.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tower_rampart::circuit_breaker::CircuitState;

use crate::common::redis::RedisServer;
use crate::support::{
    Outcome, Replica, all_following, all_in, connect, replicas, unique_prefix, within,
};

const INTERVAL: Duration = Duration::from_millis(100);
const TIMEOUT: Duration = Duration::from_millis(500);
/// Four sync intervals plus the backend's timeout.
const LEASE: Duration = Duration::from_millis(900);

fn configure(
    b: tower_rampart::circuit_breaker::CircuitBreakerBuilder,
) -> tower_rampart::circuit_breaker::CircuitBreakerBuilder {
    b.name("lease")
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(300))
        .half_open_probes(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_permit_of_a_vanished_replica_returns_after_its_lease() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("lease");
    let url = server.url();
    // Replica A lives on a runtime of its own, to be shut down as a crashed process would stop.
    let rt_a = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let a = {
        let (url, prefix) = (url.clone(), prefix.clone());
        rt_a.spawn(async move {
            let backend = connect(&url, &prefix).await.timeout(TIMEOUT);
            Arc::new(Replica::new(backend, configure, INTERVAL))
        })
        .await
        .unwrap()
    };
    let b = replicas(
        1,
        || async { connect(&url, &prefix).await.timeout(TIMEOUT) },
        INTERVAL,
        configure,
    )
    .await
    .pop()
    .unwrap();
    within(Duration::from_secs(5), "both follow", || {
        a.following() && b.following()
    })
    .await;

    // B's failure opens the circuit for both.
    b.up.fail(true);
    assert_eq!(b.call().await, Outcome::Failed);
    b.up.fail(false);
    within(Duration::from_secs(2), "both open", || {
        a.state() == CircuitState::Open && b.state() == CircuitState::Open
    })
    .await;

    // Only A has callers while it is open, so A gets the one permit; its probe hangs upstream.
    a.up.hold(true);
    let stop = Arc::new(AtomicBool::new(false));
    for _ in 0..4 {
        let (a, stop) = (a.clone(), stop.clone());
        rt_a.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Outcome::Refused(_) = a.call().await {
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }
        });
    }
    within(
        Duration::from_secs(3),
        "A's probe reaches its upstream",
        || a.up.calls() == 1,
    )
    .await;
    // A's sync reported the probe in flight (held = 1) at least once.
    tokio::time::sleep(INTERVAL * 2).await;

    // A vanishes: no report, no goodbye.
    rt_a.shutdown_background();
    let vanished = Instant::now();

    // B's callers are refused while A's permit is leased to it, then B probes, and closes it.
    let mut refused_early = 0;
    let closed = loop {
        let before = b.up.calls();
        match b.call().await {
            Outcome::Refused(_) => {
                if vanished.elapsed() < LEASE / 2 {
                    refused_early += 1;
                }
            }
            Outcome::Ok => {
                assert!(b.up.calls() > before);
                break vanished.elapsed();
            }
            Outcome::Failed => panic!("the upstream is healthy"),
        }
        assert!(
            vanished.elapsed() < LEASE + Duration::from_secs(2),
            "B never got a probe"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    eprintln!("B probed {closed:?} after A vanished (lease {LEASE:?})");
    assert!(refused_early > 0, "A's permit was held for it at first");
    assert!(
        closed >= LEASE / 2,
        "B probed {closed:?} after A vanished: before A's lease could end"
    );
    within(Duration::from_secs(2), "B closed", || {
        b.state() == CircuitState::Closed
    })
    .await;
    stop.store(true, Ordering::SeqCst);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_an_open_circuit_does_not_close_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("flush");
    let url = server.url();
    let replicas = replicas(
        3,
        || connect(&url, &prefix),
        Duration::from_millis(50),
        |b| {
            b.name("flushed")
                .consecutive_failures(1)
                .wait_duration(Duration::from_secs(30))
        },
    )
    .await;
    all_following(&replicas).await;
    replicas[0].up.fail(true);
    assert_eq!(replicas[0].call().await, Outcome::Failed);
    all_in(&replicas, CircuitState::Open, Duration::from_secs(2)).await;

    assert_eq!(server.command("FLUSHALL"), "+OK");
    let key = format!("{prefix}:cb:{{flushed/global}}");
    within(
        Duration::from_secs(2),
        "the circuit is back in redis",
        || server.command(&format!("EXISTS {key}")) == ":1",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    all_following(&replicas).await;
    for (i, r) in replicas.iter().enumerate() {
        assert_eq!(r.state(), CircuitState::Open, "replica {i}");
        assert_eq!(
            r.seen(),
            vec![(
                CircuitState::Closed,
                CircuitState::Open,
                "consecutive failures".to_string()
            )],
            "replica {i} never saw it close"
        );
        let left = r.handle.snapshot().next_attempt_in().unwrap();
        assert!(
            left > Duration::from_secs(28),
            "replica {i}: the wait goes on ({left:?})"
        );
    }
    // And it is open in Redis for everyone (a fresh replica follows it).
    let late = Replica::new(
        connect(&url, &prefix).await,
        |b| {
            b.name("flushed")
                .consecutive_failures(1)
                .wait_duration(Duration::from_secs(30))
        },
        Duration::from_millis(50),
    );
    within(
        Duration::from_secs(2),
        "a new replica follows the opening",
        || late.state() == CircuitState::Open,
    )
    .await;
}

/// A replica whose callers come far apart (here: one call per 10 sync intervals) still gets to
/// probe: its first caller after the wait waits for the permit its replica asks for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_seldom_callers_gets_to_probe() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("seldom");
    let url = server.url();
    let interval = Duration::from_millis(50);
    let replicas = replicas(
        2,
        || connect(&url, &prefix),
        interval,
        |b| {
            b.name("seldom")
                .consecutive_failures(1)
                .wait_duration(Duration::from_millis(200))
                .half_open_probes(1)
        },
    )
    .await;
    all_following(&replicas).await;
    let r = &replicas[0];
    r.up.fail(true);
    assert_eq!(r.call().await, Outcome::Failed);
    r.up.fail(false);
    all_in(&replicas, CircuitState::Open, Duration::from_secs(2)).await;
    // No call during the wait, then one call every 10 intervals.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        let o = r.call().await;
        outcomes.push(o);
        if o == Outcome::Ok {
            break;
        }
        tokio::time::sleep(interval * 10).await;
    }
    // Before issue 14 the first call was refused while it asked for a permit and the next one was
    // the probe; now the first call waits for the permit its replica asks for, and is the probe.
    assert_eq!(
        outcomes,
        [Outcome::Ok],
        "the first call asks for a permit and is the probe"
    );
    all_in(&replicas, CircuitState::Closed, Duration::from_secs(2)).await;
}
