//! Real HTTP: two replicas of an axum app (two routers on two loopback ports, each with its own
//! connection) sharing one Redis, limited per client IP: 10 in total across both. Then Redis dies
//! and a `Closed` limiter answers 503 with the JSON body, at once.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::post;
use http::StatusCode;
use tower_rampart::backend::{FailurePolicy, RedisBackend};
use tower_rampart::key::PeerIp;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};

use crate::common::http::serve;
use crate::common::redis::RedisServer;
use crate::support::unique_prefix;

async fn replica(url: &str, prefix: &str) -> Router {
    let redis = RedisBackend::connect(url)
        .await
        .unwrap()
        .prefix(prefix)
        .timeout(Duration::from_millis(200))
        .failure_policy(FailurePolicy::Closed);
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(10))
        .key(PeerIp::new())
        .backend(redis)
        .http()
        .build()
        .unwrap();
    Router::new()
        .route(
            "/api/metrics",
            post(|| async { (StatusCode::CREATED, "stored") }),
        )
        .layer(limit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_one_redis_share_the_per_ip_limit() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("http");
    let a = serve(replica(&server.url(), &prefix).await, true).await;
    let b = serve(replica(&server.url(), &prefix).await, true).await;
    let mut statuses = Vec::new();
    let first_sent = Instant::now();
    for i in 0..14 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let r = replica.send("POST", "/api/metrics", &[]).await;
        if i == 0 {
            assert_eq!(r.headers["ratelimit"], r#""default";r=9;t=6"#);
        }
        if i == 10 {
            // 10 admitted at once put the bucket 60 s ahead; the 11th waits 6 s, less what time
            // has passed since the first (at most `elapsed`, as measured here: on a quiet machine,
            // well under a second, and the fields read exactly 6 and 60).
            let elapsed = first_sent.elapsed();
            let ceil = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
            let between = |value: &str, full: u64| {
                let v: u64 = value.parse().unwrap();
                let least = ceil(Duration::from_secs(full).saturating_sub(elapsed));
                assert!(
                    (least..=full).contains(&v),
                    "{value} not in {least}..={full} ({elapsed:?} after the first request)"
                );
            };
            between(r.headers["retry-after"].to_str().unwrap(), 6);
            let field = r.headers["ratelimit"].to_str().unwrap();
            let t = field
                .strip_prefix(r#""default";r=0;t="#)
                .unwrap_or_else(|| panic!("{field}"));
            between(t, 60);
            assert_eq!(r.json()["kind"], "rate_limited");
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[..10], [StatusCode::CREATED; 10]);
    assert_eq!(statuses[10..], [StatusCode::TOO_MANY_REQUESTS; 4]);

    // Redis gone: the Closed limiter answers 503 at once (no RateLimit fields: nothing was counted).
    server.kill();
    for replica in [&a, &b] {
        let started = Instant::now();
        let r = replica
            .send("POST", "/api/metrics", &[("x-test", "down")])
            .await;
        // The key is remembered over its limit: still 429, from this replica's memory.
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    let c = serve(replica_down(&server).await, true).await;
    let started = Instant::now();
    let r = c.send("POST", "/api/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["kind"], "backend_unavailable");
    assert!(r.headers.get("ratelimit").is_none());
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A third replica that starts while Redis is down (lazily connected), `Closed`.
async fn replica_down(server: &RedisServer) -> Router {
    let redis = RedisBackend::connect_lazy(&server.url())
        .unwrap()
        .timeout(Duration::from_millis(200))
        .failure_policy(FailurePolicy::Closed);
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(10))
        .key(PeerIp::new())
        .backend(redis)
        .http()
        .build()
        .unwrap();
    Router::new()
        .route(
            "/api/metrics",
            post(|| async { (StatusCode::CREATED, "stored") }),
        )
        .layer(limit)
}
