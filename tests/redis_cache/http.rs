//! Real HTTP: an axum app served by two replicas (two routers on two loopback ports, each with its
//! own connection) sharing one Redis. A summary fetched through one replica (`MISS`) is a `HIT` on
//! the other; a write on either invalidates it for both (invalidate on write).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use http::StatusCode;
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::RedisCacheStore;
use tower_rampart::cache::{
    CacheHandle, CacheKey, CacheLayer, CacheStore, CachedResponse, HttpKey, StoreOp,
};

use crate::common::http::serve;
use crate::common::redis::RedisServer;
use crate::support::unique_prefix;

#[derive(Clone)]
struct App {
    /// Summaries computed (calls that reached the handler).
    computed: Arc<AtomicUsize>,
    /// Metrics stored (shared by the replicas, as a database would be).
    stored: Arc<AtomicUsize>,
    cache: CacheHandle,
}

#[derive(serde::Deserialize)]
struct Summary {
    r#type: String,
}

async fn summary(State(app): State<App>, Query(q): Query<Summary>) -> String {
    app.computed.fetch_add(1, Ordering::SeqCst);
    format!(
        r#"{{"type":"{}","count":{}}}"#,
        q.r#type,
        app.stored.load(Ordering::SeqCst)
    )
}

async fn submit(State(app): State<App>) -> StatusCode {
    app.stored.fetch_add(1, Ordering::SeqCst);
    // Invalidate on write, before answering: every replica's next summary is fresh.
    app.cache
        .invalidate_prefix("GET /api/metrics/summary")
        .await
        .expect("redis is up");
    StatusCode::CREATED
}

async fn replica(
    url: &str,
    prefix: &str,
    computed: &Arc<AtomicUsize>,
    stored: &Arc<AtomicUsize>,
) -> (Router, RedisCacheStore<CachedResponse>) {
    let redis = RedisBackend::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_secs(5));
    let cache = CacheLayer::builder()
        .http()
        .name("summaries")
        .ttl(Duration::from_secs(300))
        .backend(redis)
        .build()
        .unwrap();
    let store = cache.store().clone();
    let app = App {
        computed: Arc::clone(computed),
        stored: Arc::clone(stored),
        cache: cache.handle(),
    };
    let router = Router::new()
        .route("/api/metrics/summary", get(summary).route_layer(cache))
        .route("/api/metrics", axum::routing::post(submit))
        .with_state(app);
    (router, store)
}

