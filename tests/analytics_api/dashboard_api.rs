//! `/api/v1`: the dashboard summary (active users by platform, rejected requests in a sliding five
//! minutes), history series, sensors, modules, the `/api/v1` limit and its error shape.

use chrono::Duration;
use http::StatusCode;
use serde_json::json;

use crate::{JSON, event, start};

#[tokio::test]
async fn summary_counts_distinct_active_users_by_platform_and_rejections_in_five_minutes() {
    let app = start(&[]).await;
    for (user, platform) in [
        (1, "ios"),
        (2, "ios"),
        (1, "ios"),
        (3, "android"),
        (1, "web"),
    ] {
        let r = app
            .send_body("POST", "/event", &[JSON], event(user, "login", platform))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
    }
    // Two rejected requests (4xx): a malformed event and a bad period.
    let r = app.send_body("POST", "/event", &[JSON], "{").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = app
        .send("GET", "/api/metrics/summary?type=cpu&period=weekly", &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let s = app.send("GET", "/api/v1/metrics/summary", &[]).await;
    assert_eq!(s.status, StatusCode::OK);
    let s = s.json();
    assert_eq!(s["activeUsers"], 3);
    assert_eq!(
        s["activeUsersByPlatform"],
        json!({"android": 1, "ios": 2, "web": 1})
    );
    assert_eq!(s["apiRejectedCount"], 2);
    assert_eq!(s["totalLiveProjects"], 4);
    assert_eq!(s["newProjectsLast7Days"], 3);
    assert_eq!(s["sensorsOnline"], 6);
    assert_eq!(s["sensorsOffline"], 2);

    // The window slides: four minutes on, user 2 acts again; at five minutes the others are gone.
    app.time.advance(Duration::minutes(4));
    app.send_body("POST", "/event", &[JSON], event(2, "click", "android"))
        .await;
    app.time.advance(Duration::seconds(61));
    let s = app.send("GET", "/api/v1/metrics/summary", &[]).await.json();
    assert_eq!(s["activeUsers"], 1);
    assert_eq!(s["activeUsersByPlatform"], json!({"android": 1}));
    assert_eq!(
        s["apiRejectedCount"], 0,
        "the rejections are over five minutes old"
    );
    // An event without a platform counts as "unknown".
    app.send_body(
        "POST",
        "/event",
        &[JSON],
        r#"{"user_id":9,"event_type":"x","timestamp":1}"#,
    )
    .await;
    let s = app.send("GET", "/api/v1/metrics/summary", &[]).await.json();
    assert_eq!(
        s["activeUsersByPlatform"],
        json!({"android": 1, "unknown": 1})
    );
}

#[tokio::test]
async fn history_series_and_their_parameter_errors() {
    let app = start(&[]).await;
    for user in [1, 2, 3] {
        app.send_body("POST", "/event", &[JSON], event(user, "login", "ios"))
            .await;
    }
    app.time.advance(Duration::minutes(1));
    app.send_body("POST", "/event", &[JSON], event(1, "login", "ios"))
        .await;
    let r = app
        .send(
            "GET",
            "/api/v1/metrics/history?type=activeUsers&interval=1m&points=3",
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let h = r.json();
    assert_eq!(h["metricType"], "activeUsers");
    assert_eq!(h["interval"], "1m");
    let values: Vec<f64> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [0.0, 3.0, 1.0]);
    let stamps: Vec<chrono::DateTime<chrono::Utc>> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(stamps[2] - stamps[1], Duration::minutes(1));
    assert!(stamps[2] <= app.time.now() && app.time.now() - stamps[2] < Duration::minutes(1));

    // A 5-minute interval holds both minutes: 3 distinct users.
    let h = app
        .send(
            "GET",
            "/api/v1/metrics/history?metric=activeUsers&interval=5m&points=1",
            &[],
        )
        .await
        .json();
    let last = &h["points"][0]["value"];
    assert!(
        *last == 3.0 || *last == 1.0,
        "3, or 1 if the two minutes straddle a 5-minute boundary: {last}"
    );

    // Rejections by minute; a metric type's average by the metrics' own timestamps.
    app.send("GET", "/api/v1/metrics/history?interval=1m", &[])
        .await;
    let h = app
        .send(
            "GET",
            "/api/v1/metrics/history?type=apiRejections&interval=1h&points=1",
            &[],
        )
        .await
        .json();
    assert_eq!(h["points"][0]["value"], 1.0);
    let now = app.time.now();
    for (ago, value) in [(1, 10.0), (1, 20.0), (3, 40.0)] {
        let body = json!({
            "timestamp": (now - Duration::hours(ago)).to_rfc3339(),
            "value": value,
            "type": "cpu_usage",
        });
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], body.to_string())
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let h = app
        .send(
            "GET",
            "/api/v1/metrics/history?type=cpu_usage&interval=1h&points=5",
            &[],
        )
        .await
        .json();
    let values: Vec<f64> = h["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [0.0, 40.0, 0.0, 15.0, 0.0]);

    for (query, needle) in [
        ("interval=1m", "query param 'metric' is required"),
        ("type=activeUsers", "query param 'interval' is required"),
        ("type=activeUsers&interval=1d", "'interval'"),
        ("type=activeUsers&interval=90s", "'interval'"),
        ("type=activeUsers&interval=2h", "'interval'"),
        ("type=activeUsers&interval=1m&points=0", "'points'"),
        ("type=activeUsers&interval=1m&points=289", "'points'"),
        ("type=no%0Asuch&interval=1m", "'metric'"),
    ] {
        let r = app
            .send("GET", &format!("/api/v1/metrics/history?{query}"), &[])
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}");
        let msg = r.json()["error"].as_str().unwrap().to_owned();
        assert!(msg.contains(needle), "{query}: {msg}");
    }
}

