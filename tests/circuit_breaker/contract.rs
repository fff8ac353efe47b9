//! The tower Service contract: readiness is the inner service's and registers the waker (but an
//! open circuit's, which is ready at once), refusals come from the call future without touching
//! the inner service, inner errors pass through; the auto traits.

use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::fallback::NoFallback;
use tower_rampart::circuit_breaker::{CircuitBreaker, CircuitBreakerLayer, CircuitHandle};
use tower_rampart::classify::{ErrorsAreFailures, HttpClassifier};
use tower_rampart::http::AsHttp;
use tower_rampart::rejection::AsError;

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_refusals_never_reach_it() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let breaker = layer.handle();
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<(), (), _>(layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("boom");
    assert_eq!(
        fut.await.unwrap_err().to_string(),
        "boom",
        "inner errors pass through"
    );

    // Open: ready at once, even with the inner service not ready (tower's `LoadShed` does the
    // same): a caller is not held behind a saturated inner service only to be refused. The call
    // is refused without reaching it.
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready());
    let err: BoxError = svc.call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert!(handle.poll_request().is_pending());

    // A refusal decided in `poll_ready` stands for its `call` even if the circuit closes in
    // between (the inner service was not readied for it).
    assert_ready_ok!(svc.poll_ready());
    breaker.force_closed();
    let err: BoxError = svc.call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert!(handle.poll_request().is_pending());
    // Closed again: readiness is the inner service's once more.
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(());
    fut.await.unwrap();
}

#[tokio::test]
async fn inner_poll_ready_errors_pass_through() {
    let layer = CircuitBreakerLayer::builder().build().unwrap();
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<(), (), _>(layer);
    handle.send_error("inner is broken");
    assert_eq!(
        assert_ready_err!(svc.poll_ready()).to_string(),
        "inner is broken"
    );
}

#[test]
fn layers_services_handles_and_futures_are_send_sync_static() {
    fn send_sync_static<T: Send + Sync + 'static>() {}
    send_sync_static::<CircuitBreakerLayer>();
    send_sync_static::<CircuitBreakerLayer<HttpClassifier, AsHttp>>();
    send_sync_static::<
        CircuitBreaker<
            tower::util::BoxCloneSyncService<(), (), BoxError>,
            ErrorsAreFailures,
            AsError,
        >,
    >();
    send_sync_static::<CircuitHandle>();
    type Keyed = tower_rampart::circuit_breaker::key::PerKey<tower_rampart::key::UpstreamHost>;
    send_sync_static::<CircuitBreakerLayer<HttpClassifier, AsHttp, NoFallback, Keyed>>();
    send_sync_static::<
        CircuitBreaker<
            tower::util::BoxCloneSyncService<http::Request<()>, (), BoxError>,
            HttpClassifier,
            AsHttp,
            NoFallback,
            Keyed,
        >,
    >();
    send_sync_static::<tower_rampart::circuit_breaker::CircuitHandle<Box<str>>>();
    send_sync_static::<CircuitOpen>();
    fn send<T: Send + 'static>(_: &T) {}
    let mut svc = tower::Layer::layer(
        &CircuitBreakerLayer::builder().http().build().unwrap(),
        tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::new()))
        }),
    );
    let fut = tower::Service::call(&mut svc, http::Request::new(()));
    send(&fut);
}
