//! Observability of the Redis path (#19): every store call to Redis is timed in
//! `rampart_redis_call_duration_seconds{server}`, and a decision Redis could not make reaches the
//! layer's hooks as `RateLimitEvent::BackendFallback`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower_rampart::backend::redis::LeaseConfig;
use tower_rampart::backend::{FailurePolicy, RedisBackend};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Quota, RateLimitEvent, RateLimitLayer};

use crate::common::redis::RedisServer;
use crate::support::{decide, unique_prefix};

const TIMEOUT: Duration = Duration::from_secs(5);

#[test]
fn redis_calls_are_timed_and_fallbacks_reach_the_hooks() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let events: Arc<Mutex<Vec<RateLimitEvent>>> = Arc::default();
    let log = Arc::clone(&events);
    let url = server.url();
    let elapsed = metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let redis = RedisBackend::connect(&url)
                .await
                .unwrap()
                .timeout(TIMEOUT)
                .failure_policy(FailurePolicy::Open)
                .prefix(unique_prefix("observe"));
            let layer = RateLimitLayer::builder()
                .name("observed")
                .quota(Quota::per_hour(100))
                .key(key_fn(|k: &u32| Some(*k)))
                .backend(redis)
                .on_event(move |e: &RateLimitEvent| log.lock().unwrap().push(e.clone()))
                .build()
                .unwrap();
            let store = layer.store();
            let started = tokio::time::Instant::now();
            for key in 0..5 {
                assert!(decide(store, &key).await.unwrap().is_counted());
            }
            let elapsed = started.elapsed();
            assert!(events.lock().unwrap().is_empty(), "no fallback yet");
            server.kill();
            // Open: admitted without Redis, and told.
            let d = decide(store, &1).await.unwrap();
            assert!(d.is_allowed() && !d.is_counted(), "{d:?}");
            elapsed
        })
    });

    let events = events.lock().unwrap();
    let Some(RateLimitEvent::BackendFallback {
        name,
        policy,
        error,
        ..
    }) = events.first()
    else {
        panic!("{events:?}");
    };
    assert_eq!((*name, *policy), ("observed", "open"));
    assert!(!error.is_empty());

    let calls: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "rampart_redis_call_duration_seconds")
        .flat_map(|(key, _, _, value)| {
            assert!(key.key().labels().any(|l| l.key() == "server"), "{key:?}");
            match value {
                DebugValue::Histogram(samples) => samples.into_iter().map(|s| s.into_inner()),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    // The five decisions, the backend's own calls (its `TIME` probe on connecting), and the
    // failed one if it reached the dead server: each took some time, none past the timeout.
    assert!(calls.len() >= 5, "{calls:?}");
    for took in &calls {
        assert!(
            *took > 0.0 && *took <= TIMEOUT.as_secs_f64(),
            "{took} in {calls:?}"
        );
    }
    // The five decisions' samples fit in the time they took together.
    let mut sorted = calls.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(
        sorted[..5].iter().sum::<f64>() <= elapsed.as_secs_f64(),
        "{calls:?} in {elapsed:?}"
    );
}

/// A leased limiter follows the same failure policy as the exact one, through the same code: when
/// Redis is gone and no lease is left, the fallback reaches the hooks and the fallback counter
/// (the leased store had its own copy of the failure policy, which did not tell the hooks).
#[test]
fn a_leased_limiters_fallback_reaches_the_hooks_and_the_fallback_counter() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let events: Arc<Mutex<Vec<RateLimitEvent>>> = Arc::default();
    let log = Arc::clone(&events);
    let url = server.url();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let redis = RedisBackend::connect(&url)
                .await
                .unwrap()
                .timeout(Duration::from_millis(200))
                .failure_policy(FailurePolicy::Open)
                .prefix(unique_prefix("observe-leased"));
            let layer = RateLimitLayer::builder()
                .name("observed_leased")
                .quota(Quota::per_hour(100))
                .key(key_fn(|k: &u32| Some(*k)))
                .backend(redis.leased(LeaseConfig::new()))
                .on_event(move |e: &RateLimitEvent| log.lock().unwrap().push(e.clone()))
                .build()
                .unwrap();
            let store = layer.store();
            // A cold key: each decision is a one-unit lease, so nothing is held afterwards.
            assert!(decide(store, &7).await.unwrap().is_counted());
            assert!(events.lock().unwrap().is_empty(), "no fallback yet");
            server.kill();
            let d = decide(store, &8).await.unwrap();
            assert!(d.is_allowed() && !d.is_counted(), "{d:?}");
        })
    });

    let events = events.lock().unwrap();
    let Some(RateLimitEvent::BackendFallback { name, policy, .. }) = events.first() else {
        panic!("{events:?}");
    };
    assert_eq!((*name, *policy), ("observed_leased", "open"));
    let fallbacks: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "rampart_rate_limit_backend_fallback_total")
        .map(|(key, _, _, value)| {
            assert!(
                key.key()
                    .labels()
                    .any(|l| l.key() == "name" && l.value() == "observed_leased"),
                "{key:?}"
            );
            match value {
                DebugValue::Counter(n) => n,
                other => panic!("{other:?}"),
            }
        })
        .sum();
    assert_eq!(fallbacks, 1);
}
