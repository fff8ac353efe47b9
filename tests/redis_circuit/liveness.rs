//! Liveness (#14): the connection of two replicas' shared circuit goes silent without closing (a
//! fault proxy freezes it); each backend replaces its connection, and the replicas follow the
//! shared circuit again within the documented bound; a trip then reaches both through the new
//! connections.

use std::time::{Duration, Instant};

use tower_rampart::backend::redis::DEFAULT_LIVENESS_TIMEOUT;
use tower_rampart::circuit_breaker::CircuitState;

use crate::common::fault_proxy::FaultProxy;
use crate::common::redis::RedisServer;
use crate::support::{Outcome, all_following, all_in, connect, replicas, unique_prefix, within};

const INTERVAL: Duration = Duration::from_millis(50);
const TIMEOUT: Duration = Duration::from_millis(100);
/// The documented bound (liveness timeout, plus opening a connection, plus a probe interval),
/// plus a sync interval for the next round, plus a margin for a loaded machine (measured: 1.27 s).
const BOUND: Duration = DEFAULT_LIVENESS_TIMEOUT.saturating_add(Duration::from_millis(2_000));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_circuits_follow_again_after_their_connection_froze() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let prefix = unique_prefix("liveness");
    let url = proxy.url();
    let replicas = replicas(
        2,
        || async { connect(&url, &prefix).await.timeout(TIMEOUT) },
        INTERVAL,
        |b| {
            b.name("liveness")
                .consecutive_failures(3)
                .wait_duration(Duration::from_secs(60))
        },
    )
    .await;
    all_following(&replicas).await;
    let accepted = proxy.accepted();

    proxy.freeze();
    let frozen = Instant::now();
    // Calls never wait for Redis: they go on while the syncs time out.
    for r in &replicas {
        assert_eq!(r.call().await, Outcome::Ok);
    }
    within(
        Duration::from_secs(3),
        "the replicas notice the silence",
        || replicas.iter().any(|r| !r.following()),
    )
    .await;
    within(
        BOUND,
        "every replica follows the shared circuit again",
        || {
            replicas
                .iter()
                .all(|r| r.following() && r.backend.is_connected())
        },
    )
    .await;
    eprintln!("following again {:?} after the freeze", frozen.elapsed());
    for r in &replicas {
        assert_eq!(r.backend.replaced_connections(), 1, "one replacement each");
    }
    assert_eq!(proxy.accepted(), accepted + 2, "one new connection each");

    // The shared circuit works through the new connections: a trip on one reaches the other.
    replicas[0].up.fail(true);
    for _ in 0..3 {
        assert_eq!(replicas[0].call().await, Outcome::Failed);
    }
    all_in(&replicas, CircuitState::Open, Duration::from_secs(3)).await;
    assert_eq!(
        replicas[1].call().await,
        Outcome::Refused(CircuitState::Open),
        "the other replica learned of the trip"
    );
}

/// A command sent on a connection that stalls, and delivered to Redis only after the connection
/// was replaced and a newer command went through on the new one, does not apply: syncs are fenced
/// by their deadline on Redis's clock. A forced opening delivered late after a reset forced the
/// circuit open again, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_delivered_late_on_a_stalled_connection_does_not_undo_a_newer_one() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let prefix = unique_prefix("late-command");
    let url = proxy.url();
    let replicas = replicas(
        1,
        || async { connect(&url, &prefix).await.timeout(TIMEOUT) },
        INTERVAL,
        |b| b.name("late"),
    )
    .await;
    all_following(&replicas).await;
    let r = &replicas[0];
    let key = format!("{prefix}:cb:{{late/global}}");
    let state_in_redis = || server.command(&format!("HGET {key} st"));

    proxy.hold_open();
    r.handle.force_open();
    // The syncs carrying it go out on the held connection and time out, until it is replaced;
    // then it is delivered on the new one.
    within(BOUND, "the held connection is replaced", || {
        r.backend.replaced_connections() >= 1
    })
    .await;
    within(BOUND, "forced open in redis", || {
        state_in_redis().contains('3')
    })
    .await;
    r.handle.reset();
    within(BOUND, "reset in redis", || state_in_redis().contains('0')).await;
    // The path heals: the held syncs reach Redis now, long after their deadline, and are
    // refused by it (Redis counts the error replies it sends by their first word); without the
    // fence they forced the circuit open again (checked by removing it).
    let late = || server.errors("RAMPARTLATE");
    let before = late();
    proxy.forward();
    within(BOUND, "the held syncs refused by their deadline", || {
        late() > before
    })
    .await;
    tokio::time::sleep(INTERVAL * 6).await;
    assert!(
        state_in_redis().contains('0'),
        "a late forced opening applied: {}",
        state_in_redis()
    );
    assert_eq!(r.state(), CircuitState::Closed);
}
