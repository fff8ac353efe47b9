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

#[tokio::test]
async fn fallback_answers_while_open_in_the_applications_shape() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(60))
        .http()
        .fallback(|open| {
            let body = serde_json::json!({
                "fallback": true,
                "reason": "external service failure",
                "circuit": open.state().to_string(),
            });
            axum::response::IntoResponse::into_response(axum::Json(body))
        })
        .build()
        .unwrap();
    let app = Router::new().route(
        "/external",
        get(|| async { (StatusCode::BAD_GATEWAY, "upstream failure") }).layer(layer),
    );
    let served = serve(app, false).await;
    assert_eq!(
        served.send("GET", "/external", &[]).await.status,
        StatusCode::BAD_GATEWAY
    );
    let r = served.send("GET", "/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({"fallback": true, "reason": "external service failure", "circuit": "OPEN"})
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_mode_answers_unavailable_with_retry_info() {
    use tower::{Layer, Service, ServiceExt};
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(7))
        .grpc()
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        let mut res = http::Response::new(tonic::body::Body::empty());
        res.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("14"));
        Ok::<_, std::convert::Infallible>(res)
    }));
    // A trailers-only UNAVAILABLE from the upstream is a failure, and opens the circuit.
    let first = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(first.headers()["grpc-status"], "14");
    let refused = svc
        .ready()
        .await
        .unwrap()
        .call(http::Request::new(()))
        .await
        .unwrap();
    let status = tonic::Status::from_header_map(refused.headers()).unwrap();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "circuit open");
    assert_eq!(refused.headers()["grpc-retry-pushback-ms"], "7000");
}
