//! `Backend` for caches: memory or Redis chosen at run time, one layer type, and the behaviour of
//! the backend chosen (#15).

use tower::Layer;
use tower_rampart::backend::Backend;
use tower_rampart::cache::{CacheBackend, CacheLayer};
use tower_rampart::key::{KeyFnPtr, key_fn};

use crate::common::redis::RedisServer;
use crate::support::{Svc, Upstream, call, connect, unique_prefix};

type KeyFn = KeyFnPtr<String, String>;

/// One function, one type, whichever backend.
fn cache(backend: Backend) -> CacheLayer<KeyFn, <Backend as CacheBackend<String>>::Store> {
    CacheLayer::builder()
        .name("choice")
        .ttl(std::time::Duration::from_secs(60))
        .key(key_fn(
            (|r: &String| Some(r.clone())) as fn(&String) -> Option<String>,
        ))
        .backend(backend)
        .build::<String>()
        .unwrap()
}

fn replica(backend: Backend, up: &Upstream) -> Svc {
    Svc::new(cache(backend).layer(up.service()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_caches_per_replica_and_redis_across_replicas() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let up = Upstream::default();
    let (mut a, mut b) = (
        replica(Backend::memory(), &up),
        replica(Backend::memory(), &up),
    );
    assert_eq!(call(&mut a, "k").await.unwrap(), "k#1");
    assert_eq!(
        call(&mut a, "k").await.unwrap(),
        "k#1",
        "a hit in a's memory"
    );
    assert_eq!(
        call(&mut b, "k").await.unwrap(),
        "k#2",
        "b has its own memory"
    );

    let prefix = unique_prefix("choice");
    let redis = Backend::from(connect(&server.url(), &prefix).await);
    let up = Upstream::default();
    let (mut a, mut b) = (replica(redis.clone(), &up), replica(redis, &up));
    assert_eq!(call(&mut a, "k").await.unwrap(), "k#1");
    for _ in 0..500 {
        if server
            .command(&format!("KEYS {prefix}:*:e:*"))
            .starts_with("*1")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(
        call(&mut b, "k").await.unwrap(),
        "k#1",
        "shared through redis"
    );
    assert_eq!(up.calls(), 1);
}
