//! Bytes at an entry's key that are not an entry (garbage, another format version, a truncated
//! HTTP entry, a foreign type): a miss, counted and traced, never an error; the next fill
//! replaces them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::cache::{CacheKey, CacheLayer};

use crate::common::redis::RedisServer;
use crate::support::{Config, Upstream, call, connect, replica, unique_prefix};

fn undecodable_counts(
    snapshot: Vec<(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    )>,
) -> HashMap<String, u64> {
    let mut counts = HashMap::new();
    for (key, _, _, value) in snapshot {
        if key.key().name() != "rampart_cache_undecodable_total" {
            continue;
        }
        let labels: HashMap<_, _> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        if let DebugValue::Counter(n) = value {
            counts.insert(format!("{}/{}", labels["name"], labels["reason"]), n);
        }
    }
    counts
}

/// Waits (up to 5 s) until the string at `name` is there and not `old` (the fill's write
/// landed), without decoding it (which would count).
async fn until_replaced(con: &mut redis::aio::MultiplexedConnection, name: &[u8], old: &[u8]) {
    for _ in 0..500 {
        let now: Option<Vec<u8>> = redis::cmd("GET")
            .arg(name)
            .query_async(con)
            .await
            .unwrap_or(None);
        if now.is_some_and(|b| b != old) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the entry was not replaced within 5 s");
}

#[test]
fn bytes_that_are_not_an_entry_are_a_counted_miss() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let prefix = unique_prefix("corrupt");
            let up = Upstream::default();
            let mut r = replica(
                connect(&server.url(), &prefix).await,
                "corrupt",
                Config::default(),
                &up,
            );
            let mut con = server.connection().await;
            let name = r.store.redis_key(&CacheKey::from("k"));
            let cases: [(&str, &[u8]); 4] = [
                ("garbage", b"hello, I am not a cache entry"),
                ("version 2", b"RMV\x02\x00\x00\x00\x00\x00\x00\x00\x00"),
                ("truncated", b"RMV\x01\x00\x00\x01"),
                ("empty", b""),
            ];
            for (i, (what, bytes)) in cases.into_iter().enumerate() {
                let _: () = redis::cmd("SET")
                    .arg(&name)
                    .arg(bytes)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                let answer = call(&mut r.svc, "k").await.unwrap();
                assert_eq!(answer, format!("k#{}", i + 1), "{what}: a miss, fetched");
                // The fill replaces the bytes (in the background): the next request is a hit.
                until_replaced(&mut con, &name, bytes).await;
                assert_eq!(call(&mut r.svc, "k").await.unwrap(), answer, "{what}");
            }
            // A foreign type at the key.
            let _: () = redis::cmd("DEL")
                .arg(&name)
                .query_async(&mut con)
                .await
                .unwrap();
            let _: () = redis::cmd("HSET")
                .arg(&name)
                .arg("field")
                .arg("value")
                .query_async(&mut con)
                .await
                .unwrap();
            assert_eq!(
                call(&mut r.svc, "k").await.unwrap(),
                "k#5",
                "a hash: a miss"
            );
            until_replaced(&mut con, &name, b"").await;
            assert_eq!(call(&mut r.svc, "k").await.unwrap(), "k#5");
            assert_eq!(up.calls(), 5);

            // An HTTP entry cut short.
            let layer = CacheLayer::builder()
                .http()
                .name("corrupt-http")
                .ttl(Duration::from_secs(60))
                .backend(connect(&server.url(), &prefix).await)
                .build()
                .unwrap();
            let store = layer.store().clone();
            let mut svc = layer.layer(tower::service_fn(|_: Request<()>| async {
                Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from_static(
                    b"origin",
                ))))
            }));
            let get = || Request::get("/summary").body(()).unwrap();
            let res = svc.ready().await.unwrap().call(get()).await.unwrap();
            assert_eq!(res.headers()["x-cache"], "MISS");
            let http_name = store.redis_key(&CacheKey::from("GET /summary"));
            let mut whole: Vec<u8> = Vec::new();
            for _ in 0..500 {
                whole = redis::cmd("GET")
                    .arg(&http_name)
                    .query_async::<Option<Vec<u8>>>(&mut con)
                    .await
                    .unwrap()
                    .unwrap_or_default();
                if !whole.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(whole.starts_with(b"RMC\x01"), "the versioned HTTP format");
            let res = svc.ready().await.unwrap().call(get()).await.unwrap();
            assert_eq!(res.headers()["x-cache"], "HIT");
            let _: () = redis::cmd("SET")
                .arg(&http_name)
                .arg(&whole[..whole.len() - 3])
                .query_async(&mut con)
                .await
                .unwrap();
            let res = svc.ready().await.unwrap().call(get()).await.unwrap();
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["x-cache"], "MISS", "truncated: a miss");
            assert_eq!(
                res.into_body().collect().await.unwrap().to_bytes(),
                "origin"
            );
        });
    });
    let counts = undecodable_counts(snapshotter.snapshot().into_vec());
    assert_eq!(
        counts.get("corrupt/not a cache entry"),
        Some(&2),
        "{counts:?}"
    );
    assert_eq!(
        counts.get("corrupt/unknown format version"),
        Some(&1),
        "{counts:?}"
    );
    assert_eq!(counts.get("corrupt/truncated"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("corrupt/not a string"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("corrupt-http/truncated"), Some(&1), "{counts:?}");
}
