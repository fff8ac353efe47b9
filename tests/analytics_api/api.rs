//! Metrics and events: limits, validation, storage, request ids and health.

use http::StatusCode;

use crate::{JSON, config, event, metric, start};

#[tokio::test]
async fn twelve_posts_from_one_ip_store_exactly_ten() {
    let app = start(&[]).await;
    let mut statuses = Vec::new();
    for i in 0..12 {
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(f64::from(i)))
            .await;
        if i < 10 {
            assert_eq!(r.json()["message"], "Metric stored successfully");
            let quota = r.headers["ratelimit"].to_str().unwrap();
            assert!(
                quota.starts_with(&format!(r#""metrics";r={};t="#, 9 - i)),
                "admitted submissions tell the client its quota: {quota}"
            );
        } else {
            let body = r.json();
            assert_eq!(body["detail"], "Too many requests");
            assert_eq!(body["code"], "RATE_LIMITED");
            assert_eq!(r.headers["retry-after"], "6");
            assert_eq!(r.headers["ratelimit-policy"], r#""metrics";q=10;w=60"#);
            assert_eq!(r.headers["ratelimit"], r#""metrics";r=0;t=60"#);
        }
        statuses.push(r.status);
    }
    assert_eq!(statuses[..10], [StatusCode::CREATED; 10]);
    assert_eq!(statuses[10..], [StatusCode::TOO_MANY_REQUESTS; 2]);

    let list = app
        .send("GET", "/api/metrics/list?type=cpu_usage", &[])
        .await;
    assert_eq!(
        list.headers["x-total-count"], "10",
        "refused submissions are not stored"
    );
    assert_eq!(list.json().as_array().unwrap().len(), 10);
    let summary = app
        .send("GET", "/api/metrics/summary?metric_type=cpu_usage", &[])
        .await
        .json();
    assert_eq!(summary["count"], 10);
    assert_eq!(summary["average"], 4.5);
    assert_eq!(summary["min"], 0.0);
    assert_eq!(summary["max"], 9.0);
}

#[tokio::test]
async fn invalid_bodies_get_clear_errors_and_do_not_spend_quota() {
    let app = start(&[("RATE_LIMIT_REQUESTS", "2"), ("MAX_BODY_BYTES", "1024")]).await;
    // Every refusal a 422 (as FastAPI answers them), listing each problem with its field.
    let cases: [(&str, &str, &str); 7] = [
        ("{not json", "body", "JSON decode error"),
        (
            r#"{"timestamp":"2026-02-21T12:00:00Z","value":"high","type":"cpu"}"#,
            "value",
            "valid number",
        ),
        (
            r#"{"timestamp":"yesterday","value":1,"type":"cpu"}"#,
            "timestamp",
            "RFC 3339",
        ),
        (
            r#"{"timestamp":"2026-02-21T12:00:00Z","type":"cpu"}"#,
            "value",
            "Field required",
        ),
        (
            r#"{"timestamp":"2026-02-21T12:00:00Z","value":1,"type":""}"#,
            "type",
            "1 to 100 characters",
        ),
        (
            r#"{"timestamp":"2026-02-21T12:00:00Z","value":1,"type":"a\nb"}"#,
            "type",
            "control character",
        ),
        (
            r#"{"timestamp":"2026-02-21T12:00:00Z","value":1e999,"type":"cpu"}"#,
            "body",
            "JSON decode error",
        ),
    ];
    for (body, field, needle) in cases {
        let r = app.send_body("POST", "/api/metrics", &[JSON], body).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.body
        );
        let json = r.json();
        assert_eq!(json["code"], "VALIDATION_ERROR");
        let errors = json["errors"].as_array().unwrap();
        assert_eq!(
            json["detail"].as_array().unwrap(),
            errors,
            "FastAPI's key too"
        );
        assert_eq!(errors.len(), 1, "{body}: {errors:?}");
        assert_eq!(errors[0]["loc"].as_array().unwrap().last().unwrap(), field);
        let msg = errors[0]["msg"].as_str().unwrap();
        assert!(
            msg.contains(needle),
            "{body}: {msg:?} should mention {needle}"
        );
        assert!(json["message"].as_str().unwrap().contains(field));
    }
    // Several problems at once: each listed.
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], r#"{"value":"x"}"#)
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.json()["errors"].as_array().unwrap().len(),
        3,
        "{}",
        r.body
    );
    // Not JSON by its Content-Type (a cross-site form post): 415, before anything else.
    for content_type in [
        "application/x-www-form-urlencoded",
        "text/plain",
        "multipart/form-data; boundary=x",
    ] {
        let r = app
            .send_body(
                "POST",
                "/api/metrics",
                &[("content-type", content_type)],
                metric(1.0),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type}"
        );
        assert_eq!(r.json()["code"], "UNSUPPORTED_MEDIA_TYPE");
    }
    let r = app
        .send_body("POST", "/api/metrics", &[], metric(1.0))
        .await;
    assert_eq!(
        r.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "no Content-Type"
    );
    let huge = format!(
        r#"{{"timestamp":"2026-02-21T12:00:00Z","value":1,"type":"{}"}}"#,
        "a".repeat(4096)
    );
    let r = app.send_body("POST", "/api/metrics", &[JSON], huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(r.json()["code"], "PAYLOAD_TOO_LARGE");

    // None of that spent the quota of 2, and nothing was stored.
    assert_eq!(
        app.send("GET", "/api/metrics/list?type=cpu", &[])
            .await
            .headers["x-total-count"],
        "0"
    );
    for _ in 0..2 {
        let r = app
            .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(1.0))
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn events_stats_health_and_request_ids() {
    let app = start(&[("RATE_LIMIT", "3")]).await;
    for _ in 0..3 {
        let r = app
            .send_body("POST", "/event", &[JSON], event(42, "login", "ios"))
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED);
        assert_eq!(r.json(), serde_json::json!({"status": "received"}));
        assert!(
            !r.headers.contains_key("ratelimit"),
            "event ingestion does not spend bytes on quota fields while admitted"
        );
    }
    // The events limit covers /event and /stats together: 3 per minute here.
    let r = app.send("GET", "/stats/login", &[]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["retry-after"], "20");
    assert_eq!(r.headers["ratelimit"], r#""events";r=0;t=60"#);

    let app = start(&[]).await;
    let r = app
        .send_body(
            "POST",
            "/event",
            &[JSON],
            r#"{"user_id":"x","event_type":"login","timestamp":1}"#,
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.body);
    assert_eq!(
        app.send("GET", "/stats/login", &[]).await.json(),
        serde_json::json!({"event_type": "login", "count": 0})
    );

    let health = app
        .send("GET", "/health", &[("x-request-id", "req-123")])
        .await;
    assert_eq!(health.status, StatusCode::OK);
    assert_eq!(
        health.headers["x-request-id"], "req-123",
        "a sent request id is echoed"
    );
    let body = health.json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["redis_connected"], false, "a bool, false in memory");
    assert!(chrono::DateTime::parse_from_rfc3339(body["timestamp"].as_str().unwrap()).is_ok());
    // Otherwise a random (version 4) UUID is generated, a different one each time.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let generated = app.send("GET", "/health", &[]).await;
        let id = generated.headers["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let groups: Vec<&str> = id.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12],
            "{id}"
        );
        assert!(
            id.chars()
                .all(|c| c == '-' || c.is_ascii_digit() || ('a'..='f').contains(&c)),
            "{id}"
        );
        assert!(groups[2].starts_with('4'), "version 4: {id}");
        assert!(
            groups[3].starts_with(['8', '9', 'a', 'b']),
            "variant 1: {id}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);

    let r = app
        .send("GET", "/api/metrics/summary?type=cpu&period=weekly", &[])
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json()["detail"],
        "Invalid period. Must be one of: all, daily, hourly"
    );
    let r = app.send("GET", "/api/metrics/summary", &[]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let empty = app
        .send("GET", "/api/metrics/summary?type=cpu&period=hourly", &[])
        .await
        .json();
    assert_eq!(empty["count"], 0);
    assert_eq!(empty["average"], 0.0);
}

#[tokio::test]
async fn bad_configuration_names_the_variable() {
    let err = |vars: &[(&str, &str)]| {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        crate::config::Config::from_lookup(|k| vars.get(k).cloned())
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(&[("PORT", "http")]),
        r#"invalid PORT="http": expected a port number (0-65535)"#
    );
    assert_eq!(
        err(&[("RATE_LIMIT_REQUESTS", "0")]),
        r#"invalid RATE_LIMIT_REQUESTS="0": expected a whole number from 1 to 4294967295"#
    );
    assert_eq!(
        err(&[("LOG_FORMAT", "xml")]),
        r#"invalid LOG_FORMAT="xml": expected `text` or `json`"#
    );
    for rate in ["1.5", "-0.1", "NaN", "often"] {
        assert_eq!(
            err(&[("EXTERNAL_SERVICE_FAILURE_RATE", rate)]),
            format!(
                r#"invalid EXTERNAL_SERVICE_FAILURE_RATE="{}": expected a number from 0.0 to 1.0"#,
                rate.parse::<f64>()
                    .map_or(rate.to_owned(), |r| r.to_string())
            )
        );
    }
    assert_eq!(
        err(&[("RATE_LIMIT_FAILURE_POLICY", "maybe")]),
        r#"invalid RATE_LIMIT_FAILURE_POLICY="maybe": expected `open`, `closed` or `local`"#
    );
    assert_eq!(
        err(&[("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "0")]),
        r#"invalid CIRCUIT_BREAKER_FAILURE_THRESHOLD="0": expected a whole number from 1 to 4294967295"#
    );
    assert_eq!(
        err(&[("TRUSTED_PROXIES", "10.0.0.0/8, nonsense")]),
        r#"invalid TRUSTED_PROXIES="10.0.0.0/8, nonsense": expected comma-separated CIDRs ("10.0.0.0/8") or IP addresses"#
    );
    config(&[("TRUSTED_PROXIES", "10.0.0.0/8, 192.168.1.1, ::1")]);
}

#[test]
fn the_env_example_lists_every_variable_with_a_valid_default() {
    let text = include_str!("../../examples/analytics_api/.env.example");
    let mut vars = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.trim_start_matches("# ");
        if let Some((k, v)) = line.split_once('=')
            && !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            vars.insert(k.to_owned(), v.to_owned());
        }
    }
    let source = [
        include_str!("../../examples/analytics_api/config.rs"),
        include_str!("../../examples/common/setup.rs"),
        include_str!("../../examples/analytics_api/tiers.rs"),
    ]
    .concat();
    // Every string literal in config.rs that looks like a variable name is one it reads.
    let mut read: Vec<String> = source
        .split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.len() >= 4
                && s.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        })
        .map(str::to_owned)
        .collect();
    read.sort();
    read.dedup();
    assert!(read.len() >= 18, "found only {read:?}");
    for var in &read {
        assert!(
            vars.contains_key(var),
            "{var} is read but not in .env.example"
        );
    }
    // Without the commented-out Redis and unread reference variables, and with the listed values
    // (the commented-out tiers included), the configuration is valid.
    for var in [
        "REDIS_URL",
        "REDIS_HOST",
        "REDIS_PORT",
        "REDIS_DB",
        "REDIS_ADDR",
    ] {
        vars.remove(var);
    }
    vars.remove("RUST_LOG");
    crate::config::Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let tiers = crate::tiers::Tiers::from_lookup(|k| vars.get(k).cloned()).unwrap();
    assert_eq!((tiers.tiers().len(), tiers.key_count()), (2, 2));
}

