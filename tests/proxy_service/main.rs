//! End-to-end tests of `examples/proxy_service` against `examples/mock_upstream`, both served on
//! loopback ports, driven by a real HTTP client: the circuit opens after the failures and answers
//! 503 without calling the upstream, probes and recovers; retries turn most failures into 200s and
//! the upstream sees exactly the attempts the proxy reports; limits, timeouts, bad bodies. Reference
//! 004's bodies are checked in `contract_004`, its timings (on paused time) in `timing_004`.

#[path = "../common/mod.rs"]
mod common;

#[path = "../../examples/proxy_service/jitter.rs"]
mod jitter;
#[path = "../../examples/proxy_service/proxy.rs"]
#[allow(dead_code)]
mod proxy;
#[path = "../../examples/common/setup.rs"]
#[allow(dead_code)]
mod setup;
#[path = "../../examples/mock_upstream/upstream.rs"]
#[allow(dead_code)]
mod upstream;

mod contract_004;
mod timing_004;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::http::{Reply, Served, serve};
use http::StatusCode;
use tower_rampart::circuit_breaker::{CircuitHandle, CircuitState};

fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| vars.get(k).cloned()
}

struct Stack {
    proxy: Served,
    breaker: CircuitHandle,
    upstream: upstream::UpstreamHandle,
    upstream_server: Served,
}

/// Serves the upstream with `upstream_vars` and the proxy in front of it with `proxy_vars`.
async fn start(upstream_vars: &[(&str, &str)], proxy_vars: &[(&str, &str)]) -> Stack {
    // A healthy, instant upstream unless a test says otherwise (the mock's own defaults are the
    // reference's: 20% failures, 50 ms).
    let mut with_defaults = vec![("EXTERNAL_FAIL_RATE", "0"), ("EXTERNAL_LATENCY_MS", "0")];
    with_defaults.extend_from_slice(upstream_vars);
    let config = upstream::UpstreamConfig::from_lookup(lookup(&with_defaults)).unwrap();
    let (router, handle) = upstream::router(config);
    let upstream_server = serve(router, false).await;
    let url = format!("http://{}/external-api/process", upstream_server.addr);
    let mut vars = vec![("EXTERNAL_SERVICE_URL", url.as_str())];
    vars.extend_from_slice(proxy_vars);
    let config = proxy::ProxyConfig::from_lookup(lookup(&vars)).unwrap();
    let (router, breaker) = proxy::router(&config).unwrap();
    Stack {
        proxy: serve(router, true).await,
        breaker,
        upstream: handle,
        upstream_server,
    }
}

const JSON: (&str, &str) = ("content-type", "application/json");

/// Fast retries for the tests: 1 ms, doubling, at most 5 ms.
const FAST: [(&str, &str); 3] = [
    ("RETRY_INITIAL_DELAY_MS", "1"),
    ("RETRY_MAX_DELAY_MS", "5"),
    ("RATE_LIMIT_MAX_REQUESTS", "1000"),
];

async fn post(stack: &Stack, body: &str) -> Reply {
    stack
        .proxy
        .send_body("POST", "/api/proxy/data", &[JSON], body.to_owned())
        .await
}

/// Reference 004's answer once the retries are exhausted, with the circuit's state `state`.
fn retries_exhausted(state: &str) -> serde_json::Value {
    serde_json::json!({
        "status": "error",
        "message": "An unexpected error occurred.",
        "circuit_state": state,
    })
}

