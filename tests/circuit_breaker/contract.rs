//! The tower Service contract: readiness is the inner service's and registers the waker (but an
//! open circuit's, which is ready at once without polling the inner service, so that nothing it
//! reserves is held for a refused call), refusals come from the call future without touching the
//! inner service, inner errors pass through, a probe's permit comes back when its call or its
//! classifier panics; the auto traits.

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

/// A waiting rate limiter under an open circuit: the refused calls reserve nothing from it (the
/// open circuit's `poll_ready` used to poll the limiter, which reserved a unit each time for a
/// call that never came: the probe was then refused by the limiter with only one request sent).
#[tokio::test(start_paused = true)]
async fn an_open_circuit_reserves_nothing_below_it() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tower::{Layer, ServiceExt};
    use tower_rampart::rate_limit::{Quota, RateLimitLayer};

    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let limiter = RateLimitLayer::builder()
        .quota(Quota::per_minute(5))
        .wait_up_to(Duration::from_millis(100))
        .build()
        .unwrap();
    let fail = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let upstream = {
        let (fail, sent) = (Arc::clone(&fail), Arc::clone(&sent));
        tower::service_fn(move |()| {
            let (fail, sent) = (Arc::clone(&fail), Arc::clone(&sent));
            async move {
                sent.fetch_add(1, Ordering::SeqCst);
                if fail.load(Ordering::SeqCst) {
                    Err::<(), BoxError>("down".into())
                } else {
                    Ok(())
                }
            }
        })
    };
    let svc = breaker.layer(limiter.layer(upstream));
    assert!(svc.clone().oneshot(()).await.is_err(), "the failure");
    assert_eq!(
        handle.state(),
        tower_rampart::circuit_breaker::CircuitState::Open
    );
    for _ in 0..4 {
        let err = svc.clone().oneshot(()).await.unwrap_err();
        assert!(err.is::<CircuitOpen>(), "{err}");
    }
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(11)).await;
    fail.store(false, Ordering::SeqCst);
    // The probe: one request of five was sent this minute.
    svc.clone().oneshot(()).await.unwrap();
    assert_eq!(
        handle.state(),
        tower_rampart::circuit_breaker::CircuitState::Closed
    );
}

/// A half-open probe whose `call` panics (caught outside, as tower-http's `CatchPanic` does), or
/// whose classifier panics, gives its permit back: the circuit used to stay half-open for good,
/// every later call refused.
#[tokio::test(start_paused = true)]
async fn a_probe_whose_call_or_classifier_panics_gives_its_permit_back() {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};
    use tower::{Layer, Service, ServiceExt};
    use tower_rampart::circuit_breaker::CircuitState;
    use tower_rampart::classify::{Verdict, classify_fn};

    #[derive(Clone, Default)]
    struct Flaky {
        fail: Arc<AtomicBool>,
        panic: Arc<AtomicBool>,
    }
    impl Service<()> for Flaky {
        type Response = ();
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, (): ()) -> Self::Future {
            assert!(!self.panic.load(Ordering::SeqCst), "call panicked");
            let fail = self.fail.load(Ordering::SeqCst);
            Box::pin(async move { if fail { Err("down".into()) } else { Ok(()) } })
        }
    }

    let classifier_panics = Arc::new(AtomicBool::new(false));
    let panics = Arc::clone(&classifier_panics);
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .half_open_probes(1)
        .classify(classify_fn(move |r: &Result<(), BoxError>| {
            assert!(!panics.load(Ordering::SeqCst), "classifier panicked");
            match r {
                Ok(()) => Verdict::Success,
                Err(_) => Verdict::Failure {
                    reason: tower_rampart::classify::Reason::Error,
                },
            }
        }))
        .build()
        .unwrap();
    let breaker = layer.handle();
    let inner = Flaky::default();
    inner.fail.store(true, Ordering::SeqCst);
    let svc = layer.layer(inner.clone());
    for which in ["call", "classifier"] {
        inner.fail.store(true, Ordering::SeqCst);
        assert!(svc.clone().oneshot(()).await.is_err());
        assert_eq!(breaker.state(), CircuitState::Open, "{which}");
        tokio::time::advance(Duration::from_secs(2)).await;
        let mut probe = svc.clone();
        std::future::poll_fn(|cx| probe.poll_ready(cx))
            .await
            .unwrap();
        if which == "call" {
            inner.panic.store(true, Ordering::SeqCst);
            let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                drop(probe.call(()));
            }));
            assert!(unwound.is_err(), "the call panicked");
            inner.panic.store(false, Ordering::SeqCst);
        } else {
            classifier_panics.store(true, Ordering::SeqCst);
            let fut = probe.call(());
            let unwound = tokio::spawn(fut).await;
            assert!(unwound.unwrap_err().is_panic(), "the classifier panicked");
            classifier_panics.store(false, Ordering::SeqCst);
        }
        // The upstream is healthy: the next caller probes, and the circuit closes.
        inner.fail.store(false, Ordering::SeqCst);
        svc.clone().oneshot(()).await.unwrap();
        assert_eq!(breaker.state(), CircuitState::Closed, "{which}");
    }
}
