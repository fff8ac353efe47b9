//! The tower Service contract: readiness is the inner service's and registers the waker, hits
//! answer without reaching the inner service, a request that waited calls through with the
//! instance it readied, inner errors pass through, clones share the cache; the auto traits.

use std::time::Duration;

use futures::FutureExt;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::backend::memory::MemoryCacheStore;
use tower_rampart::cache::{
    Cache, CacheBody, CacheHandle, CacheKey, CacheLayer, CachedResponse, Cloned, HttpKey, HttpMode,
    Invalidation,
};
use tower_rampart::key::{KeyFnPtr, key_fn};

/// A layer keyed by a plain `fn` has a type that can be written down, so a function returns it.
type ByRequest = KeyFnPtr<String, String>;

fn layer() -> CacheLayer<ByRequest, MemoryCacheStore<String>> {
    CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(
            (|r: &String| Some(r.clone())) as fn(&String) -> Option<String>,
        ))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_hits_never_reach_it() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<String, String, _>(layer());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(
        svc.is_woken(),
        "waker registered while the inner service was not ready"
    );
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call("a".into());
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(req, "a");
    respond.send_response("A".into());
    assert_eq!(fut.await.unwrap(), "A");

    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    assert_eq!(svc.call("a".into()).await.unwrap(), "A", "a hit");
    assert!(
        handle.poll_request().is_pending(),
        "no request reached the inner service"
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_request_calls_through_with_the_instance_it_readied() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<String, String, _>(layer());
    handle.allow(2);
    assert_ready_ok!(svc.poll_ready());
    let leader = svc.call("k".into());
    assert_ready_ok!(svc.poll_ready());
    let mut waiter = tokio_test::task::spawn(svc.call("k".into()));
    assert_pending!(waiter.poll());
    let (_, respond) = handle.next_request().await.unwrap();
    assert!(
        handle.poll_request().is_pending(),
        "the waiter did not call"
    );
    respond.send_error("boom");
    assert_eq!(
        leader.await.unwrap_err().to_string(),
        "boom",
        "inner errors pass through"
    );
    assert!(waiter.is_woken());
    assert_pending!(waiter.poll());
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(req, "k", "the waiter called through");
    respond.send_response("K".into());
    assert_eq!(waiter.await.unwrap(), "K");
}

#[tokio::test]
async fn inner_poll_ready_errors_pass_through() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<String, String, _>(layer());
    handle.send_error("inner is broken");
    assert_eq!(
        assert_ready_err!(svc.poll_ready()).to_string(),
        "inner is broken"
    );
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_cache() {
    let layer = layer();
    let inner = tower::service_fn(|r: String| async move { Ok::<_, BoxError>(format!("{r}!")) });
    let mut a = layer.layer(inner);
    let mut b = a.clone();
    let mut c = layer.clone().layer(tower::service_fn(|_: String| async {
        Err::<String, BoxError>("never called".into())
    }));
    assert_eq!(
        a.ready().await.unwrap().call("x".into()).await.unwrap(),
        "x!"
    );
    assert_eq!(
        b.ready().await.unwrap().call("x".into()).await.unwrap(),
        "x!"
    );
    assert_eq!(
        c.ready().await.unwrap().call("x".into()).await.unwrap(),
        "x!"
    );
    assert!(format!("{:?}", layer.store()).contains("MemoryCacheStore"));
}

#[test]
fn hits_are_ready_at_once_without_a_runtime() {
    let layer = layer();
    let mut svc = layer.layer(tower::service_fn(|r: String| {
        std::future::ready(Ok::<_, BoxError>(r))
    }));
    // A miss without a runtime works (nothing is spawned) and so does the hit after it.
    assert_eq!(svc.call("a".into()).now_or_never().unwrap().unwrap(), "a");
    assert_eq!(svc.call("a".into()).now_or_never().unwrap().unwrap(), "a");
}

/// A stale entry within stale-while-revalidate, found with no runtime to refresh on in the
/// background: the request refreshes it itself (nothing is spawned), and the next one hits the
/// new answer.
#[test]
fn a_revalidating_entry_without_a_runtime_is_refreshed_by_the_request() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_millis(20))
        .stale_while_revalidate(Duration::from_secs(60))
        .key(key_fn(
            (|r: &String| Some(r.clone())) as fn(&String) -> Option<String>,
        ))
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(move |r: String| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Ok::<_, BoxError>(format!("{r} {n}")))
    }));
    assert_eq!(svc.call("a".into()).now_or_never().unwrap().unwrap(), "a 1");
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(
        svc.call("a".into()).now_or_never().unwrap().unwrap(),
        "a 2",
        "refreshed by the request itself"
    );
    assert_eq!(svc.call("a".into()).now_or_never().unwrap().unwrap(), "a 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn layers_services_handles_bodies_and_futures_are_send_sync_static() {
    use crate::common::send_sync_static;
    send_sync_static::<CacheLayer<HttpKey, MemoryCacheStore<CachedResponse>, HttpMode>>();
    send_sync_static::<
        Cache<
            tower::util::BoxCloneSyncService<String, String, BoxError>,
            ByRequest,
            MemoryCacheStore<String>,
            Cloned,
        >,
    >();
    send_sync_static::<CacheHandle>();
    send_sync_static::<CacheKey>();
    send_sync_static::<CacheBody<http_body_util::Full<bytes::Bytes>>>();
    fn send_static<T: Send + 'static>() {}
    send_static::<CacheBody<axum::body::Body>>(); // as Send as the body it wraps
    fn send<T: Send + 'static>(_: &T) {}
    let mut svc = CacheLayer::http(Duration::from_secs(1)).layer(tower::service_fn(
        |_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        },
    ));
    let fut = svc.call(http::Request::new(()));
    send(&fut);
    fn future_send<T: Send>(_: &T) {}
    let invalidation: Invalidation = CacheLayer::http(Duration::from_secs(1))
        .handle()
        .invalidate_all();
    future_send(&invalidation);
}
