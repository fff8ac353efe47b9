//! Stores: one that answers through futures (as Redis will) takes the slow path with the same
//! results; a failing store never fails a request; entries that cannot be replayed are misses.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::future::join_all;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::backend::memory::MemoryCacheStore;
use tower_rampart::backend::{BackendError, MemoryBackend};
use tower_rampart::cache::entry::{Freshness, Lifetimes, Timing};
use tower_rampart::cache::{
    CacheBackend, CacheEntry, CacheKey, CacheLayer, CacheSpec, CacheStore, CachedResponse,
    FillLock, Found, LockMode, StoreOp,
};
use tower_rampart::key::key_fn;

use crate::{Upstream, call};

type BoxFut<T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send>>;

/// Wraps the in-memory store: every operation yields once before answering, like a network
/// store; `down` makes every operation fail.
struct Remote<V> {
    inner: Arc<MemoryCacheStore<V>>,
    down: Arc<AtomicBool>,
}

#[derive(Clone, Default)]
struct RemoteBackend {
    down: Arc<AtomicBool>,
}

impl<V: Send + Sync + 'static> CacheBackend<V> for RemoteBackend {
    type Store = Remote<V>;

    fn cache_store(&self, spec: &CacheSpec) -> Result<Remote<V>, tower_rampart::ConfigError> {
        Ok(Remote {
            inner: Arc::new(MemoryBackend::new().cache_store(spec)?),
            down: Arc::clone(&self.down),
        })
    }
}

impl<V: Send + Sync + 'static> Remote<V> {
    fn remote<T: Send + 'static>(
        &self,
        op: impl FnOnce(
            &MemoryCacheStore<V>,
        ) -> StoreOp<T, std::future::Pending<Result<T, BackendError>>>
        + Send
        + 'static,
    ) -> StoreOp<T, BoxFut<T>> {
        let inner = Arc::clone(&self.inner);
        let down = self.down.load(Ordering::SeqCst);
        StoreOp::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            if down {
                return Err(BackendError::new("connection refused", None));
            }
            match op(&inner) {
                StoreOp::Ready(r) => r,
                StoreOp::Pending(_) => unreachable!("the memory store is always ready"),
            }
        }))
    }
}

impl<V: Send + Sync + 'static> CacheStore<V> for Remote<V> {
    type Future<T: Send + 'static> = BoxFut<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, BoxFut<Found<V>>> {
        let key = key.clone();
        self.remote(move |s| s.get(&key))
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), BoxFut<()>> {
        self.remote(move |s| s.put(key, entry))
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), BoxFut<()>> {
        let key = key.clone();
        self.remote(move |s| s.invalidate(&key))
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), BoxFut<()>> {
        let prefix = prefix.to_vec();
        self.remote(move |s| s.invalidate_prefix(&prefix))
    }

    fn clear(&self) -> StoreOp<(), BoxFut<()>> {
        self.remote(|s| s.clear())
    }
}

#[tokio::test(start_paused = true)]
async fn a_store_that_answers_through_futures_gives_the_same_results() {
    let up = Upstream::default();
    up.delay(50);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(10))
        .key(key_fn(|r: &String| Some(r.clone())))
        .backend(RemoteBackend::default())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(up.service());
    let answers = join_all((0..100).map(|_| {
        let mut s = svc.clone();
        async move { call(&mut s, "k").await.unwrap() }
    }))
    .await;
    assert!(answers.iter().all(|a| a == "k#1"));
    assert_eq!(up.calls(), 1, "single flight across the slow path");
    tokio::time::sleep(Duration::from_millis(1)).await; // the put runs in the background
    let mut s = svc.clone();
    assert_eq!(
        call(&mut s, "k").await.unwrap(),
        "k#1",
        "a hit through the slow path"
    );
    assert_eq!(up.calls(), 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(call(&mut s, "k").await.unwrap(), "k#1", "stale");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        call(&mut s, "k").await.unwrap(),
        "k#2",
        "refreshed in the background"
    );
    handle.invalidate("k").await.unwrap();
    assert_eq!(
        call(&mut s, "k").await.unwrap(),
        "k#3",
        "invalidated through the future"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_never_fails_a_request() {
    let backend = RemoteBackend::default();
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .key(key_fn(|r: &String| Some(r.clone())))
        .backend(backend.clone())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(up.service());
    backend.down.store(true, Ordering::SeqCst);
    for i in 1..=3 {
        assert_eq!(
            call(&mut svc, "k").await.unwrap(),
            format!("k#{i}"),
            "served without the store"
        );
    }
    assert!(
        handle.invalidate("k").await.is_err(),
        "the invalidation reports the failure"
    );
    backend.down.store(false, Ordering::SeqCst);
    call(&mut svc, "k").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        call(&mut svc, "k").await.unwrap(),
        "k#4",
        "back in use once it recovers"
    );
}

