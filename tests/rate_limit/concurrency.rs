//! Many tasks on two threads hammering the same keys admit exactly the quota, never more.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Layer, Service, ServiceExt};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

use crate::support::Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_key_hammered_from_two_threads_admits_exactly_the_quota() {
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        const LIMIT: u32 = 1_000;
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_hour(LIMIT))
            .algorithm(algorithm)
            .build()
            .unwrap();
        let inner = Counting::default();
        let admitted = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let mut svc = layer.layer(inner.clone());
            let admitted = admitted.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..250 {
                    if ServiceExt::<()>::ready(&mut svc)
                        .await
                        .unwrap()
                        .call(())
                        .await
                        .is_ok()
                    {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(
            admitted.load(Ordering::Relaxed),
            LIMIT as usize,
            "{algorithm:?}"
        );
        assert_eq!(inner.calls(), LIMIT as usize);
    }
}

#[test]
fn keyed_store_from_os_threads_admits_exactly_the_quota_per_key() {
    const LIMIT: u32 = 500;
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(LIMIT))
        .key(key_fn(|k: &u16| Some(*k)))
        .build()
        .unwrap();
    let per_key: Arc<Vec<AtomicUsize>> = Arc::new((0..8).map(|_| AtomicUsize::new(0)).collect());
    std::thread::scope(|s| {
        for t in 0..2 {
            let layer = &layer;
            let per_key = per_key.clone();
            s.spawn(move || {
                for i in 0..8_000u16 {
                    let key = (i + t) % 8;
                    if layer.store().decide(&key).is_allowed() {
                        per_key[key as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    for (k, n) in per_key.iter().enumerate() {
        assert_eq!(n.load(Ordering::Relaxed), LIMIT as usize, "key {k}");
    }
}

/// Regression: spawning a task that calls the limiter over a service whose error is `BoxError` (the
/// usual tower stack) must compile; the response future once named its error through a trait
/// projection, which auto-trait checks of spawned tasks could not resolve.
#[tokio::test]
async fn spawned_calls_over_a_boxerror_service_compile_and_run() {
    let layer = RateLimitLayer::new(Quota::per_minute(1));
    let svc = layer.layer(tower::service_fn(|()| async {
        Ok::<_, tower_rampart::BoxError>(())
    }));
    let task = tokio::spawn(async move {
        let mut svc = svc;
        ServiceExt::<()>::ready(&mut svc)
            .await
            .unwrap()
            .call(())
            .await
            .is_ok()
    });
    assert!(task.await.unwrap());
}
