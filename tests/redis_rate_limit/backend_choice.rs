//! `Backend`: memory or Redis chosen at run time, with one layer type and the behaviour of the
//! backend chosen (#15).

use tower_rampart::backend::{Backend, EitherStore, RedisBackend};
use tower_rampart::key::{KeyFnPtr, key_fn};
use tower_rampart::rate_limit::{Quota, RateLimitBackend, RateLimitLayer};

use crate::common::redis::RedisServer;
use crate::support::{connect, decide, unique_prefix};

/// One function, one return type, whichever backend it is given: what an app that reads
/// `REDIS_URL` at start-up needs.
type Limiter = RateLimitLayer<KeyFnPtr<u32, u32>, <Backend as RateLimitBackend<u32>>::Store>;

fn limiter(backend: Backend) -> Limiter {
    RateLimitLayer::builder()
        .name("choice")
        .quota(Quota::per_hour(3))
        .key(key_fn((|k: &u32| Some(*k)) as fn(&u32) -> Option<u32>))
        .backend(backend)
        .build()
        .unwrap()
}

#[tokio::test]
async fn memory_counts_per_layer_and_redis_across_replicas_with_one_type() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // In memory: two layers (two replicas) count apart.
    let a = limiter(Backend::memory());
    let b = limiter(Backend::memory());
    for _ in 0..3 {
        assert!(decide(a.store(), &1).await.unwrap().is_allowed());
    }
    assert!(!decide(a.store(), &1).await.unwrap().is_allowed());
    assert!(
        decide(b.store(), &1).await.unwrap().is_allowed(),
        "b counts apart"
    );

    // In Redis: the same function, the same type; two replicas share the count.
    let prefix = unique_prefix("choice");
    let redis = |r: RedisBackend| Backend::from(r.prefix(&prefix));
    let a = limiter(redis(connect(&server.url()).await));
    let b = limiter(redis(connect(&server.url()).await));
    for _ in 0..2 {
        assert!(decide(a.store(), &1).await.unwrap().is_allowed());
    }
    assert!(decide(b.store(), &1).await.unwrap().is_allowed());
    assert!(!decide(a.store(), &1).await.unwrap().is_allowed(), "shared");
    assert!(!decide(b.store(), &1).await.unwrap().is_allowed(), "shared");
}

#[tokio::test]
async fn the_store_says_which_backend_it_is() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(3))
        .backend(Backend::from(connect(&server.url()).await))
        .build()
        .unwrap();
    assert!(matches!(layer.store(), EitherStore::Redis(_)));
    let memory = RateLimitLayer::builder()
        .quota(Quota::per_hour(3))
        .backend(Backend::default())
        .build()
        .unwrap();
    assert!(memory.store().as_memory().is_some());
    assert!(Backend::default().as_redis().is_none());
}
