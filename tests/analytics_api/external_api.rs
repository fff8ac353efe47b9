//! `/external` behind the circuit breaker: values while healthy, the fallback on failures and while
//! open (without calling the dependency), half-open after the reset timeout, closed again on a good
//! probe; `/api/circuit-breaker/status` shows it all.

use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::start;

#[tokio::test]
async fn the_circuit_opens_serves_the_fallback_and_recovers_after_the_reset_timeout() {
    let app = start(&[
        ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
        ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "3"),
        ("CIRCUIT_BREAKER_RESET_TIMEOUT", "1"),
    ])
    .await;
    let ok = app.send("GET", "/external", &[]).await;
    assert_eq!(ok.status, StatusCode::OK);
    let v = ok.json();
    assert_eq!(v["external"], "ok");
    let value = v["value"].as_u64().unwrap();
    assert!((100..200).contains(&value), "{value}");

    app.state.external_failure_rate.set(1.0);
    for _ in 0..3 {
        let r = app.send("GET", "/external", &[]).await.json();
        assert_eq!(r["fallback"], true);
        assert_eq!(r["reason"], "external service failure");
        assert_eq!(r["circuit_open"], false, "the failures themselves");
    }
    let status = app
        .send("GET", "/api/circuit-breaker/status", &[])
        .await
        .json();
    assert_eq!(status["state"], "OPEN");
    assert_eq!(status["consecutive_failures"], 3);
    assert_eq!(status["failure_threshold"], 3);
    let next = status["next_attempt_in_seconds"].as_f64().unwrap();
    assert!(next > 0.0 && next <= 1.0, "{next}");

    // Open: the fallback, at once; the dependency is not called (the dependency would be healthy
    // now, so a call would have answered a value).
    app.state.external_failure_rate.set(0.0);
    let r = app.send("GET", "/external", &[]).await.json();
    assert_eq!(r["fallback"], true);
    assert_eq!(r["circuit_open"], true);
    assert!(r["retry_after_seconds"].as_f64().unwrap() <= 1.0);
    assert_eq!(
        app.send("GET", "/api/circuit-breaker/status", &[])
            .await
            .json()["rejected"],
        1
    );

    // After the reset timeout the status shows half-open by itself, with no traffic needed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let status = app
        .send("GET", "/api/circuit-breaker/status", &[])
        .await
        .json();
    assert_eq!(status["state"], "HALF_OPEN");
    // The probe succeeds and closes the circuit.
    let r = app.send("GET", "/external", &[]).await.json();
    assert_eq!(r["external"], "ok");
    let status = app
        .send("GET", "/api/circuit-breaker/status", &[])
        .await
        .json();
    assert_eq!(status["state"], "CLOSED");
    assert_eq!(status["consecutive_failures"], 0);

    // A failing probe opens it again.
    app.state.external_failure_rate.set(1.0);
    for _ in 0..3 {
        app.send("GET", "/external", &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = app.send("GET", "/external", &[]).await.json();
    assert_eq!(
        r,
        json!({
            "fallback": true,
            "reason": "external service failure",
            "circuit_open": false,
            "retry_after_seconds": null,
        }),
        "the probe itself failed"
    );
    assert_eq!(
        app.send("GET", "/api/circuit-breaker/status", &[])
            .await
            .json()["state"],
        "OPEN"
    );
}

/// A dependency that hangs fails at `EXTERNAL_SERVICE_TIMEOUT`, inside the breaker: the circuit
/// opens and the fallback is answered at once, instead of every request waiting for its own
/// timeout (which would cancel the call and count nothing).
#[tokio::test]
async fn a_hung_dependency_times_out_and_opens_the_circuit() {
    let app = start(&[
        ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
        ("EXTERNAL_SERVICE_LATENCY_MS", "30000"),
        ("EXTERNAL_SERVICE_TIMEOUT", "1"),
        ("REQUEST_TIMEOUT_SECONDS", "5"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "1"),
    ])
    .await;
    let started = std::time::Instant::now();
    let r = app.send("GET", "/external", &[]).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["fallback"], true, "{v}");
    assert_eq!(v["circuit_open"], false, "the timed-out call itself");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    let status = app
        .send("GET", "/api/circuit-breaker/status", &[])
        .await
        .json();
    assert_eq!(status["state"], "OPEN", "{status}");
    let started = std::time::Instant::now();
    let v = app.send("GET", "/external", &[]).await.json();
    assert_eq!(v["circuit_open"], true, "{v}");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[test]
fn an_external_timeout_not_below_the_request_timeout_is_refused() {
    let vars = [
        ("EXTERNAL_SERVICE_TIMEOUT", "10"),
        ("REQUEST_TIMEOUT_SECONDS", "10"),
    ];
    let get = |k: &str| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let err = crate::config::Config::from_lookup_on(get, 0).unwrap_err();
    assert!(
        err.to_string().contains("EXTERNAL_SERVICE_TIMEOUT"),
        "{err}"
    );
}
