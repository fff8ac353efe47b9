//! A replica's first miss is two round trips, its lookup and its fill lock; another replica may
//! store the entry and release the lock between them. The lock script looks for a fresh entry in
//! the same step and answers it, so that the replica serves it instead of filling the key again
//! (issue #14). Forced refreshes, and stale or undecodable entries, still take the lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Layer;
use tower::util::BoxCloneSyncService;
use tower_rampart::backend::redis::RedisCacheStore;
use tower_rampart::backend::{BackendError, RedisBackend};
use tower_rampart::cache::{
    CacheBackend, CacheEntry, CacheKey, CacheLayer, CacheSpec, CacheStore, FillLock, Found,
    LockMode, StoreOp,
};
use tower_rampart::clock::ManualClock;
use tower_rampart::key::key_fn;

use crate::common::redis::RedisServer;
use crate::support::{Config, Upstream, call, connect, replica, unique_prefix, until_stored};

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send>>;

/// What another replica does between this one's lookup and its lock request.
type Meanwhile = Arc<Mutex<Option<Pin<Box<dyn Future<Output = ()> + Send>>>>>;

/// The Redis store, with something to run before the next lock request is sent.
struct Hooked {
    redis: RedisCacheStore<String>,
    before_next_lock: Meanwhile,
}

struct HookedBackend {
    redis: RedisBackend,
    before_next_lock: Meanwhile,
}

impl CacheBackend<String> for HookedBackend {
    type Store = Hooked;

    fn cache_store(&self, spec: &CacheSpec) -> Result<Hooked, tower_rampart::ConfigError> {
        Ok(Hooked {
            redis: self.redis.cache_store(spec)?,
            before_next_lock: Arc::clone(&self.before_next_lock),
        })
    }
}

fn boxed<T: Send + 'static, F>(op: StoreOp<T, F>) -> StoreOp<T, BoxFut<T>>
where
    F: Future<Output = Result<T, BackendError>> + Send + 'static,
{
    match op {
        StoreOp::Ready(r) => StoreOp::Ready(r),
        StoreOp::Pending(f) => StoreOp::Pending(Box::pin(f)),
    }
}

impl CacheStore<String> for Hooked {
    type Future<T: Send + 'static> = BoxFut<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<String>, BoxFut<Found<String>>> {
        boxed(self.redis.get(key))
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<String>) -> StoreOp<(), BoxFut<()>> {
        boxed(self.redis.put(key, entry))
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), BoxFut<()>> {
        boxed(self.redis.invalidate(key))
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), BoxFut<()>> {
        boxed(self.redis.invalidate_prefix(prefix))
    }

    fn clear(&self) -> StoreOp<(), BoxFut<()>> {
        boxed(self.redis.clear())
    }

    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<String>, BoxFut<FillLock<String>>> {
        let meanwhile = self.before_next_lock.lock().unwrap().take();
        // The store's lock future sends its script when first polled: after `meanwhile`.
        let lock = self.redis.lock(key, hold, mode);
        StoreOp::Pending(Box::pin(async move {
            if let Some(meanwhile) = meanwhile {
                meanwhile.await;
            }
            match lock {
                StoreOp::Ready(r) => r,
                StoreOp::Pending(f) => f.await,
            }
        }))
    }

    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), BoxFut<()>> {
        boxed(self.redis.unlock(key, token))
    }

    fn put_locked(
        &self,
        key: &CacheKey,
        entry: &CacheEntry<String>,
        token: u64,
    ) -> Option<StoreOp<(), BoxFut<()>>> {
        self.redis.put_locked(key, entry, token).map(boxed)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_miss_serves_the_entry_another_replica_stored_before_its_lock() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("first-miss");
    let up = Upstream::default();
    let mut a = replica(
        connect(&server.url(), &prefix).await,
        "first",
        Config::default(),
        &up,
    );
    let before_next_lock = Meanwhile::default();
    let mut b = BoxCloneSyncService::new(
        CacheLayer::builder()
            .name("first")
            .ttl(Duration::from_secs(60))
            .fill_lock(Duration::from_secs(10), Duration::from_secs(5))
            .key(key_fn(|r: &String| Some(r.clone())))
            .backend(HookedBackend {
                redis: connect(&server.url(), &prefix).await,
                before_next_lock: Arc::clone(&before_next_lock),
            })
            .build()
            .unwrap()
            .layer(up.service()),
    );
    // B looks "k" up and finds nothing; before its lock request reaches Redis, A misses, takes
    // the lock, calls, stores and releases the lock: all between B's two round trips.
    let a_store = a.store.clone();
    *before_next_lock.lock().unwrap() = Some(Box::pin(async move {
        assert_eq!(call(&mut a.svc, "k").await.unwrap(), "k#1");
        until_stored(&a_store, "k").await;
    }));
    assert_eq!(
        call(&mut b, "k").await.unwrap(),
        "k#1",
        "B serves the entry its lock request found"
    );
    assert!(before_next_lock.lock().unwrap().is_none(), "A's fill ran");
    assert_eq!(up.calls(), 1, "one upstream call, A's");
}

