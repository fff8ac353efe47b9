//! Reference 000 (realtime-analytics-backend, FastAPI), from `shared/reference-contracts.md`: each
//! request what a client of that service sends, over real HTTP, in memory and with Redis. Where the
//! example decides otherwise (a conflict or a defect fixed), the assertion says so.

use std::sync::Arc;

use http::StatusCode;

use crate::common::redis::RedisServer;
use crate::redis_storage::redis_storage;
use crate::storage::Storage;
use crate::{JSON, TestApp, start_on};

/// The reference's own settings: 5 metric submissions per 60 s, 3 failures open the circuit.
const VARS: &[(&str, &str)] = &[
    ("RATE_LIMIT_REQUESTS", "5"),
    ("RATE_LIMIT_WINDOW_SECONDS", "60"),
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"),
    ("CIRCUIT_BREAKER_RESET_TIMEOUT", "10"),
    ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
    ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
];

async fn post(app: &TestApp, body: &str) -> crate::common::http::Reply {
    app.send_body("POST", "/api/metrics", &[JSON], body.to_owned())
        .await
}

async fn metrics_summary_and_limit(app: TestApp) {
    // Its README's own example (no offset), a date alone, unix seconds, and "7" for the value:
    // pydantic's lax mode takes them all.
    for body in [
        r#"{"timestamp":"2025-01-01T10:00:00","value":10.5,"type":"cpu"}"#,
        r#"{"timestamp":"2025-01-01","value":20,"type":"cpu"}"#,
        r#"{"timestamp":1735725600,"value":"7","type":"cpu"}"#,
        r#"{"timestamp":1735725600.25,"value":1.5,"type":"cpu","extra":"ignored"}"#,
    ] {
        let r = post(&app, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{body}: {}", r.body);
        assert_eq!(r.json()["message"], "Metric stored successfully");
    }
    let s = app
        .send("GET", "/api/metrics/summary?metric_type=cpu", &[])
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let s = s.json();
    assert_eq!(s["type"], "cpu");
    assert_eq!(s["count"], 4);
    assert_eq!(s["average"], (10.5 + 20.0 + 7.0 + 1.5) / 4.0);
    // Empty: zeros, `average` an integer 0 as the reference writes it (`0`, not `0.0`).
    let empty = app
        .send("GET", "/api/metrics/summary?metric_type=none", &[])
        .await;
    assert!(
        empty.body.contains(r#""average":0,"#) || empty.body.contains(r#""average":0}"#),
        "{}",
        empty.body
    );
    let empty = empty.json();
    assert_eq!(
        (empty["count"].as_u64(), empty["average"].as_u64()),
        (Some(0), Some(0))
    );
    // `metric_type` is required: 422.
    let r = app.send("GET", "/api/metrics/summary", &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.json()["detail"].is_array(), "FastAPI's list of errors");

    // The 5th admitted, the 6th refused with the reference's body and a Retry-After. Invalid bodies
    // do not spend quota here (the reference's defect, fixed).
    let r = post(&app, r#"{"timestamp":"soon","value":1,"type":"cpu"}"#).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let ok = r#"{"timestamp":"2025-01-01T10:00:00Z","value":1,"type":"cpu"}"#;
    assert_eq!(post(&app, ok).await.status, StatusCode::CREATED);
    let r = post(&app, ok).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["detail"], "Too many requests");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // The POST dropped the cached summary: the fifth metric counts at once.
    let s = app
        .send("GET", "/api/metrics/summary?metric_type=cpu", &[])
        .await
        .json();
    assert_eq!(s["count"], 5);
}

#[tokio::test]
async fn metrics_summaries_and_the_limit_in_memory() {
    metrics_summary_and_limit(start_on(VARS, Arc::new(Storage::default())).await).await;
}

#[tokio::test]
async fn metrics_summaries_and_the_limit_with_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    metrics_summary_and_limit(start_on(VARS, redis_storage(&server)).await).await;
}

#[tokio::test]
async fn health_and_the_external_call_with_its_fallbacks() {
    let app = start_on(VARS, Arc::new(Storage::default())).await;
    // `/health`: the one true conflict, decided for the second reference (`healthy`); the status code
    // is what the reference's clients check.
    let h = app.send("GET", "/health", &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json()["status"], "healthy");

    let r = app.send("GET", "/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["external"], "ok");
    assert!((100..200).contains(&v["value"].as_u64().unwrap()));
    app.state.external_failure_rate.set(1.0);
    for _ in 0..3 {
        let r = app.send("GET", "/external", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["fallback"], true);
        assert_eq!(r.json()["reason"], "external service failure");
    }
    let r = app.send("GET", "/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["fallback"], true);
    assert_eq!(r.json()["reason"], "circuit open");
}
