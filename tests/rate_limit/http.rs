//! Real HTTP: axum apps on loopback ports, driven by a hyper client.

use axum::Router;
use axum::routing::{get, post};
use http::StatusCode;
use tower_rampart::http::AsHttp;
use tower_rampart::key::ClientIp;
use tower_rampart::rate_limit::{MissingKey, Quota, RateLimitLayer};
use tower_rampart::rejection::RejectionKind;

use crate::common::http::serve;

/// `POST /api/metrics` limited by `$limit` (route layer), `GET /api/metrics/summary` free.
macro_rules! metrics_app {
    ($limit:expr) => {
        Router::new()
            .route(
                "/api/metrics",
                post(|| async { (StatusCode::CREATED, "stored") }),
            )
            .route_layer($limit)
            .route("/api/metrics/summary", get(|| async { "summary" }))
    };
}

#[tokio::test]
async fn twelve_posts_from_one_client_get_ten_created_and_two_429s_while_gets_are_free() {
    let app = metrics_app!(RateLimitLayer::per_ip(Quota::per_minute(10)));
    let served = serve(app, true).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = served.send("POST", "/api/metrics", &[]).await;
        if i == 0 {
            assert_eq!(r.headers["ratelimit-policy"], r#""default";q=10;w=60"#);
            assert_eq!(r.headers["ratelimit"], r#""default";r=9;t=6"#);
            assert_eq!(r.body, "stored");
        }
        if i == 10 {
            assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(r.headers["retry-after"], "6");
            assert_eq!(r.headers["ratelimit-policy"], r#""default";q=10;w=60"#);
            assert_eq!(r.headers["ratelimit"], r#""default";r=0;t=60"#);
            assert_eq!(r.headers["content-type"], "application/json");
            let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"error": "rate limit exceeded", "kind": "rate_limited", "retry_after": 6})
            );
            assert!(
                r.headers.get("x-ratelimit-limit").is_none(),
                "legacy headers are opt-in"
            );
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[..10], [StatusCode::CREATED; 10]);
    assert_eq!(statuses[10..], [StatusCode::TOO_MANY_REQUESTS; 2]);
    for _ in 0..20 {
        let r = served.send("GET", "/api/metrics/summary", &[]).await;
        assert_eq!(r.status, StatusCode::OK);
        assert!(r.headers.get("ratelimit").is_none());
    }
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_does_not_change_the_key() {
    for trusted in [false, true] {
        // Trusting some other network must not make loopback clients trusted either.
        let key = if trusted {
            ClientIp::new().trusted_proxies(["10.0.0.0/8"])
        } else {
            ClientIp::new()
        };
        let limit = RateLimitLayer::builder()
            .quota(Quota::per_minute(3))
            .key(key)
            .http()
            .build()
            .unwrap();
        let served = serve(metrics_app!(limit), true).await;
        for i in 0..3 {
            let spoof = format!("203.0.113.{i}");
            let r = served
                .send("POST", "/api/metrics", &[("x-forwarded-for", &spoof)])
                .await;
            assert_eq!(r.status, StatusCode::CREATED);
        }
        let r = served
            .send(
                "POST",
                "/api/metrics",
                &[
                    ("x-forwarded-for", "198.51.100.99"),
                    ("x-real-ip", "198.51.100.98"),
                ],
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "spoofing got a fresh quota"
        );
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota() {
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(2))
        .key(ClientIp::new().trusted_proxies(["127.0.0.1"]))
        .legacy_headers(true)
        .http()
        .build()
        .unwrap();
    let served = serve(metrics_app!(limit), true).await;
    for client in ["198.51.100.1", "198.51.100.2"] {
        for _ in 0..2 {
            let r = served
                .send("POST", "/api/metrics", &[("x-forwarded-for", client)])
                .await;
            assert_eq!(r.status, StatusCode::CREATED);
        }
        // The client prepends a fake hop: the proxy appended the real one, which is what counts.
        let spoof = format!("1.2.3.4, {client}");
        let r = served
            .send("POST", "/api/metrics", &[("x-forwarded-for", &spoof)])
            .await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers["x-ratelimit-limit"], "2");
        assert_eq!(r.headers["x-ratelimit-remaining"], "0");
        assert_eq!(r.headers["x-ratelimit-reset"], "60");
    }
    // Requests without the header are the proxy's own.
    let r = served.send("POST", "/api/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn the_application_chooses_the_refusal_body() {
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .key(tower_rampart::key::PeerIp::new())
        .rejection(AsHttp::new().json_body(|r| match r.kind() {
            RejectionKind::RateLimited => r#"{"detail":"Too many requests"}"#.to_owned(),
            other => format!(r#"{{"detail":"{other}"}}"#),
        }))
        .build()
        .unwrap();
    let served = serve(metrics_app!(limit), true).await;
    assert_eq!(
        served.send("POST", "/api/metrics", &[]).await.status,
        StatusCode::CREATED
    );
    let r = served.send("POST", "/api/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.body, r#"{"detail":"Too many requests"}"#);
    assert_eq!(r.headers["retry-after"], "60");
}

#[tokio::test]
async fn without_connect_info_requests_are_refused_with_a_fix_unless_allowed() {
    let served = serve(
        metrics_app!(RateLimitLayer::per_ip(Quota::per_minute(10))),
        false,
    )
    .await;
    let r = served.send("POST", "/api/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["kind"], "key_missing");
    // #19: the body says nothing of how the server is deployed; the fix is the server's log's
    // (and `KeyMissing::reason`).
    assert_eq!(body["error"], "rate limit key missing", "{body}");

    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .key(tower_rampart::key::PeerIp::new())
        .on_missing_key(MissingKey::Allow)
        .http()
        .build()
        .unwrap();
    let served = serve(metrics_app!(limit), false).await;
    for _ in 0..3 {
        assert_eq!(
            served.send("POST", "/api/metrics", &[]).await.status,
            StatusCode::CREATED
        );
    }
}

#[tokio::test]
async fn router_layer_with_no_handle_error_layer() {
    // `Router::layer` (not only `route_layer`) accepts the layer as is.
    let app: Router = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(RateLimitLayer::per_ip(Quota::per_minute(1)));
    let served = serve(app, true).await;
    assert_eq!(served.send("GET", "/", &[]).await.status, StatusCode::OK);
    assert_eq!(
        served.send("GET", "/", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Unknown routes go through the fallback, also limited.
    assert_eq!(
        served.send("GET", "/nope", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}
