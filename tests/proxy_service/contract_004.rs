//! Reference 004 (service-proxy-api, Flask), from `shared/reference-contracts.md`: each request what
//! a client of that proxy sends, over real HTTP against the mock upstream. Where the example decides
//! otherwise (a defect fixed), the assertion says so.

use http::StatusCode;
use serde_json::json;

use super::{FAST, JSON, post, retries_exhausted, start};

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
    assert_eq!(
        b["proxy_notes"], "Circuit breaker state: CLOSED",
        "the reference's"
    );

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

/// Retries exhausted: 500 `{"status":"error","message":"An unexpected error occurred.",
/// "circuit_state":S}`, `S` the circuit's state once the failure is counted, whatever the failure
/// was (the reference retries every exception: failure statuses, timeouts, refused connections).
/// What failed is in headers only, never in the body.
#[tokio::test]
async fn retries_exhausted_answer_500_with_the_circuit_state() {
    let stack = start(
        &[
            ("EXTERNAL_FAIL_RATE", "1.0"),
            ("EXTERNAL_UNAVAILABLE_SHARE", "0"),
        ],
        &FAST,
    )
    .await;
    for i in 0..5 {
        let r = post(&stack, "{}").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "request {i}");
        let state = if i < 4 { "CLOSED" } else { "OPEN" };
        assert_eq!(r.json(), retries_exhausted(state), "request {i}");
        assert_eq!(r.headers["x-upstream-attempts"], "3");
        assert_eq!(r.headers["x-upstream-failure"], "status=500");
    }
    assert_eq!(stack.upstream.requests(), 15, "three attempts each");
    assert_eq!(
        post(&stack, "{}").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    // An upstream slower than the attempt timeout, and one that is not there: the same answer.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let missing = format!(
        "http://{}/external-api/process",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let cases = [
        (
            ("EXTERNAL_LATENCY_MS", "300"),
            ("EXTERNAL_TIMEOUT_MS", "50"),
            "timeout",
        ),
        (
            ("EXTERNAL_LATENCY_MS", "0"),
            // `start` sets the mock's URL first; this one replaces it.
            ("EXTERNAL_SERVICE_URL", missing.as_str()),
            "unreachable",
        ),
    ];
    for (upstream_var, proxy_var, failure) in cases {
        let mut vars = FAST.to_vec();
        vars.push(proxy_var);
        let stack = start(&[upstream_var], &vars).await;
        let r = post(&stack, "{}").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{failure}");
        assert_eq!(r.json(), retries_exhausted("CLOSED"), "{failure}");
        assert_eq!(r.headers["x-upstream-attempts"], "3", "{failure}");
        assert_eq!(r.headers["x-upstream-failure"], failure);
    }
}

/// The mock upstream answers as reference 004's: `processed_at` is seconds since the epoch (a
/// number, not a date string), and there is a `message`. Asked directly, and through the proxy.
#[tokio::test]
async fn the_mock_upstream_answers_with_the_reference_body() {
    let stack = start(&[], &FAST).await;
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let before = now();
    let direct = stack
        .upstream_server
        .send_body("POST", "/external-api/process", &[JSON], r#"{"order":7}"#)
        .await;
    let proxied = post(&stack, r#"{"order":7}"#).await;
    let after = now();
    assert_eq!(direct.status, StatusCode::OK);
    assert_eq!(proxied.status, StatusCode::OK);
    for body in [direct.json(), proxied.json()["external_response"].clone()] {
        let processed_at = body["processed_at"]
            .as_f64()
            .unwrap_or_else(|| panic!("processed_at is not a number: {body}"));
        assert!(
            (before.floor()..=after.ceil()).contains(&processed_at),
            "{processed_at} not in {before}..={after}"
        );
        assert_eq!(
            body,
            json!({
                "status": "success",
                "received_data": {"order": 7},
                "processed_at": processed_at,
                "message": "Data processed successfully by external service",
            })
        );
    }
}
