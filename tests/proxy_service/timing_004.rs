//! Reference 004's timings, on paused time (the clock jumps to the next timer whenever every task
//! waits, so seconds of waits take none and every wait is measured exactly): the retry schedule,
//! the upstream timeout, the circuit's threshold, wait and two half-open successes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::common::http::{Served, serve};
use super::{JSON, lookup, post, proxy, retries_exhausted, start};

/// An upstream that answers every request 500 and notes when each arrived.
async fn failing_upstream() -> (Served, Arc<Mutex<Vec<Instant>>>) {
    let arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&arrivals);
    let app = axum::Router::new().route(
        "/external-api/process",
        axum::routing::post(move || {
            seen.lock().unwrap().push(Instant::now());
            async {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(serde_json::json!({
                        "status": "error",
                        "message": "Simulated external service failure"
                    })),
                )
            }
        }),
    );
    (serve(app, false).await, arrivals)
}

/// The delay before retry `n` is `initial × multiplier^(n−1)`, at most the maximum (5 s by
/// default), plus a random 0–50% of it: never less than the schedule, at most 1.5 times it.
#[tokio::test(start_paused = true)]
async fn retry_delays_are_the_schedule_plus_up_to_half_of_it() {
    const ATTEMPTS: usize = 8;
    const REQUESTS: usize = 4;
    /// The proxy's settings, and the schedule's delays before retries 1 to 7, in milliseconds.
    type Case = (&'static [(&'static str, &'static str)], [u64; ATTEMPTS - 1]);
    let cases: [Case; 2] = [
        // The defaults: 100 ms doubling, at most 5 s.
        (&[], [100, 200, 400, 800, 1600, 3200, 5000]),
        (
            &[
                ("RETRY_INITIAL_DELAY_MS", "50"),
                ("RETRY_BACKOFF_MULTIPLIER", "3"),
                ("RETRY_MAX_DELAY_MS", "1000"),
            ],
            [50, 150, 450, 1000, 1000, 1000, 1000],
        ),
    ];
    for (settings, schedule) in cases {
        let (upstream, arrivals) = failing_upstream().await;
        let url = format!("http://{}/external-api/process", upstream.addr);
        let mut vars = vec![
            ("EXTERNAL_SERVICE_URL", url.as_str()),
            ("RETRY_MAX_ATTEMPTS", "8"),
            ("CB_FAILURE_THRESHOLD", "1000"),
        ];
        vars.extend_from_slice(settings);
        let config = proxy::ProxyConfig::from_lookup(lookup(&vars)).unwrap();
        let (router, _) = proxy::router(&config).unwrap();
        let served = serve(router, true).await;
        let mut jittered = 0;
        for request in 0..REQUESTS {
            arrivals.lock().unwrap().clear();
            let r = served
                .send_body("POST", "/api/proxy/data", &[JSON], "{}")
                .await;
            assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
            let times = arrivals.lock().unwrap().clone();
            assert_eq!(times.len(), ATTEMPTS, "{settings:?}");
            for (retry, (pair, base)) in times.windows(2).zip(schedule).enumerate() {
                let waited = pair[1] - pair[0];
                let base = Duration::from_millis(base);
                // Paused time measures the wait exactly, to the timer's millisecond.
                assert!(
                    waited >= base && waited <= base + base / 2 + Duration::from_millis(1),
                    "{settings:?}, request {request}, retry {}: waited {waited:?}, the schedule \
                     says {base:?} plus up to half of it",
                    retry + 1
                );
                if waited > base + Duration::from_millis(1) {
                    jittered += 1;
                }
            }
        }
        // Some jitter was added (each wait is uniform over many milliseconds).
        assert!(
            jittered >= REQUESTS * (ATTEMPTS - 1) / 2,
            "{settings:?}: only {jittered} waits were longer than the schedule"
        );
    }
}

/// An attempt may take up to 10 s (the reference's fixed timeout; `EXTERNAL_TIMEOUT_MS` by
/// default): a 9.9 s answer is relayed; past 10 s each attempt is cut off, and once all three
/// are the proxy answers the reference's 500.
#[tokio::test(start_paused = true)]
async fn an_attempt_may_take_ten_seconds() {
    let stack = start(&[("EXTERNAL_LATENCY_MS", "9900")], &[]).await;
    let started = Instant::now();
    let r = post(&stack, "{}").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(stack.upstream.requests(), 1);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(9900) && took < Duration::from_secs(10),
        "{took:?}"
    );

    let stack = start(&[("EXTERNAL_LATENCY_MS", "10100")], &[]).await;
    let started = Instant::now();
    let r = post(&stack, "{}").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", r.body);
    assert_eq!(r.json(), retries_exhausted("CLOSED"));
    assert_eq!(r.headers["x-upstream-failure"], "timeout");
    assert_eq!(r.headers["x-upstream-attempts"], "3");
    assert_eq!(stack.upstream.requests(), 3);
    // Two whole attempts of 10 s and the waits after them; the third is cut at the retries'
    // deadline (27 s: 90% of `REQUEST_TIMEOUT_SECONDS`), so the client gets no 408.
    assert!(
        took >= Duration::from_millis(20_300) && took <= Duration::from_secs(27),
        "answered after {took:?}"
    );
}

/// Five failed requests in a row open the circuit for 30 s; then two probe requests must succeed
/// to close it (the reference's `success_threshold` of 2), and a failed probe opens it again.
#[tokio::test(start_paused = true)]
async fn the_circuit_closes_after_two_half_open_successes() {
    let stack = start(
        &[
            ("EXTERNAL_FAIL_RATE", "1.0"),
            ("EXTERNAL_UNAVAILABLE_SHARE", "0"),
        ],
        &[("RATE_LIMIT_MAX_REQUESTS", "1000")],
    )
    .await;
    let state = async || {
        stack.proxy.send("GET", "/api/health", &[]).await.json()["circuit_breaker_state"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    for i in 0..5 {
        let r = post(&stack, "{}").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR, "request {i}");
    }
    assert_eq!(state().await, "OPEN");
    // Open for 30 s: still refused a second before.
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(
        post(&stack, "{}").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(state().await, "HALF_OPEN");

    // One probe succeeds: still half-open. The next fails: open again, and the 500 says so.
    stack.upstream.set_fail_rate(0.0);
    assert_eq!(post(&stack, "{}").await.status, StatusCode::OK);
    assert_eq!(state().await, "HALF_OPEN");
    stack.upstream.set_fail_rate(1.0);
    let r = post(&stack, "{}").await;
    assert_eq!(r.json(), retries_exhausted("OPEN"));
    assert_eq!(state().await, "OPEN");

    // After another 30 s, two successful probes close it.
    tokio::time::sleep(Duration::from_secs(30)).await;
    stack.upstream.set_fail_rate(0.0);
    assert_eq!(post(&stack, "{}").await.status, StatusCode::OK);
    assert_eq!(state().await, "HALF_OPEN");
    assert_eq!(post(&stack, "{}").await.status, StatusCode::OK);
    assert_eq!(state().await, "CLOSED");
}
