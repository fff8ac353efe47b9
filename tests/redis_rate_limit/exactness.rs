//! Exactness across replicas: 4 independent backends (4 app replicas, each with its own
//! connection) on one Redis, 40 concurrent clients spread over them, one quota of L: exactly L
//! requests are admitted, on a single node and on a 3-master cluster, with both algorithms.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::BoxError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::rate_limit::error::RateLimited;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{connect, connect_cluster, unique_prefix};

const REPLICAS: usize = 4;
const CLIENTS: usize = 40;
const PER_CLIENT: usize = 10;
/// The quota: per hour, so no unit of it comes back while the test runs.
const LIMIT: u32 = 100;

/// Runs the clients against `replicas` and returns (admitted, refused, inner calls).
async fn hammer(replicas: Vec<RedisBackend>, algorithm: Algorithm) -> (usize, usize, usize) {
    let prefix = unique_prefix("exact");
    let calls = Arc::new(AtomicUsize::new(0));
    let services: Vec<_> = replicas
        .into_iter()
        .map(|backend| {
            let layer = RateLimitLayer::builder()
                .quota(Quota::per_hour(LIMIT))
                .algorithm(algorithm)
                .backend(backend.prefix(&prefix))
                .build()
                .expect("a valid configuration");
            let calls = Arc::clone(&calls);
            layer.layer(service_fn(move |_: ()| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, BoxError>(()) }
            }))
        })
        .collect();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let mut svc = services[client % REPLICAS].clone();
            tokio::spawn(async move {
                let (mut admitted, mut refused) = (0, 0);
                for _ in 0..PER_CLIENT {
                    match svc.ready().await.unwrap().call(()).await {
                        Ok(()) => admitted += 1,
                        Err(e) if e.is::<RateLimited>() => refused += 1,
                        Err(e) => panic!("unexpected error from the limiter: {e}"),
                    }
                }
                (admitted, refused)
            })
        })
        .collect();
    let (mut admitted, mut refused) = (0, 0);
    for t in tasks {
        let (a, r) = t.await.expect("client task panicked");
        admitted += a;
        refused += r;
    }
    (admitted, refused, calls.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_forty_clients_admit_exactly_the_quota_on_one_node() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            replicas.push(connect(&server.url()).await);
        }
        let (admitted, refused, calls) = hammer(replicas, algorithm).await;
        assert_eq!(admitted, LIMIT as usize, "{algorithm:?}");
        assert_eq!(refused, CLIENTS * PER_CLIENT - LIMIT as usize);
        assert_eq!(calls, admitted, "refused requests never reach the service");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_forty_clients_admit_exactly_the_quota_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            replicas.push(connect_cluster(&cluster.urls()).await);
        }
        let (admitted, refused, calls) = hammer(replicas, algorithm).await;
        assert_eq!(admitted, LIMIT as usize, "{algorithm:?}");
        assert_eq!(refused, CLIENTS * PER_CLIENT - LIMIT as usize);
        assert_eq!(calls, admitted);
    }
}