#[tokio::test]
async fn sensors_modules_and_the_api_v1_limit() {
    let app = start(&[("API_V1_RATE_LIMIT", "3")]).await;
    let b = app.send("GET", "/api/v1/sensors/type-breakdown", &[]).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(
        b.json(),
        json!({"co2": 1, "humidity": 2, "pressure": 2, "temperature": 3})
    );
    let m = app.send("GET", "/api/v1/modules", &[]).await.json();
    let modules = m.as_array().unwrap();
    assert_eq!(modules.len(), 4);
    for module in modules {
        for field in [
            "moduleName",
            "currentVersion",
            "lastDeployedAt",
            "upcomingVersion",
            "upcomingReleaseDate",
        ] {
            assert!(!module[field].is_null(), "{field} in {module}");
        }
        let day = module["upcomingReleaseDate"].as_str().unwrap();
        assert!(
            chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").is_ok() && day.len() == 10,
            "a day, as the reference gives it: {day}"
        );
    }
    app.send("GET", "/api/v1/metrics/summary", &[]).await;
    // The fourth request under /api/v1 this minute is refused, whichever route it is.
    let r = app.send("GET", "/api/v1/modules", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let body = r.json();
    assert_eq!(body["detail"], "rate limit exceeded");
    assert_eq!(body["error"], "rate limit exceeded");
    assert_eq!(body["code"], "RATE_LIMITED");
    // Other routes are not affected.
    assert_eq!(app.send("GET", "/health", &[]).await.status, StatusCode::OK);
}

/// #16: a request to an `/api/v1` path with a method it does not answer gets 405 without spending
/// the client's quota (the limit wraps each GET handler, not the route's method-not-allowed answer).
#[tokio::test]
async fn a_405_under_api_v1_spends_no_quota() {
    let app = crate::start(&[("API_V1_RATE_LIMIT", "2")]).await;
    for _ in 0..3 {
        let r = app.send("DELETE", "/api/v1/modules", &[]).await;
        assert_eq!(r.status, http::StatusCode::METHOD_NOT_ALLOWED, "{}", r.body);
    }
    for _ in 0..2 {
        let r = app.send("GET", "/api/v1/modules", &[]).await;
        assert_eq!(r.status, http::StatusCode::OK, "{}", r.body);
    }
    let r = app.send("GET", "/api/v1/modules", &[]).await;
    assert_eq!(
        r.status,
        http::StatusCode::TOO_MANY_REQUESTS,
        "the limit still holds"
    );
}
