//! Handles of a shared circuit: commands act on the shared state (every replica follows them),
//! snapshots say whether the circuit is shared and followed and show the shared window; what the
//! shared window means with a count window and with a time window.

use std::time::Duration;

use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::common::redis::RedisServer;
use crate::support::{
    Outcome, Replica, all_following, all_in, calls, connect, replicas, unique_prefix, within,
};

const INTERVAL: Duration = Duration::from_millis(50);
const MARGIN: Duration = Duration::from_millis(300);

fn last_seen(r: &Replica) -> Option<(CircuitState, CircuitState, String)> {
    r.seen().last().cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_act_on_the_shared_state() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("cmd");
    let url = server.url();
    let replicas = replicas(3, || connect(&url, &prefix), INTERVAL, |b| b.name("ops")).await;
    all_following(&replicas).await;
    let key = format!("{prefix}:cb:{{ops/global}}");
    assert!(server.command(&format!("PTTL {key}")).starts_with(':'));
    assert_ne!(
        server.command(&format!("PTTL {key}")),
        ":-1",
        "an idle circuit expires"
    );

    // (through which replica, the command, the state it leads to, the reason every replica sees)
    type Step = (usize, fn(&Replica), CircuitState, &'static str);
    let steps: [Step; 4] = [
        (
            1,
            |r| r.handle.force_open(),
            CircuitState::ForcedOpen,
            "forced open",
        ),
        (2, |r| r.handle.reset(), CircuitState::Closed, "reset"),
        (
            0,
            |r| r.handle.disable(),
            CircuitState::Disabled,
            "disabled",
        ),
        (
            2,
            |r| r.handle.force_closed(),
            CircuitState::Closed,
            "forced closed",
        ),
    ];
    for (by, command, to, reason) in steps {
        command(&replicas[by]);
        assert_eq!(
            replicas[by].state(),
            to,
            "applied at once where it was given"
        );
        let took = all_in(&replicas, to, INTERVAL * 2 + MARGIN).await;
        eprintln!("{reason} through replica {by}: every replica {to} within {took:?}");
        for (i, r) in replicas.iter().enumerate() {
            let (_, seen_to, seen_reason) = last_seen(r).expect("a transition");
            assert_eq!((seen_to, seen_reason.as_str()), (to, reason), "replica {i}");
        }
        if to == CircuitState::ForcedOpen {
            for r in &replicas {
                assert_eq!(r.call().await, Outcome::Refused(CircuitState::ForcedOpen));
            }
            // An operator's decision is kept until changed: no expiry.
            assert_eq!(server.command(&format!("PTTL {key}")), ":-1");
        }
    }
    // Still followed, and serving.
    for r in &replicas {
        assert!(r.following());
        assert_eq!(r.call().await, Outcome::Ok);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_say_shared_and_following() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("snap");
    let url = server.url();
    let replicas = replicas(2, || connect(&url, &prefix), INTERVAL, |b| b.name("snap")).await;
    all_following(&replicas).await;
    for r in &replicas {
        assert!(calls(r, 5).await.iter().all(|o| *o == Outcome::Ok));
    }
    within(
        Duration::from_secs(2),
        "both replicas' calls in the shared window",
        || {
            replicas
                .iter()
                .all(|r| r.handle.snapshot().shared().unwrap().calls() == 10)
        },
    )
    .await;
    let json = serde_json::to_value(replicas[0].handle.snapshot()).unwrap();
    assert_eq!(json["state"], "CLOSED");
    assert_eq!(json["calls"], 5, "this replica's own window");
    assert_eq!(json["shared"]["following"], true);
    assert_eq!(json["shared"]["calls"], 10, "every replica's");
    assert_eq!(json["shared"]["failures"], 0);
    assert!(json["shared"]["since_sync"].as_f64().unwrap() < 1.0);
    assert!(replicas[0].handle.is_shared());
    assert!(replicas[0].layer.is_shared());

    let local = CircuitBreakerLayer::builder().build().unwrap();
    assert!(!local.is_shared() && !local.handle().is_shared());
    assert!(!local.handle().is_following_shared());
    let json = serde_json::to_value(local.handle().snapshot()).unwrap();
    assert!(json.get("shared").is_none(), "{json}");
    drop(replicas);
    drop(server);
}

/// A count window of 10 shared by three replicas: the last 10 outcomes reported by any of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_count_window_holds_the_last_n_outcomes_reported_by_all() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("count");
    let url = server.url();
    let replicas = replicas(
        3,
        || connect(&url, &prefix),
        INTERVAL,
        |b| {
            b.name("counted")
                .window(10)
                .failure_rate(0.5)
                .minimum_calls(10)
        },
    )
    .await;
    all_following(&replicas).await;
    let shared = |i: usize| {
        let s = replicas[i].handle.snapshot();
        let s = s.shared().unwrap().clone();
        (s.calls(), s.failures())
    };
    // 10 successes on replica 0.
    assert!(
        calls(&replicas[0], 10)
            .await
            .iter()
            .all(|o| *o == Outcome::Ok)
    );
    within(Duration::from_secs(2), "replica 0's batch", || {
        shared(0) == (10, 0)
    })
    .await;
    // 4 failures on replica 1: the window is the last 10 reported, 6 successes and 4 failures.
    replicas[1].up.fail(true);
    assert!(
        calls(&replicas[1], 4)
            .await
            .iter()
            .all(|o| *o == Outcome::Failed)
    );
    within(Duration::from_secs(2), "replica 1's batch", || {
        shared(1) == (10, 4)
    })
    .await;
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(
        replicas.iter().all(|r| r.state() == CircuitState::Closed),
        "40% is under the threshold, although replica 1 alone saw only failures"
    );
    // One failure on replica 2: 5 of the last 10 failed, the rate is reached, every replica opens.
    replicas[2].up.fail(true);
    assert_eq!(replicas[2].call().await, Outcome::Failed);
    all_in(&replicas, CircuitState::Open, INTERVAL * 2 + MARGIN).await;
    for r in &replicas {
        assert_eq!(
            last_seen(r).unwrap().2,
            "failure rate over the threshold".to_string()
        );
    }
}

/// A time window shared by three replicas: the outcomes reported by all of them in the last span
/// (on Redis time, each batch counted when it arrives).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_time_window_holds_the_outcomes_of_the_last_span() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("timed");
    let url = server.url();
    let replicas = replicas(
        3,
        || connect(&url, &prefix),
        INTERVAL,
        |b| {
            b.name("timed")
                .time_window(Duration::from_millis(1_200), 4)
                .failure_rate(0.5)
                .minimum_calls(10)
        },
    )
    .await;
    all_following(&replicas).await;
    let shared = |i: usize| {
        let s = replicas[i].handle.snapshot();
        let s = s.shared().unwrap().clone();
        (s.calls(), s.failures())
    };
    assert!(
        calls(&replicas[0], 10)
            .await
            .iter()
            .all(|o| *o == Outcome::Ok)
    );
    replicas[1].up.fail(true);
    assert!(
        calls(&replicas[1], 9)
            .await
            .iter()
            .all(|o| *o == Outcome::Failed)
    );
    within(Duration::from_secs(1), "both batches", || {
        shared(2) == (19, 9)
    })
    .await;
    assert!(replicas.iter().all(|r| r.state() == CircuitState::Closed));
    // The span passes: the window empties (no call needed).
    within(Duration::from_secs(3), "the window empties", || {
        shared(2) == (0, 0)
    })
    .await;
    // 10 failures over two replicas within the span: over the threshold, open everywhere.
    replicas[2].up.fail(true);
    assert!(
        calls(&replicas[1], 5)
            .await
            .iter()
            .all(|o| *o == Outcome::Failed)
    );
    assert!(
        calls(&replicas[2], 5)
            .await
            .iter()
            .all(|o| *o == Outcome::Failed)
    );
    all_in(&replicas, CircuitState::Open, INTERVAL * 2 + MARGIN).await;
}
