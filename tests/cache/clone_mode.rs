//! The clone mode on paused time: TTL, stale-while-revalidate (stale served at once, exactly one
//! background refresh), stale-if-error, the predicate, requests without a key, the crate's HTTP
//! extractors (`PeerIp`) as cache keys, and configuration errors.

use std::time::Duration;

use tower::Layer;
use tower_rampart::cache::{CacheLayer, CacheStatus};
use tower_rampart::key::{GlobalKey, key_fn};

use crate::{Upstream, call};

fn by_request() -> impl tower_rampart::key::ExtractKey<String, Key = String> + Clone {
    key_fn(|req: &String| Some(req.clone()))
}

#[tokio::test(start_paused = true)]
async fn entries_are_fresh_for_the_ttl_then_fetched_again() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .key(by_request())
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1");
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1", "hit");
    assert_eq!(call(&mut svc, "b").await.unwrap(), "b#2", "another key");
    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1", "still fresh");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        call(&mut svc, "a").await.unwrap(),
        "a#3",
        "expired at the TTL"
    );
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#3");
    assert_eq!(up.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_exactly_once() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(5))
        .key(by_request())
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1");
    up.delay(100);
    tokio::time::advance(Duration::from_secs(11)).await;
    // Stale: served at once, however many ask, while one refresh runs in the background.
    for _ in 0..50 {
        assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1");
    }
    tokio::task::yield_now().await;
    assert_eq!(up.calls(), 2, "one refresh started");
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(up.calls(), 2, "and only one");
    assert_eq!(
        call(&mut svc, "a").await.unwrap(),
        "a#2",
        "refreshed, fresh again"
    );
    // Past the stale window nothing stale is served: a plain miss.
    tokio::time::advance(Duration::from_secs(16)).await;
    up.delay(0);
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#3");
}

#[tokio::test(start_paused = true)]
async fn a_failed_background_refresh_keeps_the_stale_entry_and_tries_again_later() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(30))
        .key(by_request())
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    call(&mut svc, "a").await.unwrap();
    tokio::time::advance(Duration::from_secs(11)).await;
    up.fail(true);
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1");
    tokio::task::yield_now().await;
    assert_eq!(up.calls(), 2, "the refresh ran and failed");
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1", "still stale");
    tokio::task::yield_now().await;
    assert_eq!(up.calls(), 3, "and is tried again by the next stale hit");
    up.fail(false);
    call(&mut svc, "a").await.unwrap();
    tokio::task::yield_now().await;
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#4");
}

/// A background refresh whose call never answers is dropped after the fill lock's hold: no
/// caller is there to cancel it, and a request that misses the key once the stale window is over
/// waits for it. It was kept forever, and every later miss of the key waited on it.
#[tokio::test(start_paused = true)]
async fn a_background_refresh_that_hangs_is_dropped_after_the_fill_locks_hold() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(5))
        .fill_lock(Duration::from_secs(8), Duration::from_secs(1))
        .key(by_request())
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1");
    tokio::time::advance(Duration::from_secs(11)).await;
    // The refresh's call hangs (an upstream that took the request and went silent).
    up.delay(24 * 3_600_000);
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1", "stale");
    tokio::task::yield_now().await;
    assert_eq!(up.calls(), 2, "the refresh is running");
    up.delay(0);
    // Past the stale window (5 s later): a miss, which waits for the refresh in flight, then
    // leads its own call once the refresh is dropped (8 s after it began: 3 s of waiting).
    tokio::time::advance(Duration::from_secs(5)).await;
    let start = tokio::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(60), call(&mut svc, "a"))
        .await
        .expect("answered once the hung refresh is dropped");
    assert_eq!(answer.unwrap(), "a#3");
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(3),
        "waited for the refresh"
    );
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#3", "stored");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_the_stale_entry_only_when_the_call_fails() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(60))
        .key(by_request())
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    call(&mut svc, "a").await.unwrap();
    tokio::time::advance(Duration::from_secs(20)).await;
    up.fail(true);
    assert_eq!(
        call(&mut svc, "a").await.unwrap(),
        "a#1",
        "failed: stale served"
    );
    assert_eq!(up.calls(), 2, "the call was made");
    up.fail(false);
    assert_eq!(
        call(&mut svc, "a").await.unwrap(),
        "a#3",
        "succeeded: fresh answer"
    );
    // Beyond the window the error reaches the caller.
    tokio::time::advance(Duration::from_secs(75)).await;
    up.fail(true);
    let err = call(&mut svc, "a").await.unwrap_err();
    assert_eq!(err.to_string(), "upstream failed on call 4");
}

#[tokio::test(start_paused = true)]
async fn errors_and_refused_responses_are_not_stored() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .key(by_request())
        .predicate(|res: &String| !res.starts_with("skip"))
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    up.fail(true);
    assert!(call(&mut svc, "a").await.is_err());
    up.fail(false);
    assert_eq!(
        call(&mut svc, "a").await.unwrap(),
        "a#2",
        "the error was not stored"
    );
    assert_eq!(call(&mut svc, "skip").await.unwrap(), "skip#3");
    assert_eq!(
        call(&mut svc, "skip").await.unwrap(),
        "skip#4",
        "refused by the predicate"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_without_a_key_go_straight_through() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .key(key_fn(|req: &String| {
            (req != "private").then(|| req.clone())
        }))
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    assert_eq!(call(&mut svc, "private").await.unwrap(), "private#1");
    assert_eq!(call(&mut svc, "private").await.unwrap(), "private#2");
    assert_eq!(call(&mut svc, "public").await.unwrap(), "public#3");
    assert_eq!(call(&mut svc, "public").await.unwrap(), "public#3");
}