fn attempts(r: &Reply) -> u64 {
    r.headers["x-upstream-attempts"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn failures_open_the_circuit_which_answers_503_without_calling_then_recovers() {
    let mut proxy_vars = FAST.to_vec();
    proxy_vars.extend([
        ("CB_FAILURE_THRESHOLD", "5"),
        ("CB_RESET_TIMEOUT_SECONDS", "1"),
    ]);
    let stack = start(
        &[
            ("EXTERNAL_FAIL_RATE", "1.0"),
            ("EXTERNAL_UNAVAILABLE_SHARE", "0"),
        ],
        &proxy_vars,
    )
    .await;
    for i in 0..5 {
        let r = post(&stack, r#"{"order":1}"#).await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "request {i}: {}",
            r.body
        );
        assert_eq!(
            attempts(&r),
            3,
            "three attempts, one failure for the circuit"
        );
        assert_eq!(r.headers["x-upstream-failure"], "status=500");
        // The fifth failure opens the circuit, and the answer says so.
        assert_eq!(
            r.json(),
            retries_exhausted(if i < 4 { "CLOSED" } else { "OPEN" })
        );
    }
    assert_eq!(stack.upstream.requests(), 15);
    assert_eq!(stack.breaker.state(), CircuitState::Open);

    // Open: 503 at once, and the upstream is not called.
    let started = Instant::now();
    let r = post(&stack, r#"{"order":2}"#).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "status": "error",
            "message": "External service is currently unavailable (Circuit Open)."
        })
    );
    assert_eq!(r.headers["retry-after"], "1");
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(stack.upstream.requests(), 15);
    let h = stack.proxy.send("GET", "/health", &[]).await.json();
    assert_eq!(
        h,
        serde_json::json!({"status": "healthy", "circuit_breaker_state": "OPEN"})
    );

    // After the reset timeout, the status shows half-open with no traffic needed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = stack
        .proxy
        .send("GET", "/api/circuit-breaker/status", &[])
        .await
        .json();
    assert_eq!(s["state"], "HALF_OPEN", "{s}");
    // A failing probe (three attempts) opens it again.
    let r = post(&stack, r#"{"order":3}"#).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json(), retries_exhausted("OPEN"));
    assert_eq!(stack.upstream.requests(), 18);
    assert_eq!(stack.breaker.state(), CircuitState::Open);

    // The upstream recovers; after the wait two probes succeed and close the circuit.
    stack.upstream.set_fail_rate(0.0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = post(&stack, r#"{"order":4}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(stack.breaker.state(), CircuitState::HalfOpen);
    let r = post(&stack, r#"{"order":4}"#).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let body = r.json();
    assert_eq!(body["status"], "success");
    assert_eq!(body["external_response"]["status"], "success");
    assert_eq!(
        body["external_response"]["received_data"],
        serde_json::json!({"order": 4})
    );
    assert_eq!(body["proxy_notes"], "Circuit breaker state: CLOSED");
    for path in ["/health", "/api/health"] {
        assert_eq!(
            stack.proxy.send("GET", path, &[]).await.json()["circuit_breaker_state"],
            "CLOSED"
        );
    }
}

#[tokio::test]
async fn retries_turn_most_failures_into_success_and_the_upstream_saw_every_attempt() {
    const REQUESTS: u64 = 80;
    let stack = start(
        &[
            ("EXTERNAL_FAIL_RATE", "0.5"),
            // Some failures are 503s asking to wait 0 s: honoured, and retried at once.
            ("EXTERNAL_UNAVAILABLE_SHARE", "0.25"),
            ("EXTERNAL_RETRY_AFTER_SECONDS", "0"),
            ("EXTERNAL_SEED", "20260221"),
        ],
        &[
            FAST[0],
            FAST[1],
            FAST[2],
            // A failed request closes no circuit here: this test is about the retries.
            ("CB_FAILURE_THRESHOLD", "1000"),
        ],
    )
    .await;
    let (mut ok, mut reported) = (0, 0);
    let mut retried_to_success = 0;
    for i in 0..REQUESTS {
        let r = post(&stack, &format!(r#"{{"n":{i}}}"#)).await;
        let n = attempts(&r);
        reported += n;
        match r.status {
            StatusCode::OK => {
                ok += 1;
                if n > 1 {
                    retried_to_success += 1;
                    assert_eq!(r.json()["proxy_notes"], "Circuit breaker state: CLOSED");
                }
            }
            StatusCode::INTERNAL_SERVER_ERROR => {
                assert_eq!(n, 3, "a 500 only after every attempt");
                assert_eq!(r.json(), retries_exhausted("CLOSED"));
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    // Without retries about half would fail; with three attempts about 1 in 8 does.
    assert!(ok >= REQUESTS * 3 / 4, "only {ok} of {REQUESTS} succeeded");
    assert!(retried_to_success >= REQUESTS / 5, "{retried_to_success}");
    assert_eq!(
        stack.upstream.requests(),
        reported,
        "the upstream saw exactly the attempts the proxy reported"
    );
}

#[tokio::test]
async fn the_eleventh_request_in_a_window_is_refused_with_429() {
    let stack = start(&[], &[]).await;
    for _ in 0..10 {
        assert_eq!(post(&stack, "{}").await.status, StatusCode::OK);
    }
    let r = post(&stack, "{}").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        r.json(),
        serde_json::json!({
            "status": "error",
            "message": "Rate limit exceeded. Please try again later."
        })
    );
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(
        stack.upstream.requests(),
        10,
        "the refused request was not forwarded"
    );
}

#[tokio::test]
async fn bodies_that_are_not_json_get_4xx_not_500() {
    let stack = start(&[], &FAST).await;
    let r = post(&stack, "{not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["status"], "error");
    let r = stack
        .proxy
        .send_body(
            "POST",
            "/api/proxy/data",
            &[("content-type", "text/plain")],
            "hi",
        )
        .await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(r.json()["status"], "error");
    assert_eq!(stack.upstream.requests(), 0);
}

/// Reference 004 retries every exception, a timeout or a refused connection too, and answers 500
/// once the attempts are spent: so does the proxy, the cause in `x-upstream-failure`.
#[tokio::test]
async fn a_slow_or_missing_upstream_is_retries_exhausted_500() {
    let stack = start(
        &[("EXTERNAL_LATENCY_MS", "300")],
        &[
            FAST[0],
            FAST[1],
            FAST[2],
            ("EXTERNAL_TIMEOUT_MS", "50"),
            ("RETRY_MAX_ATTEMPTS", "2"),
        ],
    )
    .await;
    let r = post(&stack, "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(attempts(&r), 2);
    assert_eq!(r.headers["x-upstream-failure"], "timeout");
    assert_eq!(r.json(), retries_exhausted("CLOSED"));

    // Nothing listens on the upstream's address: connection refused, three times.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://127.0.0.1:{port}/external-api/process");
    let mut vars = FAST.to_vec();
    vars.push(("EXTERNAL_SERVICE_URL", &url));
    let config = proxy::ProxyConfig::from_lookup(lookup(&vars)).unwrap();
    let (router, _) = proxy::router(&config).unwrap();
    let lonely = serve(router, true).await;
    let r = lonely
        .send_body("POST", "/api/proxy/data", &[JSON], "{}")
        .await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(attempts(&r), 3);
    assert_eq!(r.headers["x-upstream-failure"], "unreachable");
    assert_eq!(r.json(), retries_exhausted("CLOSED"));
}

/// An upstream on a raw socket that answers every request with `head` followed by `body` (then
/// holds the connection open until the test ends): for answers no HTTP server would give.
async fn raw_upstream(head: &'static str, body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = std::sync::Arc::new(body);
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = std::sync::Arc::clone(&body);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            });
        }
    });
    format!("http://{addr}/external-api/process")
}

/// The upstream's answer is read whole within the attempt: a body that stalls after its head is
/// a timed-out attempt (retried), not a client's 408 at the request timeout; one larger than the
/// proxy reads is refused (not retried: it would be as large again), not buffered. Both end in
/// reference 004's 500.
#[tokio::test]
async fn an_upstream_body_that_stalls_or_is_too_large_fails_its_attempt() {
    let cases = [
        (
            raw_upstream(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n",
                b"{\"partial\":".to_vec(),
            )
            .await,
            "timeout",
            2,
        ),
        (
            raw_upstream(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2097152\r\n\r\n",
                vec![b' '; 2 * 1024 * 1024],
            )
            .await,
            "too-large",
            1,
        ),
    ];
    for (url, expected, tries) in cases {
        let mut vars = FAST.to_vec();
        vars.extend([
            ("EXTERNAL_SERVICE_URL", url.as_str()),
            ("EXTERNAL_TIMEOUT_MS", "200"),
            ("RETRY_MAX_ATTEMPTS", "2"),
        ]);
        let config = proxy::ProxyConfig::from_lookup(lookup(&vars)).unwrap();
        let (router, _) = proxy::router(&config).unwrap();
        let server = serve(router, true).await;
        let started = std::time::Instant::now();
        let r = server
            .send_body("POST", "/api/proxy/data", &[JSON], "{}")
            .await;
        assert_eq!(
            r.status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{url}: {}",
            r.body
        );
        assert_eq!(r.headers["x-upstream-failure"], expected, "{url}");
        assert_eq!(r.json(), retries_exhausted("CLOSED"), "{url}");
        assert_eq!(attempts(&r), tries, "{url}: {}", r.body);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{url}: answered after {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn bad_settings_name_the_variable() {
    let err = |vars: &[(&str, &str)]| {
        proxy::ProxyConfig::from_lookup(lookup(vars))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(&[("RETRY_BACKOFF_MULTIPLIER", "NaN")]),
        r#"invalid RETRY_BACKOFF_MULTIPLIER="NaN": expected a number from 1.0 to 10.0"#
    );
    assert_eq!(
        err(&[("RETRY_MAX_ATTEMPTS", "50")]),
        r#"invalid RETRY_MAX_ATTEMPTS="50": expected a whole number from 1 to 10"#
    );
    assert_eq!(
        err(&[("EXTERNAL_SERVICE_URL", "ftp://example.com/x")]),
        r#"invalid EXTERNAL_SERVICE_URL="ftp://example.com/x": expected an http:// URL with a host"#
    );
    assert_eq!(
        err(&[
            ("RETRY_INITIAL_DELAY_MS", "3000"),
            ("RETRY_MAX_DELAY_MS", "2000")
        ]),
        r#"invalid RETRY_INITIAL_DELAY_MS="3000": expected a delay no longer than RETRY_MAX_DELAY_MS"#
    );
    assert_eq!(
        err(&[("CB_RESET_TIMEOUT_SECONDS", "0")]),
        r#"invalid CB_RESET_TIMEOUT_SECONDS="0": expected a whole number from 1 to 4294967295"#
    );
    let e = upstream::UpstreamConfig::from_lookup(lookup(&[("EXTERNAL_FAIL_RATE", "2")]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        r#"invalid EXTERNAL_FAIL_RATE="2": expected a number from 0.0 to 1.0"#
    );
}

/// #17: a client sending its body slowly held the proxy for as long as it liked (45 s in the
/// report). Now no piece of a body may take longer than `BODY_READ_TIMEOUT_SECONDS`, nor the whole
/// request longer than `REQUEST_TIMEOUT_SECONDS`: the client gets 408 in about that time, and the
/// upstream is never called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_off_at_the_body_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = start(
        &[],
        &[
            ("BODY_READ_TIMEOUT_SECONDS", "1"),
            ("REQUEST_TIMEOUT_SECONDS", "2"),
        ],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(stack.proxy.addr)
        .await
        .unwrap();
    s.write_all(
        b"POST /api/proxy/data HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"order\":",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the proxy answered or closed within 5 s")
        .unwrap_or(0);
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "unexpected answer: {answer}"
    );
    assert!(answer.contains("not received in time"), "{answer}");
    assert!(took < Duration::from_secs(3), "held {took:?}");
    assert_eq!(stack.upstream.requests(), 0, "the upstream was not called");
}

/// The body reaches the upstream as the client sent it: parsed and written again, its keys would
/// be reordered, duplicates merged and integers past 2^53 rounded (reference 004 forwards it
/// unchanged).
#[tokio::test]
async fn the_body_is_forwarded_byte_for_byte() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&seen);
    let upstream = axum::Router::new().route(
        "/external-api/process",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = std::sync::Arc::clone(&keep);
            async move {
                keep.lock().unwrap().push(body.to_vec());
                axum::Json(serde_json::json!({"status": "success"}))
            }
        }),
    );
    let upstream = serve(upstream, false).await;
    let url = format!("http://{}/external-api/process", upstream.addr);
    let mut vars = vec![("EXTERNAL_SERVICE_URL", url.as_str())];
    vars.extend_from_slice(&FAST);
    let config = proxy::ProxyConfig::from_lookup(lookup(&vars)).unwrap();
    let (router, _breaker) = proxy::router(&config).unwrap();
    let served = serve(router, true).await;
    let sent = r#"{"z":1,"a":2,"a":3,"id":123456789012345678901234567890, "note":"caf\u00e9"}"#;
    let r = served
        .send_body("POST", "/api/proxy/data", &[JSON], sent.to_owned())
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(seen.lock().unwrap().as_slice(), [sent.as_bytes().to_vec()]);
}

/// The retries' worst case (3 attempts of 2 s and the waits between them) is longer than the
/// request's own timeout (5 s): the proxy answered 408 as if the client were slow. The retries
/// now give up within 90% of it (4.5 s: half a second to spare on a loaded machine), and the
/// answer is reference 004's 500, the upstream's timeout in `x-upstream-failure`.
#[tokio::test]
async fn retries_longer_than_the_request_timeout_end_in_a_500_not_a_408() {
    let stack = start(
        &[("EXTERNAL_LATENCY_MS", "10000")],
        &[
            ("EXTERNAL_TIMEOUT_MS", "2000"),
            ("RETRY_MAX_ATTEMPTS", "3"),
            ("RETRY_INITIAL_DELAY_MS", "100"),
            ("REQUEST_TIMEOUT_SECONDS", "5"),
        ],
    )
    .await;
    let r = post(&stack, "{}").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.headers["x-upstream-failure"], "timeout");
    assert_eq!(r.json(), retries_exhausted("CLOSED"));
}
