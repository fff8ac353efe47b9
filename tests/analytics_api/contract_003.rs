//! Reference 003 (realtime-analytics, Go/gin), from `shared/reference-contracts.md`: the `/api/v1`
//! dashboard routes as its clients call them (camelCase keys, `{"error": ...}` bodies, integer
//! values, days for release dates), over real HTTP.

use std::sync::Arc;

use http::StatusCode;

use crate::common::redis::RedisServer;
use crate::redis_storage::redis_storage;
use crate::storage::Storage;
use crate::{JSON, TestApp, event, start_on};

async fn dashboard(app: TestApp) {
    app.send_body("POST", "/event", &[JSON], event(7, "login", "web"))
        .await;
    let s = app.send("GET", "/api/v1/metrics/summary", &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    let s = s.json();
    for k in [
        "activeUsers",
        "apiRejectedCount",
        "newProjectsLast7Days",
        "totalLiveProjects",
        "sensorsOnline",
        "sensorsOffline",
    ] {
        assert!(s[k].is_u64(), "{k}: {s}");
    }
    assert_eq!(s["activeUsersByPlatform"]["web"], 1);

    // Go durations; values are integers a Go `int` reads.
    for interval in ["5m", "1h", "15m"] {
        let r = app
            .send(
                "GET",
                &format!("/api/v1/metrics/history?metric=activeUsers&interval={interval}"),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{interval}: {}", r.body);
        let h = r.json();
        assert_eq!(h["metricType"], "activeUsers");
        assert_eq!(h["interval"], interval);
        for p in h["points"].as_array().unwrap() {
            assert!(p["value"].is_u64(), "{p}");
            let t = p["timestamp"].as_str().unwrap();
            assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok(), "{t}");
        }
    }
    for (query, error) in [
        ("interval=5m", "query param 'metric' is required"),
        ("metric=activeUsers", "query param 'interval' is required"),
    ] {
        let r = app
            .send("GET", &format!("/api/v1/metrics/history?{query}"), &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"], error);
    }
    // A bad duration: 400 naming it (the reference answers 500).
    let r = app
        .send(
            "GET",
            "/api/v1/metrics/history?metric=activeUsers&interval=1d",
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("'interval'"));

    let b = app.send("GET", "/api/v1/sensors/type-breakdown", &[]).await;
    assert_eq!(b.status, StatusCode::OK);
    assert!(b.json().as_object().unwrap().values().all(|v| v.is_u64()));
    let m = app.send("GET", "/api/v1/modules", &[]).await.json();
    for module in m.as_array().unwrap() {
        let day = module["upcomingReleaseDate"].as_str().unwrap();
        assert!(chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() && day.len() == 10);
        let at = module["lastDeployedAt"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok());
        assert!(module["moduleName"].is_string() && module["currentVersion"].is_string());
    }
}

#[tokio::test]
async fn the_dashboard_routes_in_memory() {
    dashboard(start_on(&[], Arc::new(Storage::default())).await).await;
}

#[tokio::test]
async fn the_dashboard_routes_with_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    dashboard(start_on(&[], redis_storage(&server)).await).await;
}

#[tokio::test]
async fn health_request_ids_and_the_limit() {
    let app = start_on(
        &[("API_V1_RATE_LIMIT", "100")],
        Arc::new(Storage::default()),
    )
    .await;
    let h = app.send("GET", "/health", &[("x-request-id", "abc")]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.headers["x-request-id"], "abc");
    // `/health` says `healthy` (the conflict, decided for reference 001) and is not rate-limited.
    assert_eq!(h.json()["status"], "healthy");
    assert!(
        app.send("GET", "/health", &[])
            .await
            .headers
            .contains_key("x-request-id")
    );
    for _ in 0..100 {
        assert_eq!(
            app.send("GET", "/api/v1/modules", &[]).await.status,
            StatusCode::OK
        );
    }
    let r = app.send("GET", "/api/v1/modules", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.json()["error"],
        "rate limit exceeded",
        "the reference's key and text"
    );
    // Unknown routes: 404 in the one error shape.
    let r = app.send("GET", "/api/v1/nothing", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["error"], r.json()["message"]);
    let r = app.send("DELETE", "/health", &[]).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.json()["code"], "METHOD_NOT_ALLOWED");
}
