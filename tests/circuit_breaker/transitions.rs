//! Every transition, the wait durations and their exponential growth, forcing and hooks, on
//! tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Layer;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::{Upstream, call};

#[tokio::test(start_paused = true)]
async fn consecutive_failures_open_probe_closes_and_hooks_see_every_change() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let layer = CircuitBreakerLayer::builder()
        .name("external")
        .consecutive_failures(5)
        .wait_duration(Duration::from_secs(30))
        .on_state_change(move |t| {
            log.lock()
                .unwrap()
                .push((t.from(), t.to(), t.reason().as_str()))
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());

    upstream.fail(true);
    for _ in 0..4 {
        assert!(call(&mut svc).await.is_err());
    }
    // A success in between resets the count.
    upstream.fail(false);
    call(&mut svc).await.unwrap();
    upstream.fail(true);
    for i in 0..5 {
        assert!(call(&mut svc).await.is_err());
        let expected = if i < 4 {
            CircuitState::Closed
        } else {
            CircuitState::Open
        };
        assert_eq!(handle.state(), expected, "after failure {}", i + 1);
    }
    assert_eq!(upstream.calls(), 10);

    // Open: refused fast, the upstream is not called, retry_after counts down.
    tokio::time::advance(Duration::from_secs(10)).await;
    let err = call(&mut svc).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("CircuitOpen");
    assert_eq!(open.state(), CircuitState::Open);
    assert_eq!(open.retry_after(), Some(Duration::from_secs(20)));
    assert_eq!(open.name(), "external");
    assert_eq!(err.to_string(), "circuit open");
    assert_eq!(upstream.calls(), 10);
    let snap = handle.snapshot();
    assert_eq!(snap.next_attempt_in(), Some(Duration::from_secs(20)));
    assert_eq!(snap.rejected(), 1);
    assert_eq!(snap.consecutive_failures(), 5);

    // After the wait the handle shows half-open without any traffic.
    tokio::time::advance(Duration::from_secs(20)).await;
    assert_eq!(handle.state(), CircuitState::HalfOpen);
    upstream.fail(false);
    call(&mut svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(
        handle.snapshot().calls(),
        0,
        "closing starts an empty window"
    );

    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (
                CircuitState::Closed,
                CircuitState::Open,
                "consecutive failures"
            ),
            (
                CircuitState::Open,
                CircuitState::HalfOpen,
                "wait duration elapsed"
            ),
            (
                CircuitState::HalfOpen,
                CircuitState::Closed,
                "half-open probes succeeded"
            ),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failure_rate_over_the_window_after_minimum_calls() {
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .window(10)
        .minimum_calls(6)
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    // 3 failures and 2 successes: 60%, but below the minimum of 6 calls.
    for fail in [true, false, true, false, true] {
        upstream.fail(fail);
        let _ = call(&mut svc).await;
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    let snap = handle.snapshot();
    assert_eq!((snap.calls(), snap.failures()), (5, 3));
    assert!((snap.failure_rate() - 0.6).abs() < 1e-9);
    // The sixth call, a success, reaches the minimum at exactly 50%: open.
    upstream.fail(false);
    call(&mut svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn failed_probes_reopen_with_an_exponentially_longer_wait() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .exponential_wait(Duration::from_secs(10), 2.0, Duration::from_secs(25))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    upstream.fail(true);
    let _ = call(&mut svc).await;
    for expected_wait in [10, 20, 25, 25] {
        assert_eq!(handle.state(), CircuitState::Open);
        assert_eq!(
            handle.snapshot().next_attempt_in(),
            Some(Duration::from_secs(expected_wait))
        );
        tokio::time::advance(Duration::from_secs(expected_wait) - Duration::from_millis(1)).await;
        assert!(
            call(&mut svc).await.unwrap_err().is::<CircuitOpen>(),
            "still open"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        // The probe fails: open again, for longer.
        let err = call(&mut svc).await.unwrap_err();
        assert!(!err.is::<CircuitOpen>(), "the probe reached the upstream");
    }
    // A successful probe closes and forgets the streak: the next opening waits 10 s again.
    tokio::time::advance(Duration::from_secs(25)).await;
    upstream.fail(false);
    call(&mut svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
    upstream.fail(true);
    let _ = call(&mut svc).await;
    assert_eq!(
        handle.snapshot().next_attempt_in(),
        Some(Duration::from_secs(10))
    );
}

#[tokio::test(start_paused = true)]
async fn forced_open_disabled_force_closed_and_reset() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .exponential_wait(Duration::from_secs(1), 10.0, Duration::from_secs(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());

    handle.force_open();
    assert_eq!(handle.state(), CircuitState::ForcedOpen);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let err = call(&mut svc).await.unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().unwrap();
    assert_eq!(
        (open.state(), open.retry_after()),
        (CircuitState::ForcedOpen, None)
    );
    assert_eq!(upstream.calls(), 0);

    handle.disable();
    upstream.fail(true);
    for _ in 0..10 {
        assert!(!call(&mut svc).await.unwrap_err().is::<CircuitOpen>());
    }
    assert_eq!(
        handle.state(),
        CircuitState::Disabled,
        "disabled circuits count nothing"
    );

    handle.force_closed();
    let _ = call(&mut svc).await;
    let _ = call(&mut svc).await;
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(
        handle.snapshot().next_attempt_in(),
        Some(Duration::from_secs(1))
    );
    // force_closed keeps the streak: reopening waits longer. reset forgets it.
    handle.force_closed();
    let _ = call(&mut svc).await;
    let _ = call(&mut svc).await;
    assert_eq!(
        handle.snapshot().next_attempt_in(),
        Some(Duration::from_secs(10))
    );
    handle.reset();
    let _ = call(&mut svc).await;
    let _ = call(&mut svc).await;
    assert_eq!(
        handle.snapshot().next_attempt_in(),
        Some(Duration::from_secs(1))
    );
}

#[cfg(feature = "serde")]
#[tokio::test(start_paused = true)]
async fn snapshots_serialise_for_a_status_endpoint() {
    let layer = CircuitBreakerLayer::builder()
        .name("upstream")
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    upstream.fail(true);
    let _ = call(&mut svc).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    let json = serde_json::to_value(layer.handle().snapshot()).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "upstream",
            "state": "OPEN",
            "calls": 1,
            "failures": 1,
            "failure_rate": 1.0,
            "slow_calls": 0,
            "slow_call_rate": 0.0,
            "consecutive_failures": 1,
            "rejected": 0,
            "in_state_for": 5.0,
            "next_attempt_in": 25.0,
        })
    );
}
