//! The `metrics` feature on shared circuits: every replica counts the shared transitions it applies,
//! and a replica falling back to its local circuit counts it in
//! `rampart_circuit_shared_fallback_total{circuit}` (Redis errors in `rampart_redis_errors_total`).
//!
//! The sync task runs on the runtime's threads, so this binary installs a global recorder; the
//! test reads only its own circuit's series.

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower_rampart::circuit_breaker::CircuitState;

use crate::common::redis::RedisServer;
use crate::support::{Outcome, all_following, all_in, connect, replicas, unique_prefix, within};

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("the only global recorder");
        snapshotter
    })
}

/// The series whose labels include `name=<circuit>` (or that have none of circuit's), by
/// `name label=value,...`.
fn series(circuit: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => continue,
        };
        if labels.iter().any(|l| l == &format!("name={circuit}"))
            || key.key().name().starts_with("rampart_redis")
        {
            out.insert(format!("{} {}", key.key().name(), labels.join(",")), v);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_transitions_and_fallbacks_are_measured() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    snapshotter();
    let prefix = unique_prefix("metered");
    let url = server.url();
    let replicas = replicas(
        2,
        || async {
            connect(&url, &prefix)
                .await
                .timeout(Duration::from_millis(100))
        },
        Duration::from_millis(50),
        |b| b.name("metered").consecutive_failures(1),
    )
    .await;
    all_following(&replicas).await;
    replicas[0].up.fail(true);
    assert_eq!(replicas[0].call().await, Outcome::Failed);
    all_in(&replicas, CircuitState::Open, Duration::from_secs(2)).await;
    let seen = series("metered");
    assert_eq!(
        seen["rampart_circuit_transitions_total name=metered,to=open"], 2.0,
        "one per replica: {seen:?}"
    );
    assert_eq!(seen["rampart_circuit_state name=metered"], 1.0);

    server.kill();
    within(Duration::from_secs(2), "both replicas local", || {
        replicas.iter().all(|r| !r.following())
    })
    .await;
    let seen = series("metered");
    assert_eq!(
        seen["rampart_circuit_shared_fallback_total name=metered"], 2.0,
        "{seen:?}"
    );
    let errors: f64 = seen
        .iter()
        .filter(|(k, _)| k.starts_with("rampart_redis_errors_total"))
        .map(|(_, v)| v)
        .sum();
    assert!(errors >= 1.0, "{seen:?}");
}