/// A store holding one entry whose `content-length` does not match its body.
struct Corrupt;

impl CacheStore<CachedResponse> for Corrupt {
    type Future<T: Send + 'static> = std::future::Pending<Result<T, BackendError>>;

    fn get(
        &self,
        _: &CacheKey,
    ) -> StoreOp<Found<CachedResponse>, Self::Future<Found<CachedResponse>>> {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-length", HeaderValue::from_static("999"));
        let value = CachedResponse::new(
            StatusCode::OK,
            http::Version::HTTP_11,
            headers,
            Bytes::from_static(b"short"),
        );
        let timing = Timing::new(
            tokio::time::Instant::now(),
            Lifetimes::ttl(Duration::from_secs(60)),
        );
        StoreOp::Ready(Ok(Some(CacheEntry::new(value, timing, 100))))
    }

    fn put(&self, _: CacheKey, _: CacheEntry<CachedResponse>) -> StoreOp<(), Self::Future<()>> {
        StoreOp::Ready(Ok(()))
    }

    fn invalidate(&self, _: &CacheKey) -> StoreOp<(), Self::Future<()>> {
        StoreOp::Ready(Ok(()))
    }

    fn invalidate_prefix(&self, _: &[u8]) -> StoreOp<(), Self::Future<()>> {
        StoreOp::Ready(Ok(()))
    }

    fn clear(&self) -> StoreOp<(), Self::Future<()>> {
        StoreOp::Ready(Ok(()))
    }
}

struct CorruptBackend;

impl CacheBackend<CachedResponse> for CorruptBackend {
    type Store = Corrupt;

    fn cache_store(&self, _: &CacheSpec) -> Result<Corrupt, tower_rampart::ConfigError> {
        Ok(Corrupt)
    }
}

#[tokio::test(start_paused = true)]
async fn an_entry_that_cannot_be_replayed_is_a_miss_not_a_panic() {
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(10))
        .backend(CorruptBackend)
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(b"origin"))))
    }));
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(res.headers()["x-cache"], "MISS");
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "origin"
    );
}

/// What another replica does while this one is between two calls to the store.
type Meanwhile = Box<dyn FnOnce(&SharedBackend) + Send>;

/// One store shared by several layers (replicas of a service), with a fill lock that behaves
/// like the Redis store's lock script (`SET key token NX PX hold`, answering a fresh entry
/// instead unless forced, in the same step), and a delete-if-owner unlock.
#[derive(Clone, Default)]
struct SharedBackend {
    store: Arc<std::sync::OnceLock<Arc<MemoryCacheStore<String>>>>,
    locks: Arc<std::sync::Mutex<std::collections::HashMap<CacheKey, (u64, tokio::time::Instant)>>>,
    next_token: Arc<std::sync::atomic::AtomicU64>,
    /// Run at the start of the next lock request (once): what another replica did meanwhile.
    before_next_lock: Arc<std::sync::Mutex<Option<Meanwhile>>>,
}

impl CacheBackend<String> for SharedBackend {
    type Store = SharedBackend;

    fn cache_store(&self, spec: &CacheSpec) -> Result<SharedBackend, tower_rampart::ConfigError> {
        let store = MemoryBackend::new().cache_store(spec)?;
        let _ = self.store.set(Arc::new(store));
        Ok(self.clone())
    }
}

impl SharedBackend {
    fn inner(&self) -> &MemoryCacheStore<String> {
        self.store.get().expect("built")
    }

    fn held(&self) -> usize {
        self.locks.lock().unwrap().len()
    }
}

