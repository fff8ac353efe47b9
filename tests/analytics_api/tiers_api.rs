//! API-key tiers (#18) over real HTTP: a known key is limited per key at its tier's quota, anything
//! else (no key, an unknown key) per client IP at the default limit; shadow mode admits everything
//! and counts the refusals it would have made; bad tier variables stop start-up, naming the
//! variable and the item and never showing a key. In memory and on Redis.

use http::StatusCode;

use crate::common::http::{Reply, Served};
use crate::common::redis::RedisServer;
use crate::process::{run_example, start_up_error};
use crate::redis_storage::redis_storage;
use crate::{JSON, metric, start, start_on};

const FREE: &str = "free-0123456789abcdef";
const PRO: &str = "pro-fedcba9876543210";
/// Keys no one was given.
const GUESSES: [&str; 6] = [
    "guess-0000000000000001",
    "guess-0000000000000002",
    "guess-0000000000000003",
    "guess-0000000000000004",
    "guess-0000000000000005",
    "free-0123456789abcdeF",
];

const API_KEYS: &str = "free-0123456789abcdef=free,pro-fedcba9876543210=pro";

/// Free keys 3 a minute, pro keys 1000 an hour (one more every 3.6 s, so that none is added while
/// a test runs); anyone else the default 10 a minute. The tests' requests
/// all come from 127.0.0.1, which is trusted to name the client in `X-Forwarded-For`.
const TIERED: &[(&str, &str)] = &[
    ("TIER_QUOTAS", "free=3/60s,pro=1000/3600s"),
    ("API_KEYS", API_KEYS),
    ("TRUSTED_PROXIES", "127.0.0.1"),
];

/// A metric submission from the client at `ip`, with `key` as its `X-API-Key` if any.
async fn submit(app: &Served, key: Option<&str>, ip: &str) -> Reply {
    let mut headers = vec![JSON, ("x-forwarded-for", ip)];
    if let Some(key) = key {
        headers.push(("x-api-key", key));
    }
    let r = app
        .send_body("POST", "/api/metrics", &headers, metric(1.0))
        .await;
    if let Some(key) = key {
        let headers = format!("{:?}", r.headers);
        assert!(
            !headers.contains(key) && !r.body.contains(key),
            "the answer shows the key: {headers} {}",
            r.body
        );
    }
    r
}

/// Asserts `r` was admitted under the policy `policy` with `remaining` left.
fn admitted(r: &Reply, policy: &str, remaining: u32) {
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.headers["ratelimit-policy"], policy);
    let quota = r.headers["ratelimit"].to_str().unwrap();
    let name = policy.split(';').next().unwrap();
    assert!(
        quota.starts_with(&format!("{name};r={remaining};t=")),
        "{quota}"
    );
}

/// Asserts `r` was refused under `policy`, to retry after `retry_after` seconds.
fn refused(r: &Reply, policy: &str, retry_after: &str) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.json()["detail"], "Too many requests");
    assert_eq!(r.headers["ratelimit-policy"], policy);
    assert_eq!(r.headers["retry-after"], retry_after);
}

const FREE_POLICY: &str = r#""free";q=3;w=60"#;
const PRO_POLICY: &str = r#""pro";q=1000;w=3600"#;
const DEFAULT_POLICY: &str = r#""metrics";q=10;w=60"#;

/// Known keys at their tiers, on instance `a` and `b` (the same app in memory; two instances on
/// one Redis, which must share each key's quota).
async fn known_keys_are_limited_at_their_tier(a: &Served, b: &Served) {
    // The free key: 3, then refused (one more every 20 s), wherever it comes from.
    for (i, app) in [a, b, a].into_iter().enumerate() {
        admitted(
            &submit(app, Some(FREE), "203.0.113.9").await,
            FREE_POLICY,
            2 - i as u32,
        );
    }
    refused(
        &submit(b, Some(FREE), "203.0.113.9").await,
        FREE_POLICY,
        "20",
    );
    refused(
        &submit(a, Some(FREE), "198.51.100.7").await,
        FREE_POLICY,
        "20",
    );
    // The pro key from the same address: far past the free quota and the default one.
    for i in 0..30 {
        let app = if i % 2 == 0 { a } else { b };
        admitted(
            &submit(app, Some(PRO), "203.0.113.9").await,
            PRO_POLICY,
            999 - i,
        );
    }
    // The keys spent nothing of the address's own quota: its first request without a key has 9 left.
    admitted(&submit(a, None, "203.0.113.9").await, DEFAULT_POLICY, 9);
    // Everything admitted is stored; nothing refused is.
    let list = a
        .send("GET", "/api/metrics/list?type=cpu_usage&limit=1", &[])
        .await;
    assert_eq!(list.headers["x-total-count"], "34");
}