async fn until_stored(store: &RedisCacheStore<CachedResponse>, key: &str) {
    for _ in 0..500 {
        let found = match store.get(&CacheKey::from(key)) {
            StoreOp::Ready(f) => f,
            StoreOp::Pending(f) => f.await,
        };
        if found.unwrap().is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no entry for {key:?} after 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_on_one_replica_is_a_hit_on_the_other_and_a_write_invalidates_both() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("http-cache");
    let computed = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(AtomicUsize::new(0));
    let (a, store) = replica(&server.url(), &prefix, &computed, &stored).await;
    let (b, _) = replica(&server.url(), &prefix, &computed, &stored).await;
    let (a, b) = (serve(a, false).await, serve(b, false).await);
    let path = "/api/metrics/summary?type=cpu_usage";
    let key = format!("GET {path}");

    let first = a.send("GET", path, &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-cache"], "MISS");
    assert_eq!(first.body, r#"{"type":"cpu_usage","count":0}"#);
    until_stored(&store, &key).await;

    let second = b.send("GET", path, &[]).await;
    assert_eq!(
        second.headers["x-cache"], "HIT",
        "filled by the other replica"
    );
    assert_eq!(second.body, first.body);
    assert!(second.headers.contains_key("age"));
    let again = a.send("GET", path, &[]).await;
    assert_eq!(again.headers["x-cache"], "HIT");
    assert_eq!(computed.load(Ordering::SeqCst), 1);

    // A write through replica B: the next summary on replica A is fresh.
    let post = b.send("POST", "/api/metrics", &[]).await;
    assert_eq!(post.status, StatusCode::CREATED);
    let fresh = a.send("GET", path, &[]).await;
    assert_eq!(fresh.headers["x-cache"], "MISS");
    assert_eq!(fresh.body, r#"{"type":"cpu_usage","count":1}"#);
    until_stored(&store, &key).await;
    let hit = b.send("GET", path, &[]).await;
    assert_eq!(hit.headers["x-cache"], "HIT");
    assert_eq!(hit.body, fresh.body);
    assert_eq!(computed.load(Ordering::SeqCst), 2);
}

/// A hit on an entry decoded from Redis (which carries both the `x-cache` and the `age`
/// placeholders, set in place on replay) answers exactly the fields its layer sends: both, one, or
/// neither, and the stored response's own headers once each.
#[tokio::test]
async fn a_redis_hit_sends_only_the_cache_fields_its_layer_sends() {
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceExt};

    let Some(server) = RedisServer::start() else {
        return;
    };
    for (x_cache, age) in [(true, true), (false, true), (true, false), (false, false)] {
        let redis = RedisBackend::connect(&server.url())
            .await
            .unwrap()
            .prefix(unique_prefix("fields"))
            .timeout(Duration::from_secs(5));
        let layer = CacheLayer::builder()
            .http()
            .name("fields")
            .ttl(Duration::from_secs(300))
            .x_cache_header(x_cache)
            .age_header(age)
            .backend(redis)
            .build()
            .unwrap();
        let store = layer.store().clone();
        let svc = layer.layer(tower::service_fn(|_: Request<()>| async {
            let res = Response::builder()
                .header("content-type", "application/json")
                .header("etag", "\"v1\"")
                .body(Full::new(bytes::Bytes::from_static(b"{\"n\":1}")))
                .unwrap();
            Ok::<_, std::convert::Infallible>(res)
        }));
        let get = || Request::get("/summary").body(()).unwrap();
        svc.clone().oneshot(get()).await.unwrap();
        // The miss's write lands in the background: wait for it (bounded).
        let key = CacheKey::from("GET /summary");
        let mut stored = false;
        for _ in 0..500 {
            if let StoreOp::Pending(f) = store.get(&key)
                && f.await.unwrap().is_some()
            {
                stored = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(stored, "the miss was stored in redis");
        // Twice: the first hit decodes the entry, the second reuses the remembered one.
        for _ in 0..2 {
            let res = svc.clone().oneshot(get()).await.unwrap();
            let h = res.headers();
            let case = format!("x_cache_header({x_cache}), age_header({age})");
            assert_eq!(
                h.get_all("x-cache").iter().collect::<Vec<_>>(),
                if x_cache { vec!["HIT"] } else { vec![] },
                "{case}"
            );
            assert_eq!(h.get_all("age").iter().count(), usize::from(age), "{case}");
            assert_eq!(h.get_all("content-type").iter().count(), 1, "{case}");
            assert_eq!(h["etag"], "\"v1\"", "{case}");
            assert_eq!(
                h.len(),
                2 + usize::from(x_cache) + usize::from(age),
                "{case}"
            );
            let body = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&body[..], b"{\"n\":1}", "{case}");
        }
    }
}

/// A replica of an app whose `/items/{id}` is cached in Redis and changed by `PUT`; its cache's
/// `StoreFailed` events are counted in `failed` (op `invalidate` only).
async fn items_replica(
    url: &str,
    prefix: &str,
    version: &Arc<AtomicUsize>,
    failed: &Arc<AtomicUsize>,
) -> (Router, RedisCacheStore<CachedResponse>) {
    items_replica_keyed(url, prefix, version, failed, HttpKey::new()).await
}

/// [`items_replica`] with its own cache key.
async fn items_replica_keyed(
    url: &str,
    prefix: &str,
    version: &Arc<AtomicUsize>,
    failed: &Arc<AtomicUsize>,
    key: HttpKey,
) -> (Router, RedisCacheStore<CachedResponse>) {
    use axum::extract::Path;
    use tower_rampart::cache::CacheEvent;
    let redis = RedisBackend::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_millis(300));
    let counted = Arc::clone(failed);
    let cache = CacheLayer::builder()
        .http()
        .key(key)
        .name("items")
        .ttl(Duration::from_secs(300))
        .on_event(move |e: &CacheEvent| {
            if let CacheEvent::StoreFailed {
                op: "invalidate", ..
            } = e
            {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .backend(redis)
        .build()
        .unwrap();
    let store = cache.store().clone();
    let (read, write) = (Arc::clone(version), Arc::clone(version));
    let router = Router::new().route(
        "/items/{id}",
        get(move |Path(id): Path<String>| {
            let v = read.load(Ordering::SeqCst);
            async move { format!("{id} v{v}") }
        })
        .put(move || {
            write.fetch_add(1, Ordering::SeqCst);
            async { StatusCode::NO_CONTENT }
        })
        .route_layer(cache),
    );
    (router, store)
}

/// RFC 9111 §4.4 with a shared store: a `PUT` answered by one replica has invalidated the
/// resource in Redis before it is answered, so the other replica's next `GET` is fetched again.
/// With Redis gone, the write is still answered (it happened), and the failed invalidation is
/// reported as a `StoreFailed` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_invalidates_the_resource_for_every_replica() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("http-write");
    let version = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let (a, store) = items_replica(&server.url(), &prefix, &version, &failed).await;
    let (b, _) = items_replica(&server.url(), &prefix, &version, &failed).await;
    let (a, b) = (serve(a, false).await, serve(b, false).await);

    assert_eq!(
        a.send("GET", "/items/1", &[]).await.headers["x-cache"],
        "MISS"
    );
    until_stored(&store, "GET /items/1").await;
    let hit = b.send("GET", "/items/1", &[]).await;
    assert_eq!(hit.headers["x-cache"], "HIT", "filled by the other replica");
    assert_eq!(hit.body, "1 v0");

    let put = b.send("PUT", "/items/1", &[]).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    let fresh = a.send("GET", "/items/1", &[]).await;
    assert_eq!(fresh.headers["x-cache"], "MISS", "invalidated in redis");
    assert_eq!(fresh.body, "1 v1");
    assert_eq!(failed.load(Ordering::SeqCst), 0);

    server.kill();
    let put = a.send("PUT", "/items/1", &[]).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT, "the write is answered");
    assert!(
        failed.load(Ordering::SeqCst) >= 1,
        "the failed invalidation is reported"
    );
}

/// A write's invalidation in Redis takes several round trips (here: every script answered
/// `NOSCRIPT` first, as after a Redis restart). It ran only while the write's answer was awaited:
/// a client that went away (or an outer timeout) right after the write left the resource's old
/// entry in Redis for every replica until its TTL. It now runs to the end on the runtime.
///
/// On one thread, so that nothing but this test's own polls can run until it yields: the first
/// poll of the write's answer cannot have finished the invalidation (on two workers, a loaded
/// machine could preempt the test while the other worker finished it, and there was then nothing
/// to drop).
#[tokio::test(flavor = "current_thread")]
async fn a_writes_invalidation_completes_when_its_answer_is_dropped() {
    use axum::body::Body;
    use tower::ServiceExt;
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("http-write-drop");
    let version = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    // Keyed on `accept`: the write's invalidation includes the variants' prefix, a range script
    // (so, after `SCRIPT FLUSH`, more than one round trip).
    let (app, store) = items_replica_keyed(
        &server.url(),
        &prefix,
        &version,
        &failed,
        HttpKey::new().header(http::header::ACCEPT),
    )
    .await;
    let request = |method: &str| {
        http::Request::builder()
            .method(method)
            .uri("/items/1")
            .body(Body::empty())
            .unwrap()
    };
    let first = app.clone().oneshot(request("GET")).await.unwrap();
    assert_eq!(first.headers()["x-cache"], "MISS");
    let variant = "GET /items/1\naccept";
    until_stored(&store, variant).await;

    assert_eq!(server.command("SCRIPT FLUSH"), "+OK");
    // Polled once (the handler answers at once, the invalidation starts), then dropped.
    let dropped = tokio::time::timeout(Duration::ZERO, app.clone().oneshot(request("PUT"))).await;
    assert!(
        dropped.is_err(),
        "the write's answer was still waiting for redis"
    );
    assert_eq!(version.load(Ordering::SeqCst), 1, "the write happened");

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let found = match store.get(&CacheKey::from(variant)) {
            StoreOp::Ready(f) => f,
            StoreOp::Pending(f) => f.await,
        };
        if found.unwrap().is_none() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old variant is still in redis 5 s after the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed.load(Ordering::SeqCst), 0);
}

/// A reload waiting on another replica's reload whose call fails takes the fill lock once it is
/// free and stores its own answer: it used to ask for the lock "unless fresh", get the old entry
/// (still fresh) each time, wait out the whole lock wait and call through without storing, the old
/// answer left in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_whose_other_fill_fails_takes_the_lock_and_stores() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The second call (the first reload) is slow and fails: not stored.
    let reloads = two_reloads(&server, "reload-fails", |n| {
        if n == 2 {
            (
                Duration::from_millis(300),
                StatusCode::INTERNAL_SERVER_ERROR,
            )
        } else {
            (Duration::ZERO, StatusCode::OK)
        }
    })
    .await;
    assert_eq!(reloads.first.body, "call 2");
    assert_eq!(reloads.first.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(reloads.second.body, "call 3");
    assert!(
        reloads.took < Duration::from_secs(3),
        "the reload waited out the lock wait: {:?}",
        reloads.took
    );
    // Its answer was stored: a plain request gets it, not the old one.
    assert_eq!(reloads.one.send("GET", "/doc", &[]).await.body, "call 3");
}

/// What [`two_reloads`] saw.
struct Reloads {
    first: crate::common::http::Reply,
    second: crate::common::http::Reply,
    /// How long the two reloads took together.
    took: Duration,
    /// The first replica, still serving.
    one: crate::common::http::Served,
    /// The app's calls, both replicas'.
    calls: usize,
}

/// Two replicas of an app serving `/doc` (its n-th call answers `call n`, after the delay and
/// with the status `call(n)` gives) through one HTTP cache on `server` under a fresh prefix: a
/// plain request on the first stores `call 1`, then a reload (`Cache-Control: no-cache`) on the
/// first and, 100 ms later, one on the second.
async fn two_reloads(
    server: &RedisServer,
    what: &str,
    call: fn(usize) -> (Duration, StatusCode),
) -> Reloads {
    let prefix = unique_prefix(what);
    let calls = Arc::new(AtomicUsize::new(0));
    let replica = || {
        let calls = Arc::clone(&calls);
        let prefix = prefix.clone();
        let url = server.url();
        async move {
            let (cache, store) = http_cache(&url, &prefix).await;
            let app = Router::new().route(
                "/doc",
                get(move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    let (delay, status) = call(n);
                    async move {
                        tokio::time::sleep(delay).await;
                        (status, format!("call {n}"))
                    }
                })
                .route_layer(cache),
            );
            (serve(app, false).await, store)
        }
    };
    let (one, store) = replica().await;
    let (two, _) = replica().await;
    assert_eq!(one.send("GET", "/doc", &[]).await.body, "call 1");
    until_stored(&store, "GET /doc").await;
    let reload = [("cache-control", "no-cache")];
    let started = std::time::Instant::now();
    let (first, second) = tokio::join!(one.send("GET", "/doc", &reload), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        two.send("GET", "/doc", &reload).await
    });
    Reloads {
        first,
        second,
        took: started.elapsed(),
        one,
        calls: calls.load(Ordering::SeqCst),
    }
}

/// An HTTP cache on the Redis at `url` under `prefix` (300 s TTL), and its store: replicas of one
/// app share a prefix.
async fn http_cache(
    url: &str,
    prefix: &str,
) -> (
    CacheLayer<
        tower_rampart::cache::HttpKey,
        RedisCacheStore<CachedResponse>,
        tower_rampart::cache::HttpMode,
    >,
    RedisCacheStore<CachedResponse>,
) {
    let redis = RedisBackend::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_secs(5));
    let cache = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(300))
        .backend(redis)
        .build()
        .unwrap();
    let store = cache.store().clone();
    (cache, store)
}

