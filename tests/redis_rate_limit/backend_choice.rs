//! `Backend`: memory or Redis (exact or leased) chosen at run time, with one layer type and the
//! behaviour of the backend chosen (#15, #20).

use std::num::NonZeroU32;
use std::time::Duration;

use tower_rampart::backend::redis::LeaseConfig;
use tower_rampart::backend::{Backend, EitherStore, RedisBackend, RedisModeStore};
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

#[tokio::test]
async fn leased_redis_is_a_third_choice_with_the_same_type() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("choice-leased");
    let config = LeaseConfig::new().ttl(Duration::from_secs(10));
    // `Backend::leased` on a Redis backend, and `Backend::from(redis.leased(..))`: the same.
    let a_backend = Backend::from(connect(&server.url()).await.prefix(&prefix)).leased(config);
    let b_backend = Backend::from(connect(&server.url()).await.prefix(&prefix).leased(config));
    assert!(a_backend.is_redis() && a_backend.as_redis().is_some());
    assert_eq!(a_backend.as_leased().map(|l| l.config()), Some(config));
    // `map_redis` keeps the lease configuration.
    let a_backend = a_backend.map_redis(|r| r.timeout(Duration::from_millis(500)));
    assert_eq!(a_backend.as_leased().map(|l| l.config()), Some(config));
    assert_eq!(
        a_backend.as_redis().map(|r| r.get_timeout()),
        Some(Duration::from_millis(500))
    );

    // The same function and type as the memory and exact-Redis limiters above.
    let a = limiter(a_backend);
    let b = limiter(b_backend);
    let EitherStore::Redis(RedisModeStore::Leased(leased)) = a.store() else {
        panic!("a leased backend gives a leased store: {:?}", a.store());
    };
    // The key is cold (3 an hour): one-unit leases, one call per decision, shared by replicas.
    for _ in 0..2 {
        assert!(decide(a.store(), &1).await.unwrap().is_allowed());
    }
    assert!(decide(b.store(), &1).await.unwrap().is_allowed());
    assert!(!decide(a.store(), &1).await.unwrap().is_allowed(), "shared");
    assert!(!decide(b.store(), &1).await.unwrap().is_allowed(), "shared");
    assert!(leased.lease_calls() >= 2, "{} calls", leased.lease_calls());
    assert_eq!(
        leased.leased_units(),
        2,
        "a's two admissions, one unit each"
    );

    // A memory backend stays memory; an exact Redis backend's store says it is exact.
    assert!(matches!(
        Backend::memory().leased(LeaseConfig::new().max_units(NonZeroU32::MIN)),
        Backend::Memory(_)
    ));
    let exact = limiter(Backend::from(connect(&server.url()).await.prefix(&prefix)));
    assert!(
        exact
            .store()
            .as_redis()
            .and_then(RedisModeStore::as_exact)
            .is_some()
    );
}
