//! A stampede on one key across four replicas: one upstream call when the holder of the fill lock
//! answers in time, and at most one per replica (the documented bound) when it does not.

use std::time::Duration;

use tower_rampart::backend::RedisBackend;

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{
    Config, Replica, Upstream, call, connect, connect_cluster, replica, unique_prefix, until_stored,
};

/// Four replicas, each a layer on its own backend (its own connection).
async fn four(backends: Vec<RedisBackend>, cfg: Config, up: &Upstream) -> Vec<Replica> {
    backends
        .into_iter()
        .map(|b| replica(b, "stampede", cfg, up))
        .collect()
}

/// 1,000 concurrent requests for `key`, spread over the replicas, on spawned tasks; the answers
/// by replica.
async fn stampede(replicas: &[Replica], key: &'static str) -> Vec<Vec<String>> {
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let mut svc = replicas[i % replicas.len()].svc.clone();
            tokio::spawn(async move { (i % 4, call(&mut svc, key).await.unwrap()) })
        })
        .collect();
    let mut by_replica = vec![Vec::new(); replicas.len()];
    for t in tasks {
        let (r, answer) = t.await.unwrap();
        by_replica[r].push(answer);
    }
    by_replica
}

async fn one_call_for_a_stampede(backends: Vec<RedisBackend>) {
    let up = Upstream::default();
    up.delay(200);
    let replicas = four(backends, Config::default(), &up).await;
    let answers = stampede(&replicas, "k").await;
    assert_eq!(
        up.calls(),
        1,
        "one upstream call for 1,000 concurrent misses on four replicas"
    );
    assert!(answers.iter().flatten().all(|a| a == "k#1"));
    // The entry is in Redis, the lock released: a later request on any replica is a hit.
    assert_eq!(until_stored(&replicas[3].store, "k").await, "k#1");
    for r in &replicas {
        let mut svc = r.svc.clone();
        assert_eq!(call(&mut svc, "k").await.unwrap(), "k#1");
    }
    assert_eq!(up.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_make_one_call_for_a_thousand_concurrent_misses() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("stampede");
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(connect(&server.url(), &prefix).await);
    }
    one_call_for_a_stampede(backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_make_one_call_for_a_thousand_concurrent_misses_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = unique_prefix("stampede-cluster");
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(connect_cluster(&cluster.urls(), &prefix).await);
    }
    one_call_for_a_stampede(backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_slower_than_the_wait_costs_at_most_one_call_per_replica() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("slow-holder");
    let up = Upstream::default();
    // The holder's call takes 1.5 s; the others wait 200 ms for its entry, then call through.
    up.delay(1_500);
    let cfg = Config {
        wait: Duration::from_millis(200),
        ..Config::default()
    };
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(connect(&server.url(), &prefix).await);
    }
    let replicas = four(backends, cfg, &up).await;
    let answers = stampede(&replicas, "k").await;
    assert_eq!(up.calls(), 4, "the documented bound: one call per replica");
    for per_replica in &answers {
        assert!(
            per_replica.iter().all(|a| a == &per_replica[0]),
            "a replica's requests share its one call: {per_replica:?}"
        );
    }
    // Only the lock's holder stored: every replica now serves its answer.
    let stored = until_stored(&replicas[0].store, "k").await;
    assert!(answers.iter().any(|a| a[0] == stored));
    for r in &replicas {
        let mut svc = r.svc.clone();
        assert_eq!(call(&mut svc, "k").await.unwrap(), stored);
    }
    assert_eq!(up.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_slower_than_the_hold_lets_other_replicas_take_the_lock() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("lapsed-lock");
    let up = Upstream::default();
    // The holder's call takes 1.5 s, its lock lapses after 200 ms: the replicas waiting for it
    // take the lock in turn and call, each once (their waits are long enough to get it).
    up.delay(1_500);
    let cfg = Config {
        hold: Duration::from_millis(200),
        wait: Duration::from_secs(10),
        ..Config::default()
    };
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(connect(&server.url(), &prefix).await);
    }
    let replicas = four(backends, cfg, &up).await;
    let answers = stampede(&replicas, "k").await;
    let calls = up.calls();
    assert!(
        (2..=4).contains(&calls),
        "more than one call (the lock lapsed), never more than one per replica: {calls}"
    );
    for per_replica in &answers {
        assert!(per_replica.iter().all(|a| a == &per_replica[0]));
    }
}
