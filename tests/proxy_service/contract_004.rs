//! Reference 004 (service-proxy-api, Flask), from `shared/reference-contracts.md`: each request what
//! a client of that proxy sends, over real HTTP against the mock upstream. Where the example decides
//! otherwise (a defect fixed), the assertion says so.

use http::StatusCode;
use serde_json::json;

use super::{FAST, post, start};

#[tokio::test]
async fn health_success_and_the_error_bodies() {
    let stack = start(&[], &FAST).await;
    // `/api/health` as the reference serves it; `/health` (its README's, a 404 there) too.
    for path in ["/api/health", "/health"] {
        let h = stack.proxy.send("GET", path, &[]).await;
        assert_eq!(h.status, StatusCode::OK);
        assert_eq!(
            h.json(),
            json!({"status": "healthy", "circuit_breaker_state": "CLOSED"})
        );
    }
    let r = post(&stack, r#"{"order":42,"items":[1,2]}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let b = r.json();
    assert_eq!(b["status"], "success");
    assert_eq!(b["external_response"]["status"], "success");
    assert_eq!(
        b["external_response"]["received_data"],
        json!({"order": 42, "items": [1, 2]}),
        "forwarded unchanged"
    );
    assert!(b["proxy_notes"].is_string());

    // A body that is not JSON: 4xx in the reference's error shape (the reference answers 500).
    let r = stack
        .proxy
        .send_body(
            "POST",
            "/api/proxy/data",
            &[("content-type", "text/plain")],
            "x",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json()["status"], "error");
    assert!(r.json()["message"].is_string());
    // Unknown routes and methods: the same shape.
    let r = stack.proxy.send("GET", "/nothing", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["status"], "error");
    let r = stack.proxy.send("GET", "/api/proxy/data", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["status"], "error");
}

#[tokio::test]
async fn ten_per_window_and_invalid_requests_spend_no_quota() {
    let stack = start(&[], &[FAST[0], FAST[1]]).await;
    // The reference counts these (its limit runs before the body is parsed); here they are refused
    // first and spend nothing.
    for _ in 0..5 {
        let r = post(&stack, "{not json").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    for _ in 0..10 {
        assert_eq!(post(&stack, "{}").await.status, StatusCode::OK);
    }
    let r = post(&stack, "{}").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.json(),
        json!({"status": "error", "message": "Rate limit exceeded. Please try again later."})
    );
}

#[tokio::test]
async fn an_open_circuit_answers_503_with_the_reference_body() {
    let stack = start(&[("EXTERNAL_FAIL_RATE", "1.0")], &FAST).await;
    for _ in 0..5 {
        let r = post(&stack, "{}").await;
        assert!(r.status.is_server_error(), "{}", r.status);
        assert_eq!(r.json()["status"], "error");
    }
    let r = post(&stack, "{}").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        json!({
            "status": "error",
            "message": "External service is currently unavailable (Circuit Open)."
        })
    );
    let h = stack.proxy.send("GET", "/api/health", &[]).await.json();
    assert_eq!(h["circuit_breaker_state"], "OPEN");
}