/// A conditional request answered from Redis: `304` when its `If-None-Match` names the stored
/// `ETag` (the lookup that waits for Redis evaluates it as the in-memory one does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_request_gets_304_from_the_redis_cache() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (cache, store) = http_cache(&server.url(), &unique_prefix("http-304")).await;
    let app = Router::new().route(
        "/doc",
        get(|| async { ([(http::header::ETAG, "\"v1\"")], "the document") }).route_layer(cache),
    );
    let served = serve(app, false).await;
    assert_eq!(
        served.send("GET", "/doc", &[]).await.headers["x-cache"],
        "MISS"
    );
    until_stored(&store, "GET /doc").await;
    let r = served
        .send("GET", "/doc", &[("if-none-match", "\"v1\"")])
        .await;
    assert_eq!(r.status, StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers["x-cache"], "HIT");
    assert_eq!(r.headers["etag"], "\"v1\"");
    assert_eq!(r.body, "");
    let r = served
        .send("GET", "/doc", &[("if-none-match", "\"v0\"")])
        .await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "the document")
    );
}

/// A conditional request on one replica that waits for another replica's fill of its key (the
/// fill lock held there) got the whole `200` when the entry came, its validators taken off before
/// the wait; it now gets `304` when they match that entry, and the app is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_request_waiting_on_another_replicas_fill_gets_304() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("http-304-wait");
    let calls = Arc::new(AtomicUsize::new(0));
    let replica = || {
        let calls = Arc::clone(&calls);
        let (url, prefix) = (server.url(), prefix.clone());
        async move {
            let (cache, _) = http_cache(&url, &prefix).await;
            let app = Router::new().route(
                "/doc",
                get(move || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async {
                        tokio::time::sleep(Duration::from_millis(400)).await;
                        ([(http::header::ETAG, "\"v1\"")], "the document")
                    }
                })
                .route_layer(cache),
            );
            serve(app, false).await
        }
    };
    let (one, two) = (replica().await, replica().await);
    let (filled, waited) = tokio::join!(one.send("GET", "/doc", &[]), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        two.send("GET", "/doc", &[("if-none-match", "\"v1\"")])
            .await
    });
    assert_eq!(filled.body, "the document");
    assert_eq!(
        (waited.status, waited.body.as_str()),
        (StatusCode::NOT_MODIFIED, "")
    );
    assert_eq!(waited.headers["etag"], "\"v1\"");
    assert_eq!(
        waited.headers["x-cache"], "MISS",
        "it waited for the fill (a lookup after it would be a HIT)"
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the other replica's fill served it"
    );
}

