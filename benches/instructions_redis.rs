//! The `redis*` rows of the instructions bench: the client side of a Redis rate-limit decision,
//! our store against a raw `EVALSHA` of the same script with the same arguments, 1 and 64 in
//! flight. Callgrind counts this process only (the `redis-server` it starts is not traced), so the
//! figures are what a decision costs the application's CPU, whatever the machine's load does to
//! the round trip's time.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/redis.rs"]
mod redis_server;

use std::hint::black_box;
use std::time::Duration;

use futures::future::join_all;
use tower_rampart::backend::redis::{RedisRateLimitStore, script_sha};
use tower_rampart::backend::{FailurePolicy, RedisBackend};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, RateLimitLayer, RateLimitStore, StoreLimits,
};

use self::redis_server::RedisServer;
use super::{HUGE, Run};

/// Whether the `redis*` rows can run here (they start their own `redis-server`).
pub(crate) fn available() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What each row drives.
struct Rig {
    rt: tokio::runtime::Runtime,
    store: RedisRateLimitStore<u32>,
    raw: redis::aio::ConnectionManager,
    args: [String; 2],
    // Stopped when the row is dropped.
    _server: RedisServer,
}

fn rig() -> Rig {
    let server = RedisServer::start()
        .expect("the redis rows need redis-server (apt-get install redis-server)");
    // One thread: every instruction of the client side runs on the thread callgrind counts.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (store, raw) = rt.block_on(async {
        let backend = RedisBackend::connect(&server.url())
            .await
            .expect("connect to the bench redis-server")
            .prefix("bench")
            .timeout(Duration::from_secs(1))
            // A decision Redis did not make fails the row rather than counting a fallback's cost.
            .failure_policy(FailurePolicy::Closed);
        let layer = RateLimitLayer::builder()
            .quota(HUGE)
            .key(key_fn(|k: &u32| Some(*k)))
            .backend(backend)
            .build()
            .expect("valid configuration");
        let client = redis::Client::open(server.url()).expect("a valid url");
        let raw = redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect to the bench redis-server");
        (layer.store().clone(), raw)
    });
    let emission = 3_600_000_000_000u64 / u64::from(u32::MAX);
    let args = [
        emission.to_string(),
        (emission * u64::from(u32::MAX)).to_string(),
    ];
    Rig {
        rt,
        store,
        raw,
        args,
        _server: server,
    }
}

async fn decide(store: &RedisRateLimitStore<u32>, key: u32) {
    let d = match store.check(&key, &Ask::new(store.limit_set())) {
        Check::Ready(r) => r,
        Check::Pending(f) => f.await,
    }
    .expect("no backend error while benchmarking");
    assert!(d.is_allowed());
}

async fn raw_evalsha(con: &redis::aio::ConnectionManager, key: &[u8], args: &[String; 2]) {
    let mut con = con.clone();
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script_sha(Algorithm::Gcra))
        .arg(1)
        .arg(key)
        .arg(&args[0])
        .arg(&args[1])
        .arg("") // Redis TIME
        .arg("0") // no minimum expiry
        .arg("1") // repair unreadable state, as the store does by default
        .arg("9007199254740991"); // not after (us): as the store, a bound far off
    let v: redis::Value = cmd.query_async(&mut con).await.expect("evalsha");
    black_box(v);
}

/// `n` decisions through our store, `inflight` at a time (each its own key).
pub(crate) fn store(inflight: u32) -> Run {
    let rig = rig();
    Box::new(move |n| {
        // The whole rig (a closure would capture only the fields it names, and drop the server).
        let rig = &rig;
        let mut left = n;
        while left > 0 {
            let batch = left.min(u64::from(inflight)) as u32;
            rig.rt
                .block_on(join_all((0..batch).map(|k| decide(&rig.store, 1_000 + k))));
            left -= u64::from(batch);
        }
    })
}

/// `n` raw `EVALSHA` calls of the same script with the store's arguments, `inflight` at a time.
pub(crate) fn raw(inflight: u32) -> Run {
    let rig = rig();
    let keys: Vec<Vec<u8>> = (0..inflight)
        .map(|k| rig.store.redis_key(&(1_000 + k)))
        .collect();
    // One decision through the store loads the script.
    rig.rt.block_on(decide(&rig.store, 0));
    Box::new(move |n| {
        let rig = &rig;
        let mut left = n;
        while left > 0 {
            let batch = left.min(u64::from(inflight)) as usize;
            rig.rt.block_on(join_all(
                keys[..batch]
                    .iter()
                    .map(|key| raw_evalsha(&rig.raw, key, &rig.args)),
            ));
            left -= batch as u64;
        }
    })
}

/// `n` decisions from throttle-kit's Redis backend (its own GCRA script through a
/// `MultiplexedConnection` of `redis` 0.25), `inflight` at a time, each on its own key: the peer
/// of the `rampart_store` rows, on the same kind of server. Its quota is one request per
/// millisecond with a burst of `u32::MAX` (its script works in whole milliseconds), so every call
/// is an admission made by Redis; it fails open on errors with `remaining` 0, which stops the
/// row.
pub(crate) fn throttle_kit(inflight: u32) -> Run {
    let server = RedisServer::start()
        .expect("the redis rows need redis-server (apt-get install redis-server)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let backend = rt.block_on(async {
        throttle_kit::RedisBackend::connect(&server.url())
            .await
            .expect("throttle-kit connects to the bench redis-server")
    });
    let quota = throttle_kit::Quota::from_parts(Duration::from_millis(1), u32::MAX);
    let keys: Vec<String> = (0..inflight).map(|k| format!("tk:{}", 1_000 + k)).collect();
    async fn decide(backend: &throttle_kit::RedisBackend, key: &str, quota: &throttle_kit::Quota) {
        use throttle_kit::RateLimitBackend;
        let r = backend.check(key, quota).await;
        assert!(
            r.allowed && r.remaining > 0,
            "throttle-kit's decision did not come from Redis"
        );
        black_box(r);
    }
    // Its first call loads its script.
    rt.block_on(decide(&backend, "tk:0", &quota));
    Box::new(move |n| {
        // Kept until the row is dropped.
        let _server = &server;
        let mut left = n;
        while left > 0 {
            let batch = left.min(u64::from(inflight)) as usize;
            rt.block_on(join_all(
                keys[..batch]
                    .iter()
                    .map(|key| decide(&backend, key, &quota)),
            ));
            left -= batch as u64;
        }
    })
}

