//! The service's surface: the OpenAPI document describes exactly the routes served, `/docs`
//! renders it, `/metrics` exposes the layers' and the HTTP metrics.

use http::StatusCode;
use serde_json::Value;

use crate::{JSON, metric, start};

/// Every route the app serves, with its method (a path parameter filled in).
const SERVED: &[(&str, &str)] = &[
    ("get", "/"),
    ("get", "/health"),
    ("post", "/api/metrics"),
    ("get", "/api/metrics/summary?type=cpu_usage"),
    ("get", "/api/metrics/list?type=cpu_usage"),
    ("post", "/event"),
    ("get", "/stats/login"),
    ("get", "/api/v1/metrics/summary"),
    (
        "get",
        "/api/v1/metrics/history?type=activeUsers&interval=1m",
    ),
    ("get", "/api/v1/sensors/type-breakdown"),
    ("get", "/api/v1/modules"),
    ("get", "/external"),
    ("get", "/api/external"),
    ("get", "/api/circuit-breaker/status"),
    ("get", "/metrics"),
    ("get", "/openapi.json"),
    ("get", "/docs"),
];

/// `/stats/login?x` -> `/stats/{event_type}`, as the document names it.
fn template(path: &str) -> String {
    let path = path.split('?').next().unwrap();
    path.replace("/stats/login", "/stats/{event_type}")
}

#[tokio::test]
async fn the_openapi_document_describes_exactly_the_served_routes() {
    // The dependency never fails here: every served route must answer 2xx (`/api/external`
    // answers 503 when a call fails, as its reference does).
    let app = start(&[
        ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
        ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
    ])
    .await;
    let r = app.send("GET", "/openapi.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/json");
    let doc = r.json();
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    documented.sort();
    let mut served: Vec<(String, String)> = SERVED
        .iter()
        .map(|(m, p)| (m.to_string(), template(p)))
        .collect();
    served.sort();
    assert_eq!(documented, served);

    for (method, path) in SERVED {
        let body = match *path {
            "/api/metrics" => metric(1.0),
            "/event" => crate::event(1, "login", "ios"),
            _ => "{}".into(),
        };
        let r = app
            .send_body(&method.to_uppercase(), path, &[JSON], body)
            .await;
        assert!(
            r.status.is_success(),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
    }
    // An unknown route is a 404, and a known one with the wrong method a 405.
    assert_eq!(
        app.send("GET", "/api/nothing", &[]).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.send("DELETE", "/api/metrics", &[]).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn docs_page_lists_every_route() {
    let app = start(&[]).await;
    let r = app.send("GET", "/docs", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    for (_, path) in SERVED {
        let t = template(path).replace(['{', '}'], "");
        let shown = r.body.replace(['{', '}'], "");
        assert!(shown.contains(&t), "{t} missing from /docs");
    }
    let doc: Value = serde_json::from_str(crate::docs::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.0.3");
}

#[tokio::test]
async fn prometheus_metrics_include_the_layers_and_http() {
    let app = start(&[("RATE_LIMIT_REQUESTS", "1")]).await;
    for _ in 0..2 {
        app.send_body("POST", "/api/metrics", &[JSON], metric(1.0))
            .await;
    }
    let r = app.send("GET", "/metrics", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let text = r.body;
    assert!(
        text.contains(r#"rampart_rate_limit_rejected_total{name="metrics",reason="rate_limited"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"http_requests_total{method="POST",route="/api/metrics",status="429"}"#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

/// Issue #16: what an API fuzzer driven by `/openapi.json` found answered but undocumented is
/// documented now: each of these answers' status is listed for its operation, in the error schema.
#[tokio::test]
async fn every_status_answered_is_documented_for_its_operation() {
    let app = start(&[("RATE_LIMIT_REQUESTS", "1"), ("MAX_BODY_BYTES", "256")]).await;
    let doc: Value = serde_json::from_str(crate::docs::OPENAPI).unwrap();
    let text = "text/plain";
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "POST",
            "/api/metrics",
            JSON.1,
            r#"{"timestamp":"2025-01-01","value":1,"type":""}"#,
        ),
        (
            "POST",
            "/api/metrics",
            JSON.1,
            r#"{"timestamp":1e300,"value":1,"type":"a"}"#,
        ),
        ("POST", "/api/metrics", text, "{}"),
        ("POST", "/api/metrics", JSON.1, &"x".repeat(300)),
        (
            "POST",
            "/api/metrics",
            JSON.1,
            r#"{"timestamp":"2025-01-01","value":1,"type":"a"}"#,
        ),
        (
            "POST",
            "/api/metrics",
            JSON.1,
            r#"{"timestamp":"2025-01-01","value":1,"type":"a"}"#,
        ),
        ("POST", "/event", JSON.1, ""),
        ("POST", "/event", JSON.1, "{}"),
        ("POST", "/event", text, "{}"),
        ("GET", "/api/metrics/summary", JSON.1, ""),
        (
            "GET",
            "/api/metrics/summary?type=a&period=weekly",
            JSON.1,
            "",
        ),
        ("GET", "/api/metrics/list?offset=1", JSON.1, ""),
        ("GET", "/api/metrics/list?limit=x", JSON.1, ""),
        (
            "GET",
            "/api/v1/metrics/history?interval=1d&metric=activeUsers",
            JSON.1,
            "",
        ),
    ];
    for &(method, path, content_type, body) in cases {
        let r = app
            .send_body(
                method,
                path,
                &[("content-type", content_type)],
                body.to_owned(),
            )
            .await;
        let op = &doc["paths"][template(path)][method.to_lowercase()];
        let documented = &op["responses"][r.status.as_str()];
        assert!(
            documented.is_object(),
            "{method} {path}: {} is not documented: {}",
            r.status,
            r.body
        );
        if !r.status.is_success() {
            assert_eq!(
                documented["content"]["application/json"]["schema"]["$ref"],
                "#/components/schemas/Error",
                "{method} {path} {}",
                r.status
            );
            let e = r.json();
            for key in ["code", "message", "detail", "error", "timestamp"] {
                assert!(!e[key].is_null(), "{method} {path}: {key} in {e}");
            }
        }
    }
}
