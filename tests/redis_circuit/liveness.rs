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
