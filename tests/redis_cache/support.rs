//! Helpers shared by the Redis cache tests: a counting upstream and replicas on one Redis.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::RedisCacheStore;
use tower_rampart::cache::{CacheHandle, CacheKey, CacheLayer, CacheStore, StoreOp};
use tower_rampart::key::key_fn;

pub(crate) use crate::common::upstream::Upstream;

/// One call through `svc`.
pub(crate) async fn call<S>(svc: &mut S, req: &str) -> Result<String, BoxError>
where
    S: Service<String, Response = String, Error = BoxError>,
{
    svc.ready().await?.call(req.to_owned()).await
}

pub(crate) type Svc = BoxCloneSyncService<String, String, BoxError>;

/// A replica: its layer's service, invalidation handle and store.
pub(crate) struct Replica {
    pub(crate) svc: Svc,
    pub(crate) handle: CacheHandle,
    pub(crate) store: RedisCacheStore<String>,
}

/// How replicas' layers are configured.
#[derive(Clone, Copy)]
pub(crate) struct Config {
    pub(crate) ttl: Duration,
    pub(crate) swr: Duration,
    pub(crate) sie: Duration,
    pub(crate) hold: Duration,
    pub(crate) wait: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            swr: Duration::ZERO,
            sie: Duration::ZERO,
            hold: Duration::from_secs(10),
            wait: Duration::from_secs(5),
        }
    }
}

/// A cache layer named `name` on `backend` in front of `up`, keyed by the request string.
pub(crate) fn replica(
    backend: RedisBackend,
    name: &'static str,
    cfg: Config,
    up: &Upstream,
) -> Replica {
    let layer = CacheLayer::builder()
        .name(name)
        .ttl(cfg.ttl)
        .stale_while_revalidate(cfg.swr)
        .stale_if_error(cfg.sie)
        .fill_lock(cfg.hold, cfg.wait)
        .key(key_fn(|r: &String| Some(r.clone())))
        .backend(backend)
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    let store = layer.store().clone();
    Replica {
        svc: BoxCloneSyncService::new(layer.layer(up.service())),
        handle,
        store,
    }
}

/// A key prefix no other test uses, so tests can share a server without meeting.
pub(crate) fn unique_prefix(what: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("t{}-{what}", N.fetch_add(1, Ordering::Relaxed))
}

/// A backend on `url` with a timeout generous enough for a loaded test machine: tests that are not
/// about timeouts must not see any.
pub(crate) async fn connect(url: &str, prefix: &str) -> RedisBackend {
    RedisBackend::connect(url)
        .await
        .expect("connect to the test redis-server")
        .timeout(Duration::from_secs(5))
        .prefix(prefix)
}

/// A backend on the test cluster, as [`connect`].
pub(crate) async fn connect_cluster(urls: &[String], prefix: &str) -> RedisBackend {
    RedisBackend::connect_cluster(urls)
        .await
        .expect("connect to the test cluster")
        .timeout(Duration::from_secs(5))
        .prefix(prefix)
}

/// The entry `store` holds for `key`, as the layer would see it.
pub(crate) async fn stored(store: &RedisCacheStore<String>, key: &str) -> Option<String> {
    let found = match store.get(&CacheKey::from(key)) {
        StoreOp::Ready(found) => found,
        StoreOp::Pending(f) => f.await,
    };
    found
        .expect("redis answers")
        .map(|entry| entry.value().clone())
}

/// Waits (up to 5 s, real time) until `store` holds an entry for `key` in Redis: fills write in
/// the background after answering.
pub(crate) async fn until_stored(store: &RedisCacheStore<String>, key: &str) -> String {
    for _ in 0..500 {
        if let Some(value) = stored(store, key).await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no entry for {key:?} in redis after 5 s");
}

/// Waits (up to 5 s, real time) until `store`'s entry for `key` is `value`.
pub(crate) async fn until_value(store: &RedisCacheStore<String>, key: &str, value: &str) {
    let mut last = None;
    for _ in 0..500 {
        last = stored(store, key).await;
        if last.as_deref() == Some(value) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the entry for {key:?} is {last:?}, not {value:?}, after 5 s");
}
