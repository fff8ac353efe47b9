//! Slow-call detection and the time-based window, on paused time.

use std::time::Duration;

use tower::Layer;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::{Upstream, call};

#[tokio::test(start_paused = true)]
async fn slow_calls_open_the_circuit_and_a_slow_probe_reopens_it() {
    let layer = CircuitBreakerLayer::builder()
        .slow_calls(Duration::from_secs(1), 0.5)
        .window(4)
        .minimum_calls(4)
        .wait_duration(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    // Successful, but two of four take a full second: 50% slow.
    for ms in [10, 1_000, 999, 1_500] {
        upstream.delay(ms);
        assert_eq!(call(&mut svc).await.unwrap(), "ok");
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let snap = handle.snapshot();
    assert_eq!(
        (snap.calls(), snap.slow_calls(), snap.failures()),
        (4, 2, 0)
    );
    assert!((snap.slow_call_rate() - 0.5).abs() < 1e-9);

    tokio::time::advance(Duration::from_secs(10)).await;
    upstream.delay(2_000);
    call(&mut svc).await.unwrap();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "a slow probe does not close the circuit"
    );
    tokio::time::advance(Duration::from_secs(10)).await;
    upstream.delay(5);
    call(&mut svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn time_window_counts_only_the_last_span() {
    let layer = CircuitBreakerLayer::builder()
        .failure_rate(0.5)
        .time_window(Duration::from_secs(10), 10)
        .minimum_calls(4)
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());
    upstream.fail(true);
    for _ in 0..3 {
        let _ = call(&mut svc).await;
    }
    // Twelve seconds later those failures have left the window: 1 failure of 4 is 25%.
    tokio::time::advance(Duration::from_secs(12)).await;
    upstream.fail(false);
    for _ in 0..3 {
        call(&mut svc).await.unwrap();
    }
    upstream.fail(true);
    let _ = call(&mut svc).await;
    assert_eq!(handle.state(), CircuitState::Closed);
    let snap = handle.snapshot();
    assert_eq!((snap.calls(), snap.failures()), (4, 1));
    // Three more failures within the span: 4 of 7, over 50%.
    for _ in 0..3 {
        let _ = call(&mut svc).await;
    }
    assert_eq!(handle.state(), CircuitState::Open);
}