/// The first bytes of a framed entry (`"RMV"`, version 1, stored-at and fresh-until) that claim
/// to be fresh for a day, and then stop: undecodable.
fn truncated_fresh_entry() -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut bytes = b"RMV\x01".to_vec();
    bytes.extend_from_slice(&now.to_be_bytes());
    bytes.extend_from_slice(&(now + 86_400_000).to_be_bytes());
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_answers_only_a_fresh_entry_and_never_to_a_forced_refresh() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("lock-fresh");
    let clock = ManualClock::new();
    let up = Upstream::default();
    let cfg = Config {
        ttl: Duration::from_secs(10),
        swr: Duration::from_secs(30),
        ..Config::default()
    };
    let backend = connect(&server.url(), &prefix).await.clock(clock.clone());
    let mut r = replica(backend, "lock", cfg, &up);
    let store = r.store.clone();
    let lock = |key: &'static str, mode| {
        let store = store.clone();
        async move {
            match store.lock(&CacheKey::from(key), Duration::from_secs(10), mode) {
                StoreOp::Ready(r) => r,
                StoreOp::Pending(f) => f.await,
            }
            .expect("redis answers")
        }
    };
    let unlock = |key: &'static str, token| {
        let store = store.clone();
        async move {
            match store.unlock(&CacheKey::from(key), token) {
                StoreOp::Ready(r) => r,
                StoreOp::Pending(f) => f.await,
            }
            .expect("redis answers")
        }
    };

    assert_eq!(call(&mut r.svc, "k").await.unwrap(), "k#1");
    until_stored(&r.store, "k").await;
    // Fresh: answered, no lock taken.
    match lock("k", LockMode::UnlessFresh).await {
        FillLock::Fresh(entry) => assert_eq!(entry.value(), "k#1"),
        other => panic!("expected the fresh entry, got {other:?}"),
    }
    // A forced refresh takes the lock over it.
    let FillLock::Acquired(token) = lock("k", LockMode::Always).await else {
        panic!("a forced refresh takes the lock");
    };
    unlock("k", token).await;
    // Stale (within stale-while-revalidate): no longer fresh, so the lock is taken, as before.
    clock.advance(Duration::from_secs(15));
    let FillLock::Acquired(token) = lock("k", LockMode::UnlessFresh).await else {
        panic!("a stale entry does not stop the lock");
    };
    unlock("k", token).await;

    // Bytes that look fresh to the script but do not decode: the lock is taken.
    let mut con = server.connection().await;
    let name = r.store.redis_key(&CacheKey::from("bad"));
    let (): () = redis::cmd("SET")
        .arg(&name)
        .arg(truncated_fresh_entry())
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(matches!(
        lock("bad", LockMode::UnlessFresh).await,
        FillLock::Acquired(_)
    ));
    assert_eq!(up.calls(), 1);
}
