//! The app on Redis storage (a throw-away `redis-server` per test): two instances share the data, a
//! restarted instance loses nothing, the Redis store answers exactly as the memory store does, and
//! an unreachable Redis makes health `degraded` and writes 503 (nothing claimed stored).

use std::sync::Arc;
use std::time::Duration;

use chrono::Duration as ChronoDuration;
use http::StatusCode;
use serde_json::json;

use crate::common::redis::RedisServer;
use crate::storage::{EventRecord, Metric, RedisStorage, Series, Storage};
use crate::{JSON, event, metric, start_on};

/// The Redis names of the cached summaries' entries.
const SUMMARY_ENTRIES: &str = "analytics:cache:summaries:*:e:*";

pub(crate) fn redis_storage(server: &RedisServer) -> Arc<Storage> {
    Arc::new(Storage::Redis(
        RedisStorage::open(&server.url(), Duration::from_millis(500)).unwrap(),
    ))
}

#[tokio::test]
async fn two_instances_share_the_data_and_a_restart_loses_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = start_on(&[], redis_storage(&server)).await;
    let b = start_on(&[], redis_storage(&server)).await;
    for (app, value) in [(&a, 1.0), (&b, 2.0), (&a, 3.0)] {
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(value))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    }
    a.send_body("POST", "/event", &[JSON], event(7, "login", "ios"))
        .await;
    b.send_body("POST", "/event", &[JSON], event(8, "login", "web"))
        .await;
    for app in [&a, &b] {
        let s = app
            .send("GET", "/api/metrics/summary?type=cpu_usage", &[])
            .await
            .json();
        assert_eq!(
            (
                s["count"].clone(),
                s["average"].clone(),
                s["min"].clone(),
                s["max"].clone()
            ),
            (json!(3), json!(2.0), json!(1.0), json!(3.0))
        );
        assert_eq!(s["latest"], 3.0, "the last of equal timestamps");
        assert_eq!(
            app.send("GET", "/stats/login", &[]).await.json()["count"],
            2
        );
        let d = app.send("GET", "/api/v1/metrics/summary", &[]).await.json();
        assert_eq!(d["activeUsers"], 2);
        assert_eq!(d["activeUsersByPlatform"], json!({"ios": 1, "web": 1}));
    }
    health_is_connected(&a).await;

    // "Restart" instance a: a new app on the same Redis sees everything accepted before.
    drop(a);
    let a = start_on(&[], redis_storage(&server)).await;
    let list = a.send("GET", "/api/metrics/list?type=cpu_usage", &[]).await;
    assert_eq!(list.headers["x-total-count"], "3");
    let values: Vec<f64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [1.0, 2.0, 3.0]);
}

async fn health_is_connected(app: &crate::TestApp) {
    let h = app.send("GET", "/health", &[]).await;
    assert_eq!(h.status, StatusCode::OK);
    assert_eq!(h.json()["redis_connected"], true);
}