impl CacheStore<String> for SharedBackend {
    type Future<T: Send + 'static> = BoxFut<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<String>, BoxFut<Found<String>>> {
        match self.inner().get(key) {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(_) => unreachable!(),
        }
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<String>) -> StoreOp<(), BoxFut<()>> {
        match self.inner().put(key, entry) {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(_) => unreachable!(),
        }
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), BoxFut<()>> {
        match self.inner().invalidate(key) {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(_) => unreachable!(),
        }
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), BoxFut<()>> {
        match self.inner().invalidate_prefix(prefix) {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(_) => unreachable!(),
        }
    }

    fn clear(&self) -> StoreOp<(), BoxFut<()>> {
        match self.inner().clear() {
            StoreOp::Ready(r) => StoreOp::Ready(r),
            StoreOp::Pending(_) => unreachable!(),
        }
    }

    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<String>, BoxFut<FillLock<String>>> {
        // Answered through a future, as a network store would.
        let this = self.clone();
        let key = key.clone();
        StoreOp::Pending(Box::pin(async move {
            tokio::task::yield_now().await;
            let meanwhile = this.before_next_lock.lock().unwrap().take();
            if let Some(meanwhile) = meanwhile {
                meanwhile(&this);
            }
            let now = tokio::time::Instant::now();
            let mut locks = this.locks.lock().unwrap();
            if mode == LockMode::UnlessFresh
                && let StoreOp::Ready(Ok(Some(entry))) = this.inner().get(&key)
                && entry.freshness(now) == Freshness::Fresh
            {
                return Ok(FillLock::Fresh(entry));
            }
            match locks.get(&key) {
                Some((_, until)) if *until > now => Ok(FillLock::HeldElsewhere),
                _ => {
                    let token = this.next_token.fetch_add(1, Ordering::SeqCst) + 1;
                    locks.insert(key, (token, now + hold));
                    Ok(FillLock::Acquired(token))
                }
            }
        }))
    }

    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), BoxFut<()>> {
        let mut locks = self.locks.lock().unwrap();
        if locks.get(key).is_some_and(|(t, _)| *t == token) {
            locks.remove(key);
        }
        StoreOp::Ready(Ok(()))
    }
}

fn replica(
    backend: &SharedBackend,
    up: &Upstream,
) -> tower::util::BoxCloneSyncService<String, String, tower_rampart::BoxError> {
    let svc = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|r: &String| Some(r.clone())))
        .fill_lock(Duration::from_secs(10), Duration::from_secs(1))
        .backend(backend.clone())
        .build()
        .unwrap()
        .layer(up.service());
    tower::util::BoxCloneSyncService::new(svc)
}

#[tokio::test(start_paused = true)]
async fn four_replicas_sharing_a_store_make_one_call_for_a_stampede() {
    let backend = SharedBackend::default();
    let up = Upstream::default();
    up.delay(100);
    let replicas: Vec<_> = (0..4).map(|_| replica(&backend, &up)).collect();
    let answers = join_all((0..1000).map(|i| {
        let mut s = replicas[i % 4].clone();
        async move { call(&mut s, "k").await.unwrap() }
    }))
    .await;
    assert_eq!(
        up.calls(),
        1,
        "one call across four replicas and 1,000 requests"
    );
    assert!(answers.iter().all(|a| a == "k#1"));
    assert_eq!(backend.held(), 0, "the lock was released after the fill");
}