#[tokio::test]
async fn known_keys_are_limited_at_their_tier_in_memory() {
    let app = start(TIERED).await;
    known_keys_are_limited_at_their_tier(&app, &app).await;
}

#[tokio::test]
async fn known_keys_are_limited_at_their_tier_on_redis_shared_by_instances() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let a = start_on(TIERED, redis_storage(&server)).await;
    let b = start_on(TIERED, redis_storage(&server)).await;
    known_keys_are_limited_at_their_tier(&a, &b).await;
    // Redis holds the key's state under its digest only.
    let mut conn = server.connection().await;
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        names
            .iter()
            .all(|n| !n.contains(FREE) && !n.contains(PRO) && !n.contains("0123456789abcdef")),
        "{names:?}"
    );
}

/// No key and unknown keys: one quota per client address, whatever keys it invents.
async fn anything_else_is_limited_per_ip(app: &Served) {
    for i in 0..10u32 {
        // Alternately no key and an invented one: all count against 203.0.113.9.
        let key = (i % 2 == 1).then(|| GUESSES[(i as usize / 2) % GUESSES.len()]);
        admitted(
            &submit(app, key, "203.0.113.9").await,
            DEFAULT_POLICY,
            9 - i,
        );
    }
    for key in [None, Some(GUESSES[0]), Some(GUESSES[5])] {
        refused(&submit(app, key, "203.0.113.9").await, DEFAULT_POLICY, "6");
    }
    // Another address has its own quota, with or without a key no one was given.
    admitted(
        &submit(app, Some(GUESSES[1]), "198.51.100.7").await,
        DEFAULT_POLICY,
        9,
    );
    admitted(&submit(app, None, "198.51.100.7").await, DEFAULT_POLICY, 8);
}

#[tokio::test]
async fn no_key_and_unknown_keys_are_limited_per_ip_in_memory() {
    let app = start(TIERED).await;
    anything_else_is_limited_per_ip(&app).await;
}

#[tokio::test]
async fn no_key_and_unknown_keys_are_limited_per_ip_on_redis_with_no_state_per_key() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let app = start_on(TIERED, redis_storage(&server)).await;
    anything_else_is_limited_per_ip(&app).await;
    // Two addresses, two limiter entries: the six invented keys made none.
    let mut conn = server.connection().await;
    let mut names: Vec<String> = redis::cmd("KEYS")
        .arg("analytics:rl:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].ends_with("{metrics/198.51.100.7}"), "{names:?}");
    assert!(names[1].ends_with("{metrics/203.0.113.9}"), "{names:?}");
}

#[tokio::test]
async fn without_api_keys_a_key_header_changes_nothing() {
    let app = start(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    for i in 0..10 {
        admitted(
            &submit(&app, Some(FREE), "203.0.113.9").await,
            DEFAULT_POLICY,
            9 - i,
        );
    }
    refused(
        &submit(&app, Some(FREE), "203.0.113.9").await,
        DEFAULT_POLICY,
        "6",
    );
    refused(
        &submit(&app, None, "203.0.113.9").await,
        DEFAULT_POLICY,
        "6",
    );
}

/// The value of the Prometheus counter `name` whose labels include every one of `labels`.
fn counter(metrics: &str, name: &str, labels: &[&str]) -> Option<u64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix('{')?;
        let (set, value) = rest.split_once("} ")?;
        labels
            .iter()
            .all(|l| set.split(',').any(|p| p == *l))
            .then(|| value.trim().parse().unwrap())
    })
}