#[tokio::test]
async fn rejections_counted_by_each_instance_reach_the_shared_count() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = start_on(&[], redis_storage(&server)).await;
    let b = start_on(&[], redis_storage(&server)).await;
    for app in [&a, &b, &b] {
        let r = app.send_body("POST", "/event", &[JSON], "{").await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    }
    // b's own count is written when b answers; a's within a second, by its background task.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let n = b.send("GET", "/api/v1/metrics/summary", &[]).await.json()["apiRejectedCount"]
            .as_u64()
            .unwrap();
        if n == 3 {
            break;
        }
        assert!(n < 3, "counted too many: {n}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "a's rejection never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The same writes into each store, then the same questions.
#[tokio::test]
async fn the_redis_store_answers_as_the_memory_store_does() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let memory = Storage::default();
    let redis = Storage::Redis(RedisStorage::open(&server.url(), Duration::from_secs(1)).unwrap());
    let now = chrono::Utc::now();
    for store in [&memory, &redis] {
        for (ago_min, value, kind) in [
            (30, 5.5, "cpu"),
            (90, -1.25, "cpu"),
            (60 * 30, 100.0, "cpu"),
            (5, 0.1, "mem"),
        ] {
            let m = Metric {
                timestamp: now - ChronoDuration::minutes(ago_min),
                value,
                metric_type: kind.to_owned(),
            };
            store.add_metric(&m).await.unwrap();
        }
        for (user, platform, ago_s) in [
            (1, "ios", 400),
            (2, "ios", 100),
            (2, "web", 50),
            (3, "ios", 10),
        ] {
            let e = EventRecord {
                user_id: user,
                event_type: "login".into(),
                platform: platform.into(),
            };
            store
                .record_event(&e, now - ChronoDuration::seconds(ago_s))
                .await
                .unwrap();
        }
        store
            .record_rejections(2, now - ChronoDuration::seconds(310))
            .await
            .unwrap();
        store
            .record_rejections(3, now - ChronoDuration::seconds(20))
            .await
            .unwrap();
    }
    let since = Some(now - ChronoDuration::days(1));
    assert_eq!(
        memory.summary("cpu", None).await.unwrap(),
        redis.summary("cpu", None).await.unwrap()
    );
    assert_eq!(
        memory.summary("cpu", since).await.unwrap(),
        redis.summary("cpu", since).await.unwrap()
    );
    let s = redis.summary("cpu", since).await.unwrap();
    assert_eq!((s.count, s.min, s.max, s.latest), (2, -1.25, 5.5, 5.5));
    assert_eq!(
        memory.summary("none", None).await.unwrap(),
        redis.summary("none", None).await.unwrap()
    );
    assert_eq!(
        memory.event_count("login").await.unwrap(),
        redis.event_count("login").await.unwrap()
    );
    let activity = redis.activity(now).await.unwrap();
    assert_eq!(memory.activity(now).await.unwrap(), activity);
    assert_eq!(
        activity.active_users, 2,
        "user 1 is older than five minutes"
    );
    assert_eq!(activity.rejected, 3);
    for (series, interval, points) in [
        (Series::ActiveUsers, 60, 10),
        (Series::ActiveUsers, 3600, 2),
        (Series::ApiRejections, 60, 8),
        (Series::ApiRejections, 300, 3),
        (Series::Metric("cpu".into()), 3600, 3),
        (Series::Metric("cpu".into()), 60, 100),
    ] {
        assert_eq!(
            memory
                .history(&series, interval, points, now)
                .await
                .unwrap(),
            redis.history(&series, interval, points, now).await.unwrap(),
            "{series:?} every {interval} s"
        );
    }
    let (total, page) = redis.metrics_page("cpu", 1, 5).await.unwrap();
    assert_eq!(total, 3);
    assert_eq!(page.len(), 2);
}

#[tokio::test]
async fn an_unreachable_redis_degrades_health_and_refuses_writes_honestly() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let app = start_on(&[], redis_storage(&server)).await;
    health_is_connected(&app).await;
    server.kill();
    let h = app.send("GET", "/health", &[]).await;
    assert_eq!(h.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.json()["status"], "degraded");
    assert_eq!(h.json()["redis_connected"], false);
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("storage unavailable")
    );
    // #17: the answer tells nothing of the deployment (the cause is logged instead).
    assert_eq!(
        r.json()["detail"],
        "storage unavailable; try again shortly",
        "{}",
        r.body
    );
    let r = app
        .send_body("POST", "/event", &[JSON], event(1, "login", "ios"))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    // Redis back (empty: the test server keeps nothing): writes are accepted again, by themselves.
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(2.0))
            .await;
        if r.status == StatusCode::CREATED {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never recovered: {}",
            r.body
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    health_is_connected(&app).await;
}

