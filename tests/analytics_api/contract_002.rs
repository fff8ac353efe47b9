//! Reference 002 (High-Load Analytics API, README only), from `shared/reference-contracts.md`:
//! events and their counts, as its README's curl examples send them.

use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use crate::common::redis::RedisServer;
use crate::redis_storage::redis_storage;
use crate::storage::Storage;
use crate::{JSON, TestApp, start_on};

async fn events(app: TestApp) {
    for body in [
        // The README's first example omits `payload`.
        r#"{"user_id":1,"event_type":"login","timestamp":1690000000}"#,
        r#"{"user_id":2,"event_type":"login","timestamp":1690000001,"payload":{"ip":"10.0.0.1"}}"#,
    ] {
        let r = app.send_body("POST", "/event", &[JSON], body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
        assert_eq!(r.json(), json!({"status": "received"}));
    }
    let r = app.send("GET", "/stats/login", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"event_type": "login", "count": 2}));
    // Refused bodies (and bodies that are not JSON) in the one error shape.
    let r = app.send_body("POST", "/event", &[JSON], "").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .send_body(
            "POST",
            "/event",
            &[JSON],
            r#"{"user_id":-1,"event_type":"","timestamp":"x"}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json()["errors"].as_array().unwrap().len(),
        3,
        "{}",
        r.body
    );
}

#[tokio::test]
async fn events_in_memory() {
    events(start_on(&[], Arc::new(Storage::default())).await).await;
}

#[tokio::test]
async fn events_with_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    events(start_on(&[], redis_storage(&server)).await).await;
}

#[tokio::test]
async fn the_limit_counts_valid_events_only() {
    let app = start_on(&[("RATE_LIMIT", "2")], Arc::new(Storage::default())).await;
    for _ in 0..3 {
        let r = app
            .send_body("POST", "/event", &[JSON], r#"{"user_id":1}"#)
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    let ok = r#"{"user_id":1,"event_type":"login","timestamp":1690000000}"#;
    for _ in 0..2 {
        let r = app.send_body("POST", "/event", &[JSON], ok).await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    let r = app.send_body("POST", "/event", &[JSON], ok).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}
