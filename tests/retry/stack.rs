//! The retry layer under a circuit breaker (the proxy's client stack): a request whose attempts are
//! all spent is one failure for the circuit; an open circuit refuses before any attempt; the
//! attempt count reaches the answer, on responses and on errors.

use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::retry::RetryLayer;
use tower_rampart::retry::error::{LastError, attempts};

use crate::{MS, Scripted};

#[tokio::test(start_paused = true)]
async fn spent_attempts_count_as_one_failure_and_an_open_circuit_sends_nothing() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .wait_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(100 * MS)
        .no_budget()
        .build()
        .unwrap();
    let upstream = Scripted::failing();
    let mut client = ServiceBuilder::new()
        .layer(breaker)
        .layer(retry)
        .service(upstream.service());

    let err = client.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(attempts(err.as_ref()), Some(3));
    assert_eq!(upstream.calls(), 3);
    assert_eq!(
        circuit.state(),
        CircuitState::Closed,
        "one request, one failure"
    );

    let err = client.ready().await.unwrap().call(2).await.unwrap_err();
    let last = err.downcast_ref::<LastError>().unwrap();
    assert_eq!(
        format!("upstream failed after {} retries", last.attempts() - 1),
        "upstream failed after 2 retries"
    );
    assert_eq!(circuit.state(), CircuitState::Open);

    let err: BoxError = client.ready().await.unwrap().call(3).await.unwrap_err();
    assert!(err.is::<CircuitOpen>());
    assert_eq!(attempts(err.as_ref()), None);
    assert_eq!(upstream.calls(), 6, "no attempts while open");
}

#[tokio::test(start_paused = true)]
async fn retries_that_succeed_are_successes_for_the_circuit() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(10 * MS)
        .no_budget()
        .build()
        .unwrap();
    // Every other call fails: each request succeeds on its second attempt.
    let upstream = Scripted::new(|n| n.is_multiple_of(2));
    let mut client = ServiceBuilder::new()
        .layer(breaker)
        .layer(retry)
        .service(upstream.service());
    for i in 0..10 {
        assert_eq!(client.ready().await.unwrap().call(i).await.unwrap(), i);
    }
    assert_eq!(upstream.calls(), 20);
    assert_eq!(circuit.state(), CircuitState::Closed);
    assert_eq!(circuit.snapshot().failures(), 0);
}