#[tokio::test(start_paused = true)]
async fn single_key_caches_one_answer_for_everything() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .key(GlobalKey)
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    assert_eq!(call(&mut svc, "a").await.unwrap(), "a#1");
    assert_eq!(call(&mut svc, "b").await.unwrap(), "a#1");
}

#[tokio::test(start_paused = true)]
async fn handle_invalidates_a_key_a_prefix_or_everything() {
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(300))
        .key(by_request())
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(up.service());
    for k in ["summary:cpu", "summary:mem", "list:cpu"] {
        call(&mut svc, k).await.unwrap();
    }
    assert_eq!(up.calls(), 3);
    handle.invalidate("summary:cpu").await.unwrap();
    assert_eq!(
        call(&mut svc, "summary:cpu").await.unwrap(),
        "summary:cpu#4"
    );
    assert_eq!(
        call(&mut svc, "summary:mem").await.unwrap(),
        "summary:mem#2"
    );
    handle.invalidate_prefix("summary:").await.unwrap();
    assert_eq!(
        call(&mut svc, "summary:cpu").await.unwrap(),
        "summary:cpu#5"
    );
    assert_eq!(
        call(&mut svc, "summary:mem").await.unwrap(),
        "summary:mem#6"
    );
    assert_eq!(call(&mut svc, "list:cpu").await.unwrap(), "list:cpu#3");
    handle.invalidate_all().await.unwrap();
    assert_eq!(call(&mut svc, "list:cpu").await.unwrap(), "list:cpu#7");
    assert_eq!(handle.name(), "default");
}

#[tokio::test(start_paused = true)]
async fn a_fill_running_during_an_invalidation_is_not_stored() {
    let up = Upstream::default();
    up.delay(100);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(300))
        .key(by_request())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(up.service());
    // A read starts (and reads the old data)...
    let mut s = svc.clone();
    let old_read = tokio::spawn(async move { call(&mut s, "summary").await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    // ...a write invalidates...
    handle.invalidate("summary").await.unwrap();
    // ...and a read that starts now does not wait for the old one.
    let mut s = svc.clone();
    let new_read = tokio::spawn(async move { call(&mut s, "summary").await });
    assert_eq!(old_read.await.unwrap().unwrap(), "summary#1");
    assert_eq!(new_read.await.unwrap().unwrap(), "summary#2");
    up.delay(0);
    let mut s = svc.clone();
    assert_eq!(
        call(&mut s, "summary").await.unwrap(),
        "summary#2",
        "the fill begun before the invalidation was not stored; the later one was"
    );
}

#[test]
fn invalid_configuration_is_refused_at_build_time() {
    let err = CacheLayer::builder()
        .key(GlobalKey)
        .build::<String>()
        .unwrap_err();
    assert_eq!(err.setting(), "ttl");
    assert!(
        err.to_string().contains(".ttl(Duration::from_secs(60))"),
        "{err}"
    );
    let err = CacheLayer::builder()
        .ttl(Duration::ZERO)
        .key(GlobalKey)
        .build::<String>()
        .unwrap_err();
    assert_eq!(err.setting(), "ttl");
    let err = CacheLayer::builder()
        .ttl(Duration::from_secs(1))
        .build::<String>()
        .unwrap_err();
    assert_eq!(err.setting(), "key");
    assert!(err.to_string().contains("key_fn"), "{err}");
    let err = CacheLayer::builder()
        .ttl(Duration::from_secs(1))
        .key(GlobalKey)
        .max_bytes(0)
        .build::<String>()
        .unwrap_err();
    assert_eq!(err.setting(), "max_bytes");
    let err = CacheLayer::builder()
        .ttl(Duration::from_secs(1))
        .key(GlobalKey)
        .name("has space")
        .build::<String>()
        .unwrap_err();
    assert_eq!(err.setting(), "name");
    let err = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(1))
        .max_bytes(1000)
        .max_body_bytes(2000)
        .build()
        .unwrap_err();
    assert_eq!(err.setting(), "max_body_bytes");
    assert!(
        err.to_string().contains("larger than the whole cache"),
        "{err}"
    );
    assert_eq!(CacheStatus::Stale.to_string(), "STALE");
}

#[tokio::test(start_paused = true)]
async fn peer_ip_keys_an_entry_per_client_and_a_request_without_a_peer_is_not_cached() {
    // #15: the rate limiter's `PeerIp` keys the cache too.
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(10))
        .key(tower_rampart::key::PeerIp::new())
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = up.service();
    let mut svc = layer.layer(
        tower::ServiceBuilder::new()
            .map_request(|req: http::Request<()>| req.uri().path().to_owned())
            .service(inner),
    );
    let mut get = async |peer: Option<&str>, path: &str| {
        let mut req = http::Request::get(path).body(()).unwrap();
        if let Some(peer) = peer {
            req.extensions_mut()
                .insert(peer.parse::<std::net::SocketAddr>().unwrap());
        }
        use tower::{Service, ServiceExt};
        svc.ready().await.unwrap().call(req).await.unwrap()
    };
    assert_eq!(get(Some("203.0.113.9:4000"), "/a").await, "/a#1");
    assert_eq!(
        get(Some("203.0.113.9:4001"), "/b").await,
        "/a#1",
        "one entry per client"
    );
    assert_eq!(
        get(Some("198.51.100.7:4000"), "/c").await,
        "/c#2",
        "another client"
    );
    assert_eq!(get(None, "/d").await, "/d#3", "no peer: not cached");
    assert_eq!(get(None, "/d").await, "/d#4");
    // The entry's key is the address as text.
    handle.invalidate("203.0.113.9").await.unwrap();
    assert_eq!(get(Some("203.0.113.9:4000"), "/e").await, "/e#5");
}
