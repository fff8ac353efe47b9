//! Reference 001 (resilient-analytics-api, FastAPI), from `shared/reference-contracts.md`: each
//! request what a client of that service sends, over real HTTP, in memory and with Redis. Where the
//! example decides otherwise (a conflict or a defect fixed), the assertion says so.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde_json::{Value, json};

use crate::common::redis::RedisServer;
use crate::redis_storage::redis_storage;
use crate::storage::Storage;
use crate::{JSON, TestApp, start_on};

/// The reference's own settings: 10 per 60 s, 5 failures open the circuit for 30 s.
const VARS: &[(&str, &str)] = &[
    ("RATE_LIMIT_REQUESTS", "10"),
    ("RATE_LIMIT_WINDOW_SECONDS", "60"),
    ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5"),
    ("CIRCUIT_BREAKER_RESET_TIMEOUT", "30"),
    ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
    ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
];

fn is_iso(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

async fn submit_summarise_list(app: TestApp) {
    // Naive timestamps are UTC, as the reference normalises them.
    for (t, v) in [
        ("2025-01-01T10:00:00", 10.0),
        ("2025-01-01T11:00:00+01:00", 30.0),
        ("2025-01-01T10:30:00.5Z", 20.0),
    ] {
        let body = json!({"timestamp": t, "value": v, "type": "cpu usage"});
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], body.to_string())
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let b = r.json();
        assert_eq!(
            b["type"], "cpu usage",
            "the reference's `type` (1 to 100 characters)"
        );
        assert!(is_iso(&b["timestamp"]), "{b}");
        assert!(b["message"].is_string());
    }
    let s = app
        .send(
            "GET",
            "/api/metrics/summary?type=cpu%20usage&period=all",
            &[],
        )
        .await;
    assert_eq!(s.status, StatusCode::OK);
    let s = s.json();
    for (k, v) in [
        ("type", json!("cpu usage")),
        ("period", json!("all")),
        ("count", json!(3)),
        ("average_value", json!(20.0)),
        ("min_value", json!(10.0)),
        ("max_value", json!(30.0)),
    ] {
        assert_eq!(s[k], v, "{k} in {s}");
    }
    // The latest by timestamp (the reference takes the last inserted; here they differ: 10:30 is
    // after 10:00, and 11:00+01:00 is 10:00 UTC).
    assert_eq!(s["latest_value"], 20.0);
    let empty = app
        .send("GET", "/api/metrics/summary?type=none&period=hourly", &[])
        .await
        .json();
    for k in [
        "count",
        "average_value",
        "min_value",
        "max_value",
        "latest_value",
    ] {
        assert_eq!(empty[k].as_f64(), Some(0.0), "{k}: all zeros when empty");
    }
    let r = app
        .send("GET", "/api/metrics/summary?type=cpu&period=weekly", &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["detail"],
        "Invalid period. Must be one of: all, daily, hourly"
    );

    // The list: a bare array of {id, timestamp, value, type}, the newest `limit`.
    let r = app.send("GET", "/api/metrics/list?limit=2", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["x-total-count"], "3");
    let list = r.json();
    let list = list.as_array().expect("a bare array");
    assert_eq!(list.len(), 2);
    for m in list {
        assert_eq!(m["id"], Value::Null);
        assert_eq!(m["type"], "cpu usage");
        assert!(is_iso(&m["timestamp"]));
    }
    let values: Vec<f64> = list.iter().map(|m| m["value"].as_f64().unwrap()).collect();
    assert_eq!(values.len(), 2);
    let typed = app
        .send("GET", "/api/metrics/list?type=cpu%20usage", &[])
        .await
        .json();
    assert_eq!(typed.as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn submission_summaries_and_the_list_in_memory() {
    submit_summarise_list(start_on(VARS, Arc::new(Storage::default())).await).await;
}

#[tokio::test]
async fn submission_summaries_and_the_list_with_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    submit_summarise_list(start_on(VARS, redis_storage(&server)).await).await;
}

#[tokio::test]
async fn root_health_validation_errors_and_the_limit() {
    let app = start_on(VARS, Arc::new(Storage::default())).await;
    let r = app.send("GET", "/", &[]).await;
    assert_eq!(
        r.json(),
        json!({"name": "Resilient Analytics API", "version": "1.0.0", "docs": "/docs"})
    );
    let h = app.send("GET", "/health", &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    let h = h.json();
    assert_eq!(h["status"], "healthy");
    assert!(
        h["redis_connected"].is_boolean(),
        "a bool, as the reference's clients read it"
    );
    assert!(is_iso(&h["timestamp"]));

    // The custom 422: code, message, errors, timestamp.
    let r = app
        .send_body(
            "POST",
            "/api/metrics",
            &[JSON],
            r#"{"timestamp":"2025-01-01T10:00:00Z","value":1,"type":""}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let e = r.json();
    assert_eq!(e["code"], "VALIDATION_ERROR");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid request: 1 validation error(s)"),
        "{e}"
    );
    assert_eq!(e["errors"][0]["loc"], json!(["body", "type"]));
    assert!(is_iso(&e["timestamp"]));

    // 10 admitted, the 11th refused with Retry-After of at least 1; an invalid body still gets its
    // 422 while the client is limited (validation comes first, as in the reference).
    let ok = r#"{"timestamp":"2025-01-01T10:00:00Z","value":1,"type":"cpu"}"#;
    for _ in 0..10 {
        let r = app.send_body("POST", "/api/metrics", &[JSON], ok).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = app.send_body("POST", "/api/metrics", &[JSON], ok).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(r.json()["detail"].is_string());
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], r#"{"value":1}"#)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn the_external_call_and_the_circuit_status() {
    let app = start_on(
        &[
            ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "5"),
            ("CIRCUIT_BREAKER_RESET_TIMEOUT", "1"),
            ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
            ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
        ],
        Arc::new(Storage::default()),
    )
    .await;
    let status = async || {
        let s = app
            .send("GET", "/api/circuit-breaker/status", &[])
            .await
            .json();
        (
            s["state"].as_str().unwrap().to_owned(),
            s["failure_count"].as_u64().unwrap(),
            s["success_count"].as_u64().unwrap(),
        )
    };
    let r = app.send("GET", "/api/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let b = r.json();
    assert_eq!(b["status"], "success");
    assert_eq!(b["source"], "external_service");
    assert!(b["data"]["sample_value"].is_number());
    assert!(is_iso(&b["timestamp"]));
    assert_eq!(status().await, ("CLOSED".into(), 0, 1));

    app.state.external_failure_rate.set(1.0);
    for _ in 0..5 {
        let r = app.send("GET", "/api/external", &[]).await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.json()["detail"],
            "External service temporarily unavailable"
        );
    }
    assert_eq!(status().await, ("OPEN".into(), 5, 1));
    let r = app.send("GET", "/api/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let b = r.json();
    assert_eq!(b["status"], "fallback");
    assert_eq!(b["source"], "circuit_breaker_fallback");
    assert_eq!(b["message"], "External service unavailable, using fallback");

    // Half-open after the timeout without traffic (the reference needs a call); a failed probe
    // answers with the fallback and opens it again, a good probe closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status().await.0, "HALF_OPEN");
    let r = app.send("GET", "/api/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "a failed probe: the fallback");
    assert_eq!(r.json()["status"], "fallback");
    assert_eq!(status().await.0, "OPEN");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(status().await.0, "HALF_OPEN");
    app.state.external_failure_rate.set(0.0);
    assert_eq!(
        app.send("GET", "/api/external", &[]).await.json()["status"],
        "success"
    );
    assert_eq!(status().await.0, "CLOSED");
}