/// What the cache rows drive.
struct CacheRig<S> {
    rt: tokio::runtime::Runtime,
    server: RedisServer,
    svc: S,
    raw: redis::aio::ConnectionManager,
    /// The cached entry's Redis key.
    name: Vec<u8>,
}

/// The request of every cache row, built as a server hands one over: both rows build one per
/// call (the raw row drops it), so that the difference between them is the layer's work, not the
/// building of a request that a server makes whether or not a cache answers it. The
/// `redis64/build_request` row counts the building alone.
fn request() -> http::Request<()> {
    http::Request::get("/api/metrics/summary?type=cpu_usage")
        .header("accept-encoding", "gzip")
        .body(())
        .expect("a valid request")
}

/// A 1 KiB JSON response with a few headers, stored once and then hit.
fn cache_rig() -> CacheRig<
    impl tower::Service<
        http::Request<()>,
        Response = http::Response<impl http_body::Body>,
        Error = std::convert::Infallible,
        Future = impl std::future::Future + 'static,
    > + Clone
    + 'static,
> {
    use http::{Request, Response};
    use http_body_util::Full;
    use tower::{Layer, ServiceExt};
    use tower_rampart::cache::{CacheKey, CacheLayer, HttpKey};

    let server = RedisServer::start()
        .expect("the redis rows need redis-server (apt-get install redis-server)");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let body = bytes::Bytes::from(vec![b'x'; 1024]);
    let inner = tower::service_fn(move |_: Request<()>| {
        let body = body.clone();
        async move {
            let res = Response::builder()
                .header("content-type", "application/json")
                .header("etag", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\"")
                .header("last-modified", "Sat, 21 Feb 2026 12:00:00 GMT")
                .header("vary", "accept-encoding")
                .body(Full::new(body))
                .expect("a valid response");
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let (svc, raw, name) = rt.block_on(async {
        let backend = RedisBackend::connect(&server.url())
            .await
            .expect("connect to the bench redis-server")
            .prefix("bench")
            .timeout(Duration::from_secs(1));
        let layer = CacheLayer::builder()
            .http()
            .key(HttpKey::new().header(http::header::ACCEPT_ENCODING))
            .name("bench")
            .ttl(Duration::from_secs(3600))
            .backend(backend)
            .build()
            .expect("valid configuration");
        let name = layer.store().redis_key(&CacheKey::from(
            "GET /api/metrics/summary?type=cpu_usage\naccept-encoding=gzip",
        ));
        let svc = layer.layer(inner);
        let res = svc.clone().oneshot(request()).await.expect("infallible");
        assert_eq!(res.headers()["x-cache"], "MISS");
        let client = redis::Client::open(server.url()).expect("a valid url");
        let raw = redis::aio::ConnectionManager::new(client)
            .await
            .expect("connect to the bench redis-server");
        // The miss's write lands in the background: wait for it (bounded).
        for _ in 0..500 {
            let res = svc.clone().oneshot(request()).await.expect("infallible");
            if res.headers()["x-cache"] == "HIT" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        (svc, raw, name)
    });
    CacheRig {
        rt,
        server,
        svc,
        raw,
        name,
    }
}

/// `n` cache hits through an HTTP `CacheLayer` on Redis, `inflight` at a time.
pub(crate) fn cache_hit(inflight: u32) -> Run {
    use tower::ServiceExt;
    let CacheRig {
        rt, server, svc, ..
    } = cache_rig();
    Box::new(move |n| {
        // Kept until the row is dropped.
        let _server = &server;
        let mut left = n;
        while left > 0 {
            let batch = left.min(u64::from(inflight));
            rt.block_on(join_all((0..batch).map(|_| {
                let svc = svc.clone();
                async move {
                    let res = svc.oneshot(request()).await.expect("infallible");
                    assert_eq!(res.headers()["x-cache"], "HIT");
                    drop(black_box(res));
                }
            })));
            left -= batch;
        }
    })
}

/// `n` raw `GET`s of the cached entry's key, `inflight` at a time, each building (and dropping)
/// the request a hit would answer.
pub(crate) fn raw_get(inflight: u32) -> Run {
    let CacheRig {
        rt,
        server,
        raw,
        name,
        ..
    } = cache_rig();
    Box::new(move |n| {
        // Kept until the row is dropped.
        let _server = &server;
        let mut left = n;
        while left > 0 {
            let batch = left.min(u64::from(inflight));
            rt.block_on(join_all((0..batch).map(|_| {
                let mut con = raw.clone();
                let mut cmd = redis::cmd("GET");
                cmd.arg(&name);
                async move {
                    drop(black_box(request()));
                    let v: redis::Value = cmd.query_async(&mut con).await.expect("get");
                    drop(black_box(v));
                }
            })));
            left -= batch;
        }
    })
}

/// `n` requests built and dropped, as each row above does per call (no Redis, no layer).
pub(crate) fn build_request() -> Run {
    Box::new(move |n| {
        for _ in 0..n {
            drop(black_box(request()));
        }
    })
}