/// A request's `only-if-cached` and `max-age` bound what a Redis hit serves, as in memory (the
/// lookup that waits for Redis carries them): nothing stored is a `504` with no call, a stored
/// answer older than `max-age` is fetched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_own_bounds_hold_for_a_redis_hit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let (cache, store) = http_cache(&server.url(), &unique_prefix("http-bounds")).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new().route(
        "/doc",
        get(move || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { format!("call {n}") }
        })
        .route_layer(cache),
    );
    let served = serve(app, false).await;
    let r = served
        .send("GET", "/doc", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "no call for only-if-cached"
    );
    assert_eq!(served.send("GET", "/doc", &[]).await.body, "call 1");
    until_stored(&store, "GET /doc").await;
    let r = served
        .send("GET", "/doc", &[("cache-control", "only-if-cached")])
        .await;
    assert_eq!(
        (r.headers["x-cache"].to_str().unwrap(), r.body.as_str()),
        ("HIT", "call 1")
    );
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let r = served
        .send("GET", "/doc", &[("cache-control", "max-age=1")])
        .await;
    assert_eq!(
        (r.headers["x-cache"].to_str().unwrap(), r.body.as_str()),
        ("MISS", "call 2")
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// A reload (`Cache-Control: no-cache`) on one replica while another replica's reload holds the
/// key's fill lock waits for that fill's new entry: it used to take the old entry, still fresh in
/// Redis, the very answer it asked not to be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waiting_on_another_replicas_fill_gets_the_new_answer() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The second call (the first reload) is slow: the other replica's reload comes while it holds
    // the fill lock.
    let reloads = two_reloads(&server, "reload", |n| {
        let delay = if n == 2 { 400 } else { 0 };
        (Duration::from_millis(delay), StatusCode::OK)
    })
    .await;
    assert_eq!(reloads.first.body, "call 2");
    assert_eq!(
        reloads.second.body, "call 2",
        "the new answer, not the one stored before"
    );
    assert_eq!(reloads.calls, 2, "one call for both reloads");
}