#[tokio::test]
async fn two_instances_share_the_per_client_limit() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = start_on(&[], redis_storage(&server)).await;
    let b = start_on(&[], redis_storage(&server)).await;
    let mut created = 0;
    let mut refused = 0;
    for i in 0..12 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(f64::from(i)))
            .await;
        match r.status {
            StatusCode::CREATED => created += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(r.json()["detail"], "Too many requests");
                assert_eq!(r.headers["ratelimit-policy"], r#""metrics";q=10;w=60"#);
            }
            other => panic!("{other}: {}", r.body),
        }
    }
    assert_eq!(
        (created, refused),
        (10, 2),
        "10 in total across both instances"
    );
    assert_eq!(
        a.send("GET", "/api/metrics/list?type=cpu_usage", &[])
            .await
            .headers["x-total-count"],
        "10"
    );
    // The limit lives in Redis under the example's prefix, one key per limiter and client.
    let keys = server.command("KEYS analytics:rl:*");
    assert!(
        keys.contains("analytics:rl:gcra:10/60s:{metrics/"),
        "{keys}"
    );
}

#[tokio::test]
async fn while_redis_is_down_the_failure_policy_decides() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let closed = start_on(
        &[("RATE_LIMIT_FAILURE_POLICY", "closed")],
        redis_storage(&server),
    )
    .await;
    let local = start_on(&[], redis_storage(&server)).await;
    server.kill();
    let r = closed
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json()["detail"],
        "Rate limiting is unavailable; try again shortly"
    );
    // Local: the limit is kept in memory, and the write itself fails honestly (nothing stored).
    let r = local
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.json()["detail"]
            .as_str()
            .unwrap()
            .contains("storage unavailable"),
        "{}",
        r.body
    );
    assert!(
        r.headers.contains_key("ratelimit"),
        "counted by the local limiter"
    );
}

#[tokio::test]
async fn with_redis_the_external_circuit_is_shared_by_every_instance() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let vars = [
        ("EXTERNAL_SERVICE_FAILURE_RATE", "1.0"),
        ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2"),
        ("CIRCUIT_BREAKER_RESET_TIMEOUT", "60"),
    ];
    let a = start_on(&vars, redis_storage(&server)).await;
    let b = start_on(&vars, redis_storage(&server)).await;
    for _ in 0..2 {
        let r = a.send("GET", "/external", &[]).await.json();
        assert_eq!(r["circuit_open"], false, "the failures themselves");
    }
    // Instance b has made no call, yet refuses once the trip has reached it (a sync interval).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let s = b
            .send("GET", "/api/circuit-breaker/status", &[])
            .await
            .json();
        if s["state"] == "OPEN" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never shared: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = b.send("GET", "/external", &[]).await.json();
    assert_eq!(r["circuit_open"], true);
    assert!(b.state.breaker.is_shared());
}

#[tokio::test]
async fn with_redis_cached_summaries_and_their_invalidation_are_shared() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = start_on(&[], redis_storage(&server)).await;
    let b = start_on(&[], redis_storage(&server)).await;
    a.send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    let summary = async |app: &crate::TestApp| {
        let r = app
            .send("GET", "/api/metrics/summary?type=cpu_usage", &[])
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        (
            r.headers["x-cache"].to_str().unwrap().to_owned(),
            r.json()["count"].as_u64().unwrap(),
        )
    };
    assert_eq!(summary(&a).await, ("MISS".into(), 1));
    // The layer answers first and writes behind: wait for the entry to be in Redis.
    server.until_one_key(SUMMARY_ENTRIES).await;
    assert_eq!(
        summary(&b).await,
        ("HIT".into(), 1),
        "computed by a, served to b"
    );
    // A metric stored through b drops the summary for a too.
    b.send_body("POST", "/api/metrics", &[JSON], metric(3.0))
        .await;
    assert_eq!(summary(&a).await, ("MISS".into(), 2));
    server.until_one_key(SUMMARY_ENTRIES).await;
    assert_eq!(summary(&b).await, ("HIT".into(), 2));
}

