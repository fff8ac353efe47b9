//! Real HTTP: an axum route to a flaky handler behind the breaker. While open it answers 503 fast
//! without calling the handler; after the reset timeout a probe closes it again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use http::StatusCode;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::common::http::serve;

#[tokio::test]
async fn open_circuit_answers_503_fast_and_recovers_after_the_reset_timeout() {
    let failing = Arc::new(AtomicBool::new(true));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CircuitBreakerLayer::builder()
        .name("external")
        .consecutive_failures(5)
        .wait_duration(Duration::from_millis(300))
        .http()
        .build()
        .unwrap();
    let handle = layer.handle();
    let (f, c) = (failing.clone(), calls.clone());
    let app = Router::new().route(
        "/external",
        get(move || {
            let (f, c) = (f.clone(), c.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                if f.load(Ordering::SeqCst) {
                    (StatusCode::INTERNAL_SERVER_ERROR, "upstream failure")
                } else {
                    (StatusCode::OK, r#"{"external":"ok","value":134}"#)
                }
            }
        })
        .layer(layer),
    );
    let served = serve(app, false).await;

    for _ in 0..5 {
        assert_eq!(
            served.send("GET", "/external", &[]).await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let started = std::time::Instant::now();
    let r = served.send("GET", "/external", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "refused fast"
    );
    assert_eq!(r.headers["retry-after"], "1");
    let body = r.json();
    assert_eq!(body["kind"], "circuit_open");
    assert_eq!(body["error"], "circuit open");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        5,
        "no upstream calls while open"
    );

    tokio::time::sleep(Duration::from_millis(350)).await;
    failing.store(false, Ordering::SeqCst);
    let r = served.send("GET", "/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}
