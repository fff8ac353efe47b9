//! Invalidation by key, prefix and all, made on one replica and seen by every replica, on a
//! single node and on a cluster; and fills that were running when it happened do not store.

use std::time::Duration;

use tower_rampart::backend::RedisBackend;

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{
    Config, Replica, Upstream, call, connect, connect_cluster, replica, stored, unique_prefix,
    until_stored,
};

const KEYS: [&str; 4] = ["summary:cpu", "summary:mem", "summary:disk", "list:cpu"];

/// Fills every key (through replica 0) and checks each replica hits all of them.
async fn fill_all(replicas: &mut [Replica], up: &Upstream) -> Vec<String> {
    let mut values = Vec::new();
    for key in KEYS {
        values.push(call(&mut replicas[0].svc, key).await.unwrap());
        until_stored(&replicas[0].store, key).await;
    }
    let calls = up.calls();
    for r in replicas.iter_mut() {
        for (key, value) in KEYS.iter().zip(&values) {
            assert_eq!(
                &call(&mut r.svc, key).await.unwrap(),
                value,
                "{key} is a hit"
            );
        }
    }
    assert_eq!(up.calls(), calls, "hits on every replica");
    values
}

/// Which of `KEYS` every replica now fetches again (each replica asking in turn).
async fn refetched(
    replicas: &mut [Replica],
    up: &Upstream,
    before: &[String],
) -> Vec<&'static str> {
    let mut gone = Vec::new();
    for (key, old) in KEYS.iter().zip(before) {
        let calls = up.calls();
        let mut answers = Vec::new();
        for r in replicas.iter_mut() {
            answers.push(call(&mut r.svc, key).await.unwrap());
            // Let the first replica's fill land before the next asks.
            if &answers[0] != old {
                until_stored(&r.store, key).await;
            }
        }
        if &answers[0] != old {
            assert!(
                answers.iter().all(|a| a == &answers[0]),
                "{key}: every replica sees the one new entry: {answers:?}"
            );
            assert_eq!(
                up.calls(),
                calls + 1,
                "{key}: fetched once, for all replicas"
            );
            gone.push(*key);
        } else {
            assert!(answers.iter().all(|a| a == old), "{key}: {answers:?}");
            assert_eq!(up.calls(), calls, "{key}: still cached");
        }
    }
    gone
}

async fn invalidations_reach_every_replica(backends: Vec<RedisBackend>) {
    let up = Upstream::default();
    let mut replicas: Vec<Replica> = backends
        .into_iter()
        .map(|b| replica(b, "invalidation", Config::default(), &up))
        .collect();

    let values = fill_all(&mut replicas, &up).await;
    replicas[2].handle.invalidate("summary:cpu").await.unwrap();
    assert_eq!(
        refetched(&mut replicas, &up, &values).await,
        ["summary:cpu"]
    );

    let values = fill_all(&mut replicas, &up).await;
    replicas[1]
        .handle
        .invalidate_prefix("summary:")
        .await
        .unwrap();
    assert_eq!(
        refetched(&mut replicas, &up, &values).await,
        ["summary:cpu", "summary:mem", "summary:disk"]
    );

    let values = fill_all(&mut replicas, &up).await;
    replicas[3]
        .handle
        .invalidate_prefix("summary:m")
        .await
        .unwrap();
    assert_eq!(
        refetched(&mut replicas, &up, &values).await,
        ["summary:mem"]
    );

    let values = fill_all(&mut replicas, &up).await;
    replicas[0].handle.invalidate_all().await.unwrap();
    assert_eq!(refetched(&mut replicas, &up, &values).await, KEYS);

    // A prefix nothing has, and the empty prefix (everything).
    let values = fill_all(&mut replicas, &up).await;
    replicas[0]
        .handle
        .invalidate_prefix("nothing:")
        .await
        .unwrap();
    assert!(refetched(&mut replicas, &up, &values).await.is_empty());
    replicas[0].handle.invalidate_prefix("").await.unwrap();
    assert_eq!(refetched(&mut replicas, &up, &values).await, KEYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_by_key_prefix_and_all_is_seen_by_every_replica() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("invalidation");
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(connect(&server.url(), &prefix).await);
    }
    invalidations_reach_every_replica(backends).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidation_by_key_prefix_and_all_is_seen_by_every_replica_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let prefix = unique_prefix("invalidation-cluster");
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(connect_cluster(&cluster.urls(), &prefix).await);
    }
    invalidations_reach_every_replica(backends).await;
    // The cache's keys are spread over the three masters.
    let spread = cluster
        .nodes
        .iter()
        .filter(|n| n.command("DBSIZE") != ":0")
        .count();
    assert!(spread >= 2, "keys on {spread} of 3 nodes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_running_on_another_replica_during_an_invalidation_does_not_store() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("fence");
    let up = Upstream::default();
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(
            connect(&server.url(), &prefix).await,
            "fence",
            Config::default(),
            &up,
        ));
    }
    for (i, invalidate_prefix) in [false, true].into_iter().enumerate() {
        let key = ["k", "summary:k"][i];
        up.delay(300);
        // Replica A starts a fill (its upstream call reads the data before the write)...
        let mut a = replicas[0].svc.clone();
        let fill = tokio::spawn(async move { call(&mut a, key).await.unwrap() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...replica B writes and invalidates while it runs...
        if invalidate_prefix {
            replicas[1]
                .handle
                .invalidate_prefix("summary:")
                .await
                .unwrap();
        } else {
            replicas[1].handle.invalidate(key).await.unwrap();
        }
        // ...A answers its request with what it read, but does not store it.
        let old = fill.await.unwrap();
        up.delay(0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stored(&replicas[2].store, key).await, None, "{key}");
        let calls = up.calls();
        let fresh = call(&mut replicas[2].svc, key).await.unwrap();
        assert_ne!(fresh, old);
        assert_eq!(up.calls(), calls + 1, "replica C fetched it again");
        assert_eq!(until_stored(&replicas[2].store, key).await, fresh);
    }
}