/// Issue 14's outage, as an operator saw it: Redis behind a proxy that makes every open
/// connection go silent (no RST, no FIN) while new ones work. Before, health said `degraded` and
/// writes answered 503 for as long as the kernel kept the socket (minutes); now the connection
/// the limiters, the cache and the storage share is replaced, and the app is healthy again well
/// within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_healthy_again_soon_after_its_redis_connection_goes_silent() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = crate::common::fault_proxy::FaultProxy::start(server.addr()).await;
    let storage = Arc::new(Storage::Redis(
        RedisStorage::open(&proxy.url(), Duration::from_millis(500)).unwrap(),
    ));
    let app = start_on(&[], storage).await;
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    health_is_connected(&app).await;

    proxy.freeze();
    let frozen = std::time::Instant::now();
    let h = app.send("GET", "/health", &[]).await;
    assert_eq!(h.json()["status"], "degraded", "the silence is noticed");
    let mut healthy = None;
    for _ in 0..150 {
        let h = app.send("GET", "/health", &[]).await;
        if h.status == StatusCode::OK {
            healthy = Some(frozen.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let healthy = healthy.expect("healthy again within 15 s of the freeze");
    assert!(healthy < Duration::from_secs(15), "{healthy:?}");
    eprintln!("healthy again {healthy:?} after the freeze");
    health_is_connected(&app).await;
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(2.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let s = app
        .send("GET", "/api/metrics/summary?type=cpu_usage", &[])
        .await
        .json();
    assert_eq!(s["count"], 2, "both writes stored, once each: {s}");
}

/// #17: with Redis stalled (a proxy holds every byte for 2 s, then delivers them), writes answered
/// 503 were stored anyway once Redis ran them, so a client that retried stored them twice. The
/// storage's writes are fenced now: a 503 means nothing was stored, a 201 that it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_503_is_never_stored() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = crate::common::fault_proxy::FaultProxy::start(server.addr()).await;
    let storage = Arc::new(Storage::Redis(
        RedisStorage::open(&proxy.url(), Duration::from_millis(300)).unwrap(),
    ));
    let app = start_on(&[("RATE_LIMIT_REQUESTS", "1000")], storage).await;
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let before = server.calls("evalsha") + server.calls("eval");

    proxy.pause();
    let mut refused = 0;
    for i in 0..6 {
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(10.0 + f64::from(i)))
            .await;
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        refused += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.forward();

    // The held writes reach Redis and run there: wait until they have (bounded), then count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.calls("evalsha") + server.calls("eval") < before + refused {
        assert!(
            std::time::Instant::now() < deadline,
            "the held writes never reached redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut healthy = false;
    for _ in 0..100 {
        if app.send("GET", "/health", &[]).await.status == StatusCode::OK {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "healthy again after the stall");
    let s = app
        .send(
            "GET",
            "/api/metrics/summary?type=cpu_usage",
            &[("cache-control", "no-cache")],
        )
        .await
        .json();
    assert_eq!(s["count"], 1, "only the acknowledged write is stored: {s}");
}

/// A write whose acknowledgement was still on its way back when the request timed out was
/// answered 408 though Redis had stored it (tower-http's timeout dropped the handler mid-write),
/// and a client that retried the 408 stored it twice. The request timeout stops at a begun write
/// now: the client gets the write's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_acknowledged_after_the_request_timeout_is_answered_for_itself() {
    let Some((_server, proxy, app)) = behind_a_proxy(&[("REQUEST_TIMEOUT_SECONDS", "1")]).await
    else {
        return;
    };

    // The write of this value runs in Redis; its answer (and every later one) is held for 1.8 s,
    // past the 1 s request timeout.
    proxy.hold_replies_after(b"271828");
    let started = std::time::Instant::now();
    let (r, ()) = tokio::join!(
        app.send_body("POST", "/api/metrics", &[JSON], metric(271_828.0)),
        async {
            tokio::time::sleep(Duration::from_millis(1800)).await;
            proxy.forward();
        }
    );
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::CREATED, "after {took:?}: {}", r.body);
    assert!(took >= Duration::from_millis(1800), "{took:?}");
    assert_eq!(
        summary_count(&app, &[("cache-control", "no-cache")]).await,
        2,
        "the acknowledged write is stored, once"
    );
}

/// Redis behind a fault proxy and the app on it (`vars`, a generous limit, a 5 s store timeout),
/// one metric stored through it (the backend has learned Redis's clock, which fences its writes);
/// `None` without a `redis-server`.
async fn behind_a_proxy(
    vars: &[(&str, &str)],
) -> Option<(
    RedisServer,
    crate::common::fault_proxy::FaultProxy,
    crate::TestApp,
)> {
    let server = RedisServer::start()?;
    let proxy = crate::common::fault_proxy::FaultProxy::start(server.addr()).await;
    let storage = Arc::new(Storage::Redis(
        RedisStorage::open(&proxy.url(), Duration::from_secs(5)).unwrap(),
    ));
    let mut vars = vars.to_vec();
    vars.push(("RATE_LIMIT_REQUESTS", "1000"));
    let app = start_on(&vars, storage).await;
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    Some((server, proxy, app))
}

/// The `cpu_usage` summary's count, asked with `headers`.
async fn summary_count(app: &crate::TestApp, headers: &[(&str, &str)]) -> u64 {
    let s = app
        .send("GET", "/api/metrics/summary?type=cpu_usage", headers)
        .await
        .json();
    s["count"].as_u64().unwrap_or_else(|| panic!("{s}"))
}

/// A client that went away mid-write took the handler with it (the server drops a request whose
/// connection closed): the metric was stored, and its cached summaries were not dropped (stale
/// until their TTL). The write and the invalidation it calls for now run to their end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_client_went_away_still_drops_the_cached_summaries() {
    use tokio::io::AsyncWriteExt;

    let Some((server, proxy, app)) = behind_a_proxy(&[]).await else {
        return;
    };
    assert_eq!(summary_count(&app, &[]).await, 1);
    // The cache answers first and writes behind: wait for the entry to be in Redis.
    server.until_one_key(SUMMARY_ENTRIES).await;

    // The write of this value runs in Redis; its answer is held while its client goes away.
    proxy.hold_replies_after(b"271828");
    let body = metric(271_828.0);
    let mut client = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/metrics HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(body.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(client);
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.forward();
    // The acknowledgement comes now; the invalidation follows (bounded: 5 s).
    let seen = crate::common::until_it_answers(2, || summary_count(&app, &[])).await;
    assert_eq!(
        seen, 2,
        "the stored metric, its summary no longer the cached one"
    );
}

/// #17: the cached sensor breakdown was keyed by the raw query string, so junk query strings each
/// made an entry (and index members) in Redis. It reads no parameter, and now has one entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_query_strings_leave_the_cache_in_redis_flat() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let app = start_on(&[], redis_storage(&server)).await;
    let count = |server: &RedisServer| -> usize {
        // `*<n>` heads the reply to KEYS: the number of names.
        let reply = server.command("KEYS analytics:cache:sensors:*");
        reply.lines().next().unwrap()[1..].parse().unwrap()
    };
    let r = app.send("GET", "/api/v1/sensors/type-breakdown", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    server.until_one_key("analytics:cache:sensors:*:e:*").await;
    let names = count(&server);
    for i in 0..50 {
        let junk = format!("{i}{}", "x".repeat(200));
        let r = app
            .send(
                "GET",
                &format!("/api/v1/sensors/type-breakdown?junk={junk}"),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.until_one_key("analytics:cache:sensors:*:e:*").await;
    assert_eq!(
        count(&server),
        names,
        "junk query strings made names in redis"
    );
}

/// #17: attacker-chosen platforms and event types grew Redis without bound, and the dashboard's
/// summary counted every platform inside one script (64.6 ms of Redis at 20,000 platforms). Past
/// the first `MAX_PLATFORMS` platforms and `MAX_EVENT_TYPES` event types, events count as `other`,
/// in Redis and in memory alike: the sets stay bounded, and so does the summary's cost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cardinality_flood_leaves_the_sets_and_the_summary_bounded() {
    use crate::storage::{MAX_EVENT_TYPES, MAX_PLATFORMS, OTHER};
    let Some(server) = RedisServer::start() else {
        return;
    };
    let now = chrono::Utc::now();
    let flood = |i: usize| EventRecord {
        user_id: i as u64,
        event_type: format!("type-{}", i % (MAX_EVENT_TYPES + 500)),
        platform: format!("platform-{i}"),
    };
    let n = MAX_EVENT_TYPES + 500;
    for storage in [redis_storage(&server), Arc::new(Storage::default())] {
        for i in 0..n {
            storage.record_event(&flood(i), now).await.unwrap();
        }
        let activity = storage.activity(now).await.unwrap();
        assert!(
            activity.by_platform.len() <= MAX_PLATFORMS + 1,
            "{} platforms told apart",
            activity.by_platform.len()
        );
        assert_eq!(
            activity.by_platform.get(OTHER).copied(),
            Some((n - MAX_PLATFORMS) as u64),
            "the rest count as other"
        );
        assert_eq!(activity.active_users, n as u64, "every user still counts");
        assert_eq!(storage.event_count("type-1").await.unwrap(), 1);
        assert_eq!(
            storage.event_count(OTHER).await.unwrap(),
            500,
            "event types past the bound count as other"
        );
    }
    let scard: u64 = server.command("SCARD analytics:platforms")[1..]
        .parse()
        .unwrap();
    assert!(
        scard <= MAX_PLATFORMS as u64 + 1,
        "{scard} platforms in redis"
    );
    let hlen: u64 = server.command("HLEN analytics:event_counts")[1..]
        .parse()
        .unwrap();
    assert!(
        hlen <= MAX_EVENT_TYPES as u64 + 1,
        "{hlen} event types in redis"
    );
}

/// #17: huge finite values made a summary's `average` infinite (JSON `null`) in memory, and in
/// Redis the sum's overflow refused the write. Averages are running means now: finite for any
/// finite values, in memory and in Redis alike.
#[tokio::test]
async fn huge_finite_values_keep_the_average_finite() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for storage in [redis_storage(&server), Arc::new(Storage::default())] {
        for value in [f64::MAX, f64::MAX, -1.0e308, 1.0e308] {
            let m = Metric {
                timestamp: chrono::Utc::now(),
                value,
                metric_type: "huge".into(),
            };
            storage.add_metric(&m).await.expect("stored");
        }
        let s = storage.summary("huge", None).await.unwrap();
        assert_eq!(s.count, 4);
        assert!(s.average.is_finite(), "average {}", s.average);
        let expected = f64::MAX / 2.0; // (2 MAX - 1e308 + 1e308) / 4
        assert!(
            (s.average - expected).abs() / expected < 1e-9,
            "average {} vs {expected}",
            s.average
        );
    }
}

/// #17: an `offset` of 2^63 or more answered 503 with Redis's error text in Redis mode (Redis takes
/// no such offset). Past the end, a page is empty, in Redis as in memory.
#[tokio::test]
async fn a_huge_offset_is_an_empty_page_not_a_503() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let app = start_on(&[], redis_storage(&server)).await;
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for offset in ["1", "9223372036854775808", "18446744073709551615"] {
        let r = app
            .send(
                "GET",
                &format!("/api/metrics/list?type=cpu_usage&offset={offset}"),
                &[],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "offset {offset}: {}", r.body);
        assert_eq!(r.json(), json!([]), "offset {offset}");
    }
}

/// What a store keeping 3 metrics holds after six writes (of types a, b, a, a, c, a; their
/// timestamps out of submission order): the oldest submitted, of any type, are forgotten, a type
/// left with none is forgotten with its aggregate, and no write is refused for room.
async fn keeps_the_newest_submitted(name: &str, storage: &Storage) {
    let t0 = chrono::Utc::now();
    let metric = |i: i64, kind: &str, at: i64| Metric {
        timestamp: t0 + ChronoDuration::seconds(at),
        value: i as f64,
        metric_type: kind.into(),
    };
    let writes = [
        (0, "a", 5),
        (1, "b", 0),
        (2, "a", 9),
        (3, "a", 1),
        (4, "c", 3),
        (5, "a", 2),
    ];
    let mut forgotten = Vec::new();
    for (i, kind, at) in writes {
        forgotten.push(
            storage
                .add_metric(&metric(i, kind, at))
                .await
                .unwrap_or_else(|e| panic!("{name}: write {i} refused: {e}")),
        );
    }
    let none: Vec<String> = Vec::new();
    let types = |t: &[&str]| t.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    assert_eq!(
        forgotten,
        vec![
            none.clone(),
            none.clone(),
            none,
            types(&["a"]),
            types(&["b"]),
            types(&["a"])
        ],
        "{name}: each write past the bound names the type it took room from"
    );
    // Kept: a3, c4, a5, in submission order whatever their timestamps.
    let (total, newest) = storage.newest_metrics(10).await.unwrap();
    let kept: Vec<(String, f64)> = newest
        .into_iter()
        .map(|m| (m.metric_type, m.value))
        .collect();
    let expected = [("a", 3.0), ("c", 4.0), ("a", 5.0)].map(|(t, v)| (t.to_owned(), v));
    assert_eq!((total, kept), (3, expected.to_vec()), "{name}");
    let (_, two) = storage.newest_metrics(2).await.unwrap();
    let two: Vec<f64> = two.iter().map(|m| m.value).collect();
    assert_eq!(two, vec![4.0, 5.0], "{name}: the newest two, oldest first");
    let (total, page) = storage.metrics_page("a", 0, 10).await.unwrap();
    let mut values: Vec<f64> = page.iter().map(|m| m.value).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(
        (total, values),
        (2, vec![3.0, 5.0]),
        "{name}: a's oldest two forgotten"
    );
    assert_eq!(
        storage.metrics_page("b", 0, 10).await.unwrap().0,
        0,
        "{name}"
    );
    let b = storage.summary("b", None).await.unwrap();
    assert_eq!(
        (b.count, b.latest),
        (0, 0.0),
        "{name}: b's aggregate forgotten"
    );
    // A type still kept keeps its all-time aggregate; a period summary reads what is kept.
    let a = storage.summary("a", None).await.unwrap();
    assert_eq!(
        (a.count, a.min, a.max),
        (4, 0.0, 5.0),
        "{name}: all of a's four"
    );
    let kept = storage.summary("a", Some(t0)).await.unwrap();
    assert_eq!((kept.count, kept.min), (2, 3.0), "{name}: a's kept two");
}

/// The stores kept every metric up to 1,000,000 and then refused every write with 503, for good:
/// an outage normal traffic reached in hours. Past the bound they now forget the oldest metric
/// stored instead; in memory (this test needs no Redis) as in Redis (the next).
#[tokio::test]
async fn past_the_bound_the_memory_store_forgets_the_oldest_metrics() {
    keeps_the_newest_submitted("memory", &Storage::memory_keeping(3)).await;
}

/// [`past_the_bound_the_memory_store_forgets_the_oldest_metrics`] in Redis; and a lowered bound
/// is reached over the next writes, each forgetting at most 100.
#[tokio::test]
async fn past_the_bound_the_redis_store_forgets_the_oldest_metrics() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = |kept| {
        Storage::Redis(
            RedisStorage::open(&server.url(), Duration::from_millis(500))
                .unwrap()
                .keeping(kept),
        )
    };
    keeps_the_newest_submitted("redis", &redis(3)).await;
    let llen = || -> u64 {
        server.command("LLEN analytics:metric_order")[1..]
            .parse()
            .unwrap()
    };
    assert_eq!(llen(), 3, "redis keeps no more entries than metrics");

    let metric = |i: usize| Metric {
        timestamp: chrono::Utc::now(),
        value: i as f64,
        metric_type: format!("t{}", i % 7),
    };
    let roomy = redis(150);
    for i in 0..150 {
        roomy.add_metric(&metric(i)).await.unwrap();
    }
    assert_eq!(llen(), 150);
    let lowered = redis(1);
    lowered.add_metric(&metric(150)).await.unwrap();
    assert_eq!(llen(), 51, "one write forgets at most 100");
    let forgotten = lowered.add_metric(&metric(151)).await.unwrap();
    assert_eq!(llen(), 1, "the next one reaches the bound");
    assert_eq!(forgotten.len(), 7, "every type lost metrics: {forgotten:?}");
    let (total, newest) = lowered.newest_metrics(10).await.unwrap();
    assert_eq!((total, newest.len()), (1, 1));
    assert_eq!(newest[0].value, 151.0);
    assert_eq!(lowered.metrics_page("a", 0, 10).await.unwrap().0, 0);
    for t in ["a", "b", "c", "t0", "t1", "t2", "t3", "t5", "t6"] {
        assert_eq!(
            server.command(&format!("EXISTS analytics:metric_agg:{t}")),
            ":0",
            "{t}'s aggregate deleted in redis"
        );
    }
    assert_eq!(
        server.command("EXISTS analytics:metric_agg:t4"),
        ":1",
        "the kept metric's type keeps its aggregate"
    );
}