/// A type with no metrics is answered, but not cached: made-up types make no entries.
#[tokio::test]
async fn summaries_of_types_with_no_metrics_are_not_cached() {
    let app = start(&[]).await;
    for _ in 0..2 {
        let r = app
            .send("GET", "/api/metrics/summary?type=made_up_type", &[])
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["x-cache"], "MISS");
        assert_eq!(r.headers["cache-control"], "no-store");
        assert_eq!(r.json()["count"], 0);
    }
}

#[tokio::test]
async fn summaries_are_cached_and_a_new_metric_makes_its_type_fresh() {
    let app = start(&[]).await;
    for (kind, v) in [("cpu_usage", 10.0), ("mem_usage", 50.0)] {
        let body = format!(r#"{{"timestamp":"2026-02-21T12:00:00Z","value":{v},"type":"{kind}"}}"#);
        assert_eq!(
            app.send_body("POST", "/api/metrics", &[JSON], body)
                .await
                .status,
            StatusCode::CREATED
        );
    }
    let get = async |path: &str| {
        let r = app.send("GET", path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
        (
            r.headers["x-cache"].to_str().unwrap().to_owned(),
            r.json()["count"].as_u64().unwrap(),
        )
    };
    assert_eq!(
        get("/api/metrics/summary?type=cpu_usage").await,
        ("MISS".into(), 1)
    );
    assert_eq!(
        get("/api/metrics/summary?type=cpu_usage").await,
        ("HIT".into(), 1)
    );
    // The same summary however it is asked for.
    assert_eq!(
        get("/api/metrics/summary?metric_type=cpu_usage&period=all").await,
        ("HIT".into(), 1)
    );
    assert_eq!(
        get("/api/metrics/summary?type=cpu_usage&period=hourly")
            .await
            .0,
        "MISS"
    );
    assert_eq!(
        get("/api/metrics/summary?type=mem_usage").await,
        ("MISS".into(), 1)
    );

    // A new cpu_usage metric: its summaries are fresh at once; mem_usage's stay cached.
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(20.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        get("/api/metrics/summary?type=cpu_usage").await,
        ("MISS".into(), 2)
    );
    assert_eq!(
        get("/api/metrics/summary?type=cpu_usage").await,
        ("HIT".into(), 2)
    );
    assert_eq!(
        get("/api/metrics/summary?type=mem_usage").await,
        ("HIT".into(), 1)
    );

    // Refused requests are not cached.
    let r = app
        .send(
            "GET",
            "/api/metrics/summary?type=cpu_usage&period=weekly",
            &[],
        )
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.headers.get("x-cache").is_none());

    let b = app.send("GET", "/api/v1/sensors/type-breakdown", &[]).await;
    assert_eq!(b.headers["x-cache"], "MISS");
    let b = app.send("GET", "/api/v1/sensors/type-breakdown", &[]).await;
    assert_eq!(b.headers["x-cache"], "HIT");
}

/// The request timeout (`REQUEST_TIMEOUT_SECONDS`) cuts off a client that sends part of its body
/// and stalls: a 408 in the one error shape, within a bounded time, and nothing stored. (A write
/// already begun is not cut off: `examples/common/deadline.rs`'s tests.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_past_the_request_timeout_is_a_408_and_nothing_is_stored() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = start(&[("REQUEST_TIMEOUT_SECONDS", "1")]).await;
    let body = metric(1.0);
    let mut slow = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "POST /api/metrics HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).await.unwrap();
    slow.write_all(&body.as_bytes()[..body.len() / 2])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // Read until the error's code has come, or the server closes (bounded: 5 s).
    while !String::from_utf8_lossy(&answer).contains("REQUEST_TIMEOUT") {
        let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut buf))
            .await
            .expect("no answer within 5 s of a 1 s request timeout")
            .unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"REQUEST_TIMEOUT\""), "{text}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The rest of the body, late, stores nothing either.
    let _ = slow.write_all(&body.as_bytes()[body.len() / 2..]).await;
    assert_eq!(
        app.send("GET", "/api/metrics/list?type=cpu_usage", &[])
            .await
            .headers["x-total-count"],
        "0"
    );
    // A request in time is stored as always.
    let r = app
        .send_body("POST", "/api/metrics", &[JSON], metric(2.0))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
}
