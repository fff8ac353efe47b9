//! Redis killed and restarted mid-test: requests keep being served (calling through, or from each
//! replica's memory with the `Local` policy), and caching in Redis resumes once it is back.

use std::time::Duration;

use tower_rampart::backend::FailurePolicy;

use crate::common::redis::RedisServer;
use crate::support::{
    Config, Replica, Upstream, call, connect, replica, stored, unique_prefix, until_stored,
};

/// Asks `key` on `r` until an answer comes from Redis, shared by both replicas: bounded (10 s).
async fn until_cached_again(a: &mut Replica, b: &mut Replica, up: &Upstream, key: &str) {
    for _ in 0..100 {
        let answer = call(&mut a.svc, key).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let calls = up.calls();
        if stored(&a.store, key).await.as_deref() == Some(answer.as_str())
            && call(&mut b.svc, key).await.unwrap() == answer
            && up.calls() == calls
        {
            return;
        }
    }
    panic!("caching in redis did not resume within 10 s of the restart");
}

async fn redis_down_and_back(policy: FailurePolicy) {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("faults");
    let up = Upstream::default();
    let backend = || async {
        connect(&server.url(), &prefix)
            .await
            .timeout(Duration::from_millis(200))
            .failure_policy(policy)
    };
    let mut a = replica(backend().await, "faults", Config::default(), &up);
    let mut b = replica(backend().await, "faults", Config::default(), &up);

    assert_eq!(call(&mut a.svc, "k").await.unwrap(), "k#1");
    until_stored(&a.store, "k").await;
    assert_eq!(call(&mut b.svc, "k").await.unwrap(), "k#1", "shared");

    server.kill();
    // Every request is served, none fails because the cache is gone.
    let before = up.calls();
    let mut answers = Vec::new();
    for i in 0..20 {
        let r = if i % 2 == 0 { &mut a } else { &mut b };
        answers.push(
            call(&mut r.svc, "k")
                .await
                .expect("served while redis is down"),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = up.calls() - before;
    match policy {
        // Each replica caches in its own memory: one call each.
        FailurePolicy::Local => assert_eq!(calls, 2, "{answers:?}"),
        // Every request calls through.
        _ => assert_eq!(calls, 20, "{answers:?}"),
    }
    // Invalidations report that they could not reach Redis.
    assert!(a.handle.invalidate("k").await.is_err());

    server.restart();
    // Back: entries are shared through Redis again (its data is gone; the memory each replica
    // used meanwhile is dropped, not served).
    until_cached_again(&mut a, &mut b, &up, "k").await;
    until_cached_again(&mut b, &mut a, &up, "other").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_local_policy_replicas_cache_in_memory_while_redis_is_down() {
    redis_down_and_back(FailurePolicy::Local).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_open_policy_requests_call_through_while_redis_is_down() {
    redis_down_and_back(FailurePolicy::Open).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_closed_policy_a_cache_still_calls_through_while_redis_is_down() {
    // A cache has nothing to refuse: Closed behaves as Open.
    redis_down_and_back(FailurePolicy::Closed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answered_is_no_obstacle() {
    // Nothing listens there (a port from a server that was started and killed).
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let url = server.url();
    server.kill();
    let backend = tower_rampart::backend::RedisBackend::connect_lazy(&url)
        .unwrap()
        .timeout(Duration::from_millis(100))
        .failure_policy(FailurePolicy::Open);
    let up = Upstream::default();
    let mut r = replica(backend, "lazy", Config::default(), &up);
    for i in 1..=5 {
        assert_eq!(call(&mut r.svc, "k").await.unwrap(), format!("k#{i}"));
    }
}