/// A write that makes room by forgetting another type's metrics drops that type's cached
/// summaries too: they were served, counts and all, for up to `CACHE_TTL_SECONDS` after the
/// metrics were gone.
#[tokio::test]
async fn a_write_that_forgets_a_type_drops_its_cached_summaries() {
    let app = start_on(
        &[("RATE_LIMIT_REQUESTS", "100")],
        Arc::new(Storage::memory_keeping(1)),
    )
    .await;
    let body =
        |kind: &str| format!(r#"{{"timestamp":"2026-02-21T12:00:00Z","value":1,"type":"{kind}"}}"#);
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], body("first"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let summary = "/api/metrics/summary?type=first";
    assert_eq!(app.send("GET", summary, &[]).await.json()["count"], 1);
    let cached = app.send("GET", summary, &[]).await;
    assert_eq!(cached.headers["x-cache"], "HIT");

    let r = app
        .send_body("POST", "/api/metrics", &[JSON], body("second"))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let after = app.send("GET", summary, &[]).await;
    assert_eq!(
        after.headers["x-cache"], "MISS",
        "the forgotten type's summary was dropped"
    );
    assert_eq!(after.json()["count"], 0);
}

/// Redis data corrupted by hand or by another program: an aggregate that is not a number is
/// rebuilt from the type's metrics before a write (the write is stored and acknowledged, the
/// summary right), and a member that does not decode is left out of lists rather than failing
/// them.
#[tokio::test]
async fn corrupt_aggregates_are_rebuilt_and_corrupt_members_left_out() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let app = start_on(&[], redis_storage(&server)).await;
    let submit = async |v: f64| {
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(v))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    };
    let summary = async || {
        app.send("GET", "/api/metrics/summary?type=cpu_usage", &[])
            .await
            .json()
    };
    submit(1.0).await;
    submit(5.0).await;
    server.command("HSET analytics:metric_agg:cpu_usage min x");
    submit(3.0).await;
    let s = summary().await;
    assert_eq!(
        (
            s["count"].clone(),
            s["min"].clone(),
            s["max"].clone(),
            s["latest"].clone()
        ),
        (json!(3), json!(1.0), json!(5.0), json!(3.0)),
        "{s}"
    );
    // A count that is not a whole number (HINCRBY would fail after the metric's writes), and a
    // field in a form the service does not read: rebuilt too.
    for (field, value) in [("count", "2.5"), ("max", "0x10")] {
        server.command(&format!(
            "HSET analytics:metric_agg:cpu_usage {field} {value}"
        ));
        submit(4.0).await;
        assert_eq!(summary().await["max"], 5.0);
    }
    // Another type of key where the aggregate goes: rebuilt too.
    server.command("DEL analytics:metric_agg:cpu_usage");
    server.command("SET analytics:metric_agg:cpu_usage junk");
    submit(2.0).await;
    let s = summary().await;
    assert_eq!(
        (s["count"].clone(), s["latest"].clone()),
        (json!(6), json!(2.0)),
        "{s}"
    );
    // Members that do not decode, in the submission order and in the type's set.
    server.command(r#"LPUSH analytics:metric_order "cpu_usage\ngarbage""#);
    server.command("LPUSH analytics:metric_order no-newline");
    server.command("ZADD analytics:metrics:cpu_usage 1771675200000 not-json");
    for path in ["/api/metrics/list", "/api/metrics/list?type=cpu_usage"] {
        let r = app.send("GET", path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        assert_eq!(r.json().as_array().unwrap().len(), 6, "{path}: {}", r.body);
    }
}
