//! A shared layer is the same tower citizen as a local one: readiness is the inner service's, a
//! refusal never reaches the inner service, inner errors pass through, the types are `Send + Sync
//! + 'static`. Its configuration is checked when it is built, with errors that name the setting.

use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_ok};
use tower_rampart::BoxError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::{RedisCircuitStore, RedisSync};
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::key::PerKey;
use tower_rampart::circuit_breaker::store::{CircuitBackend, CircuitStore, SharedWith};
use tower_rampart::circuit_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerLayer, CircuitState,
};
use tower_rampart::clock::ManualClock;
use tower_rampart::key::UpstreamHost;

use crate::common::redis::RedisServer;
use crate::support::{connect, unique_prefix, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_contract_holds_for_a_shared_layer() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url(), &unique_prefix("contract")).await;
    let layer = CircuitBreakerLayer::builder()
        .name("contract")
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(5))
        .backend(backend)
        .sync_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let handle = layer.handle();
    within(Duration::from_secs(2), "following", || {
        handle.is_following_shared()
    })
    .await;
    let (mut svc, mut mock) = tower_test::mock::spawn_layer::<(), (), _>(layer);
    mock.allow(0);
    assert_pending!(svc.poll_ready());
    mock.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(());
    let (_, respond) = mock.next_request().await.unwrap();
    respond.send_error("boom");
    assert_eq!(fut.await.unwrap_err().to_string(), "boom");

    // The failure opens the shared circuit (decided in Redis, applied here at the next sync).
    within(Duration::from_secs(2), "open", || {
        handle.state() == CircuitState::Open
    })
    .await;
    mock.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let err: BoxError = svc.call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert!(
        mock.poll_request().is_pending(),
        "refused without the inner service"
    );

    // Open, the inner service is not polled (what it reserves when ready would be held for a
    // refused call): its error does not show, and the call is refused.
    mock.send_error("inner is broken");
    assert_ready_ok!(svc.poll_ready());
    let err: BoxError = svc.call(()).await.unwrap_err();
    assert!(err.is::<CircuitOpen>(), "{err}");
}

#[test]
fn shared_types_are_send_sync_static() {
    use crate::common::send_sync_static;
    fn send_static<T: Send + 'static>() {}
    // A shared layer has the same type as a local one.
    send_sync_static::<CircuitBreakerLayer>();
    send_sync_static::<
        CircuitBreaker<
            tower::util::BoxCloneSyncService<(), (), BoxError>,
            tower_rampart::classify::ErrorsAreFailures,
            tower_rampart::rejection::AsError,
        >,
    >();
    send_sync_static::<RedisCircuitStore<()>>();
    send_sync_static::<RedisCircuitStore<Box<str>>>();
    send_static::<RedisSync>();
    send_sync_static::<
        CircuitBreakerBuilder<
            tower_rampart::classify::ErrorsAreFailures,
            tower_rampart::rejection::AsError,
            tower_rampart::circuit_breaker::fallback::NoFallback,
            tower_rampart::key::GlobalKey,
            SharedWith<RedisBackend>,
        >,
    >();
    send_sync_static::<
        CircuitBreakerBuilder<
            tower_rampart::classify::HttpClassifier,
            tower_rampart::http::AsHttp,
            tower_rampart::circuit_breaker::fallback::NoFallback,
            PerKey<UpstreamHost>,
            SharedWith<RedisBackend>,
        >,
    >();
    fn store_of<K, B: CircuitBackend<K>>()
    where
        B::Store: CircuitStore<K>,
    {
    }
    store_of::<(), RedisBackend>();
    store_of::<Box<str>, RedisBackend>();
}

#[tokio::test]
async fn configuration_errors_name_the_setting() {
    // No server needed: the layer is checked when it is built.
    let backend = RedisBackend::connect_lazy("redis://127.0.0.1:1/").unwrap();
    let build = |b: CircuitBreakerBuilder<
        tower_rampart::classify::ErrorsAreFailures,
        tower_rampart::rejection::AsError,
        tower_rampart::circuit_breaker::fallback::NoFallback,
        tower_rampart::key::GlobalKey,
        SharedWith<RedisBackend>,
    >| b.build().map(|_| ()).unwrap_err();
    let e = build(
        CircuitBreakerLayer::builder()
            .backend(backend.clone())
            .sync_interval(Duration::ZERO),
    );
    assert_eq!(e.setting(), "sync_interval");
    assert_eq!(
        e.to_string(),
        "invalid sync_interval: must be from 1 ms to 1 hour (got 0ns)"
    );
    let e = build(
        CircuitBreakerLayer::builder()
            .backend(backend.clone())
            .sync_interval(Duration::from_secs(7200)),
    );
    assert_eq!(e.setting(), "sync_interval");
    let e = build(
        CircuitBreakerLayer::builder()
            .time_window(Duration::from_millis(400), 4)
            .backend(backend.clone()),
    );
    assert_eq!(e.setting(), "time_window");
    assert!(e.reason().contains("two sync intervals"), "{e}");
    let e = build(
        CircuitBreakerLayer::builder()
            .half_open_probes(0)
            .backend(backend.clone()),
    );
    assert_eq!(e.setting(), "half_open_probes");
    let e = build(CircuitBreakerLayer::builder().backend(backend.clone().prefix("a b")));
    assert_eq!(e.setting(), "prefix");
    let e = build(CircuitBreakerLayer::builder().backend(backend.clone().timeout(Duration::ZERO)));
    assert_eq!(e.setting(), "timeout");
    let e =
        build(CircuitBreakerLayer::builder().backend(backend.clone().clock(ManualClock::new())));
    assert_eq!(e.setting(), "clock");
    let e = CircuitBreakerLayer::builder()
        .key(UpstreamHost)
        .max_circuits(0)
        .backend(backend.clone())
        .build()
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.setting(), "max_circuits");
    // And a valid one builds, without a server: it runs on its local circuit until Redis answers.
    let layer = CircuitBreakerLayer::builder()
        .backend(backend)
        .build()
        .unwrap();
    assert!(layer.is_shared());
    assert!(!layer.handle().is_following_shared());
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_shared_circuit_left_with_the_default_name_is_warned_of() {
    let backend = RedisBackend::connect_lazy("redis://127.0.0.1:1/").unwrap();
    let buffer = Buffer::default();
    let out = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(move || out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let _named = CircuitBreakerLayer::builder()
            .name("payments")
            .backend(backend.clone())
            .build()
            .unwrap();
    });
    assert_eq!(
        buffer.0.lock().unwrap().len(),
        0,
        "a named circuit: no warning"
    );
    let out = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .without_time()
        .with_writer(move || out.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let _unnamed = CircuitBreakerLayer::builder()
            .backend(backend.clone())
            .build()
            .unwrap();
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("WARN") && text.contains("a shared circuit is named \"default\""),
        "{text}"
    );
}