#[tokio::test(start_paused = true)]
async fn a_replica_takes_over_the_fill_when_the_lock_holder_stores_nothing() {
    let backend = SharedBackend::default();
    let up = Upstream::default();
    up.delay(100);
    up.fail(true);
    let mut a = replica(&backend, &up);
    let mut b = replica(&backend, &up);
    let first = tokio::spawn(async move { call(&mut a, "k").await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // B finds the lock held by A...
    let second = tokio::spawn(async move { call(&mut b, "k").await });
    // ...whose call fails and stores nothing, releasing the lock...
    assert!(first.await.unwrap().is_err());
    let released = tokio::time::Instant::now();
    up.fail(false);
    up.delay(0);
    // ...so B takes the lock at its next check (not at the end of its 1 s wait) and fills.
    assert_eq!(second.await.unwrap().unwrap(), "k#2");
    let waited = released.elapsed();
    assert!(waited <= Duration::from_millis(50), "{waited:?}");
    assert_eq!(up.calls(), 2);
    assert_eq!(backend.held(), 0, "B released the lock after storing");
    let mut c = replica(&backend, &up);
    assert_eq!(
        call(&mut c, "k").await.unwrap(),
        "k#2",
        "B's answer was stored"
    );
    assert_eq!(up.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_lock_freed_by_a_holder_that_just_stored_is_not_a_second_fill() {
    let backend = SharedBackend::default();
    let up = Upstream::default();
    let mut b = replica(&backend, &up);
    let key = CacheKey::from("k");
    // Another replica holds the lock, filling "k"...
    backend.locks.lock().unwrap().insert(
        key.clone(),
        (999, tokio::time::Instant::now() + Duration::from_secs(10)),
    );
    let waiting = tokio::spawn(async move { call(&mut b, "k").await });
    // ...and, once B is waiting, stores its entry and releases the lock between B's check for
    // the entry and B's next try of the lock: the lock B then takes is free because the entry is
    // there, not because the fill failed.
    tokio::time::sleep(Duration::from_millis(1)).await;
    *backend.before_next_lock.lock().unwrap() = Some(Box::new(move |backend: &SharedBackend| {
        let timing = Timing::new(
            tokio::time::Instant::now(),
            Lifetimes::ttl(Duration::from_secs(60)),
        );
        let entry = CacheEntry::new("k#other".to_owned(), timing, 16);
        assert!(matches!(
            backend.inner().put(key.clone(), entry),
            StoreOp::Ready(Ok(()))
        ));
        backend.locks.lock().unwrap().remove(&key);
    }));
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        "k#other",
        "B serves the entry the holder stored"
    );
    assert_eq!(up.calls(), 0, "and makes no call of its own");
    assert_eq!(backend.held(), 0, "B gave back the lock it took");
}

#[tokio::test(start_paused = true)]
async fn replicas_call_through_after_their_wait_when_the_lock_holder_is_slow() {
    let backend = SharedBackend::default();
    let up = Upstream::default();
    up.delay(3_000);
    let mut a = replica(&backend, &up);
    let mut b = replica(&backend, &up);
    let first = tokio::spawn(async move { call(&mut a, "k").await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let started = tokio::time::Instant::now();
    let second = tokio::spawn(async move { call(&mut b, "k").await });
    // A's call takes 3 s; B waits its bound (1 s), then calls through itself.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(up.calls(), 2, "B called through after its wait");
    assert_eq!(second.await.unwrap().unwrap(), "k#2");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(4_000) && waited <= Duration::from_millis(4_100),
        "B's own call took 3 s after 1 s of waiting: {waited:?}"
    );
    assert_eq!(first.await.unwrap().unwrap(), "k#1");
    // Only the lock's holder stored: the entry is A's.
    let mut c = replica(&backend, &up);
    assert_eq!(call(&mut c, "k").await.unwrap(), "k#1");
    assert_eq!(up.calls(), 2);
    assert_eq!(backend.held(), 0);
}

/// A store whose writes complete through futures, recording the order in which writes and lock
/// releases reach it: a fill's release must never overtake its write.
#[derive(Clone, Default)]
struct OrderedBackend {
    shared: SharedBackend,
    log: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl CacheBackend<String> for OrderedBackend {
    type Store = OrderedBackend;

    fn cache_store(&self, spec: &CacheSpec) -> Result<OrderedBackend, tower_rampart::ConfigError> {
        self.shared.cache_store(spec)?;
        Ok(self.clone())
    }
}

impl CacheStore<String> for OrderedBackend {
    type Future<T: Send + 'static> = BoxFut<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<String>, BoxFut<Found<String>>> {
        self.shared.get(key)
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<String>) -> StoreOp<(), BoxFut<()>> {
        let this = self.clone();
        StoreOp::Pending(Box::pin(async move {
            // A slow write: several turns of the scheduler before it lands.
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            this.log.lock().unwrap().push("put");
            match this.shared.put(key, entry) {
                StoreOp::Ready(r) => r,
                StoreOp::Pending(_) => unreachable!(),
            }
        }))
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), BoxFut<()>> {
        self.shared.invalidate(key)
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), BoxFut<()>> {
        self.shared.invalidate_prefix(prefix)
    }

    fn clear(&self) -> StoreOp<(), BoxFut<()>> {
        self.shared.clear()
    }

    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<String>, BoxFut<FillLock<String>>> {
        self.shared.lock(key, hold, mode)
    }

    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), BoxFut<()>> {
        let this = self.clone();
        let key = key.clone();
        StoreOp::Pending(Box::pin(async move {
            this.log.lock().unwrap().push("unlock");
            match this.shared.unlock(&key, token) {
                StoreOp::Ready(r) => r,
                StoreOp::Pending(_) => unreachable!(),
            }
        }))
    }
}

/// Regression (#8): with a store that writes through futures, the fill lock's release reached
/// the store before the write, so another replica could find the lock free and no entry, and
/// fill the key a second time.
#[tokio::test(start_paused = true)]
async fn a_fill_releases_its_lock_only_after_its_write_has_landed() {
    let backend = OrderedBackend::default();
    let up = Upstream::default();
    let mut a = tower::util::BoxCloneSyncService::new(
        CacheLayer::builder()
            .ttl(Duration::from_secs(60))
            .key(key_fn(|r: &String| Some(r.clone())))
            .backend(backend.clone())
            .build()
            .unwrap()
            .layer(up.service()),
    );
    for key in ["k1", "k2", "k3"] {
        call(&mut a, key).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(
        *backend.log.lock().unwrap(),
        ["put", "unlock", "put", "unlock", "put", "unlock"]
    );
    assert_eq!(backend.shared.held(), 0);
}

/// An entry for `key` as another replica's fill stores it: fresh for a minute from now.
fn filled_elsewhere(store: &MemoryCacheStore<String>, key: &CacheKey, value: &str) {
    let timing = Timing::new(
        tokio::time::Instant::now(),
        Lifetimes::ttl(Duration::from_secs(60)),
    );
    let entry = CacheEntry::new(value.to_owned(), timing, value.len());
    assert!(matches!(
        store.put(key.clone(), entry),
        StoreOp::Ready(Ok(()))
    ));
}

/// Regression (#14): a replica's first miss looks the key up and then asks for the fill lock, two
/// round trips. Another replica that stored its entry and released its lock between the two left
/// the lock free, and this one took it and called its upstream for an entry already there. The
/// lock now looks for a fresh entry in the same step, and answers it.
#[tokio::test(start_paused = true)]
async fn an_entry_stored_between_a_first_miss_and_its_lock_is_served_not_filled_again() {
    let backend = SharedBackend::default();
    let up = Upstream::default();
    let mut b = replica(&backend, &up);
    let key = CacheKey::from("k");
    // B's lookup finds nothing; before its lock request arrives, another replica (which held the
    // lock through its whole fill, between B's two round trips) stores "k" and releases the lock.
    *backend.before_next_lock.lock().unwrap() = Some(Box::new(move |backend: &SharedBackend| {
        filled_elsewhere(backend.inner(), &key, "k#other");
    }));
    assert_eq!(
        call(&mut b, "k").await.unwrap(),
        "k#other",
        "B serves the entry its lock request found"
    );
    assert_eq!(up.calls(), 0, "and makes no call of its own");
    assert_eq!(backend.held(), 0, "nor takes the lock");
    assert!(
        backend.before_next_lock.lock().unwrap().is_none(),
        "the other replica's fill ran between B's lookup and B's lock"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stale_entry_is_still_refreshed_under_the_lock() {
    let backend = SharedBackend::default();
    let up = Upstream::default();
    let mut a = tower::util::BoxCloneSyncService::new(
        CacheLayer::builder()
            .ttl(Duration::from_secs(10))
            .stale_while_revalidate(Duration::from_secs(60))
            .key(key_fn(|r: &String| Some(r.clone())))
            .fill_lock(Duration::from_secs(10), Duration::from_secs(1))
            .backend(backend.clone())
            .build()
            .unwrap()
            .layer(up.service()),
    );
    assert_eq!(call(&mut a, "k").await.unwrap(), "k#1");
    tokio::time::advance(Duration::from_secs(11)).await;
    // Stale: served at once, and refreshed in the background; the lock request finds the entry
    // stored but not fresh, so it takes the lock.
    assert_eq!(call(&mut a, "k").await.unwrap(), "k#1");
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(up.calls(), 2, "refreshed");
    assert_eq!(call(&mut a, "k").await.unwrap(), "k#2");
    assert_eq!(backend.held(), 0);
    // A forced lock is taken over a fresh entry; an unforced one answers the entry.
    let key = CacheKey::from("k");
    let lock = |mode| match backend.lock(&key, Duration::from_secs(10), mode) {
        StoreOp::Pending(f) => f,
        StoreOp::Ready(_) => unreachable!("answered through a future"),
    };
    assert!(matches!(
        lock(LockMode::UnlessFresh).await.unwrap(),
        FillLock::Fresh(e) if e.value() == "k#2"
    ));
    assert!(matches!(
        lock(LockMode::Always).await.unwrap(),
        FillLock::Acquired(_)
    ));
}

/// What another request of the same process does right after this one's lookup.
type AfterLookup = Box<dyn FnOnce(&MemoryCacheStore<String>) + Send>;

/// The in-memory store, with something to do right after the next lookup.
#[derive(Clone, Default)]
struct RacingBackend {
    store: Arc<std::sync::OnceLock<Arc<MemoryCacheStore<String>>>>,
    after_next_lookup: Arc<std::sync::Mutex<Option<AfterLookup>>>,
}

impl CacheBackend<String> for RacingBackend {
    type Store = RacingBackend;

    fn cache_store(&self, spec: &CacheSpec) -> Result<RacingBackend, tower_rampart::ConfigError> {
        let _ = self
            .store
            .set(Arc::new(MemoryBackend::new().cache_store(spec)?));
        Ok(self.clone())
    }
}

impl RacingBackend {
    fn inner(&self) -> &MemoryCacheStore<String> {
        self.store.get().expect("built")
    }
}

type Never<T> = std::future::Pending<Result<T, BackendError>>;

impl CacheStore<String> for RacingBackend {
    type Future<T: Send + 'static> = Never<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<String>, Never<Found<String>>> {
        self.get_at(key, tokio::time::Instant::now())
    }

    fn get_at(
        &self,
        key: &CacheKey,
        now: tokio::time::Instant,
    ) -> StoreOp<Found<String>, Never<Found<String>>> {
        let found = self.inner().get_at(key, now);
        let meanwhile = self.after_next_lookup.lock().unwrap().take();
        if let Some(meanwhile) = meanwhile {
            meanwhile(self.inner());
        }
        found
    }

    fn put(&self, key: CacheKey, entry: CacheEntry<String>) -> StoreOp<(), Never<()>> {
        self.inner().put(key, entry)
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), Never<()>> {
        self.inner().invalidate(key)
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), Never<()>> {
        self.inner().invalidate_prefix(prefix)
    }

    fn clear(&self) -> StoreOp<(), Never<()>> {
        self.inner().clear()
    }

    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<String>, Never<FillLock<String>>> {
        self.inner().lock(key, hold, mode)
    }
}

/// Regression (#14), within one process: a request's lookup and its joining the key's flight are
/// two steps. Another request that stored the entry and ended its flight between them left this
/// one to lead a new flight and call the upstream again; the in-memory store's lock answers the
/// fresh entry instead, as a shared store's does.
#[tokio::test(start_paused = true)]
async fn a_miss_serves_the_entry_another_request_stored_since_its_lookup() {
    let backend = RacingBackend::default();
    let up = Upstream::default();
    let mut svc = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|r: &String| Some(r.clone())))
        .backend(backend.clone())
        .build()
        .unwrap()
        .layer(up.service());
    *backend.after_next_lookup.lock().unwrap() =
        Some(Box::new(|store: &MemoryCacheStore<String>| {
            filled_elsewhere(store, &CacheKey::from("k"), "k#other");
        }));
    assert_eq!(call(&mut svc, "k").await.unwrap(), "k#other");
    assert_eq!(up.calls(), 0, "no second call for an entry already stored");
    // A forced lock takes no entry; the next miss on another key fills as ever.
    assert!(matches!(
        backend.lock(
            &CacheKey::from("k"),
            Duration::from_secs(1),
            LockMode::Always
        ),
        StoreOp::Ready(Ok(FillLock::NotShared))
    ));
    assert_eq!(call(&mut svc, "j").await.unwrap(), "j#1");
    assert_eq!(up.calls(), 1);
}