/// Shadow mode in the example binary (a process of its own, so its `/metrics` counts only this
/// test's requests): everything is admitted and stored, and the counter shows exactly the refusals
/// the limits would have made, by limiter and tier.
async fn shadow_mode_admits_everything_and_counts_would_be_refusals(redis: Option<&RedisServer>) {
    let url = redis.map(RedisServer::url);
    let mut vars = vec![
        ("TIER_QUOTAS", "free=3/60s,pro=1000/3600s"),
        ("API_KEYS", API_KEYS),
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("RATE_LIMIT_REQUESTS", "2"),
        ("API_V1_RATE_LIMIT", "1"),
        ("RATE_LIMIT_SHADOW", "1"),
        ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
        // Everything the app logs, to check that no key is among it.
        ("RUST_LOG", "debug"),
    ];
    if let Some(url) = &url {
        vars.push(("REDIS_URL", url));
    }
    let app = run_example(&vars).await;
    // The free key 5 times (2 over), the pro key 5 (none over), no key 4 times (2 over).
    for (key, n) in [(Some(FREE), 5), (Some(PRO), 5), (None, 4)] {
        for _ in 0..n {
            let r = submit(&app, key, "203.0.113.9").await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        }
    }
    // Every limiter, not only the tiered one: the dashboard's one a minute, asked three times.
    for _ in 0..3 {
        let r = app
            .send(
                "GET",
                "/api/v1/modules",
                &[("x-forwarded-for", "203.0.113.9")],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    let list = app
        .send("GET", "/api/metrics/list?type=cpu_usage&limit=1", &[])
        .await;
    assert_eq!(list.headers["x-total-count"], "14", "every one stored");
    let metrics = app.send("GET", "/metrics", &[]).await.body;
    const SHADOW: &str = "rampart_rate_limit_shadow_rejected_total";
    assert_eq!(
        counter(&metrics, SHADOW, &[r#"name="metrics""#, r#"policy="free""#]),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            SHADOW,
            &[r#"name="metrics""#, r#"policy="metrics""#]
        ),
        Some(2),
        "{metrics}"
    );
    assert_eq!(
        counter(&metrics, SHADOW, &[r#"name="metrics""#, r#"policy="pro""#]).unwrap_or(0),
        0,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            SHADOW,
            &[r#"name="api_v1""#, r#"policy="api_v1""#]
        ),
        Some(2),
        "{metrics}"
    );
    assert!(
        !metrics.contains("rampart_rate_limit_rejected_total{"),
        "nothing refused for real: {metrics}"
    );
    let logs = app.logs();
    assert!(logs.contains("analytics_api listening"), "{logs}");
    for text in [&metrics, &logs] {
        assert!(
            !text.contains(FREE) && !text.contains(PRO),
            "a key is shown: {text}"
        );
    }
}

#[tokio::test]
async fn shadow_mode_admits_everything_and_counts_would_be_refusals_in_memory() {
    shadow_mode_admits_everything_and_counts_would_be_refusals(None).await;
}

#[tokio::test]
async fn shadow_mode_admits_everything_and_counts_would_be_refusals_on_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    shadow_mode_admits_everything_and_counts_would_be_refusals(Some(&server)).await;
}

#[test]
fn bad_tier_variables_stop_start_up_naming_the_item_and_never_the_key() {
    let quotas = ("TIER_QUOTAS", "free=10/60s,pro=1000/60s");
    for (vars, message) in [
        (
            vec![("TIER_QUOTAS", "free=0/60s")],
            r#"invalid TIER_QUOTAS: item 1 "free=0/60s": the limit must be at least 1 request"#,
        ),
        (
            vec![("TIER_QUOTAS", "free=10/60s,pro=5000000/1s")],
            r#"invalid TIER_QUOTAS: item 2 "pro=5000000/1s": more than 1000000 requests a second is no limit at all"#,
        ),
        (
            vec![("TIER_QUOTAS", "free=10/60s,,pro=1/1s")],
            "invalid TIER_QUOTAS: item 2 is empty (a comma too many?); expected tier=N/Ss, e.g. free=10/60s",
        ),
        (
            vec![quotas, ("API_KEYS", "free-0123456789abcdef=gold")],
            r#"invalid API_KEYS: item 1 (key hidden, tier "gold"): unknown tier: TIER_QUOTAS defines free, pro"#,
        ),
        (
            vec![
                quotas,
                (
                    "API_KEYS",
                    "free-0123456789abcdef=free,pro-fedcba9876543210=pro,free-0123456789abcdef=pro",
                ),
            ],
            "invalid API_KEYS: items 1 and 3 list the same key (key hidden)",
        ),
        (
            vec![quotas, ("API_KEYS", "free-0123456789abcdef=free,")],
            "invalid API_KEYS: item 2 is empty (a comma too many?); expected key=tier",
        ),
        (
            vec![("RATE_LIMIT_SHADOW", "on")],
            r#"invalid RATE_LIMIT_SHADOW: "on": expected 1 (shadow mode) or 0"#,
        ),
    ] {
        let err = start_up_error(&vars);
        assert_eq!(
            err.trim_end(),
            format!("analytics_api: {message}"),
            "{vars:?}"
        );
        assert!(!err.contains(FREE) && !err.contains(PRO), "{err}");
    }
}
