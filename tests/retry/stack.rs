//! The retry layer under a circuit breaker (the proxy's client stack): a request whose attempts are
//! all spent is one failure for the circuit; an open circuit refuses before any attempt; the
//! attempt count reaches the answer, on responses and on errors.

use std::time::Duration;

use std::sync::{Arc, Mutex};
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::retry::RetryLayer;

use tower_rampart::retry::error::{LastError, attempts};
use tower_rampart::retry::{GiveUp, RetryEvent};

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

/// The design's client stack puts the retry outside the breaker
/// (`ServiceBuilder::new().layer(retry).layer(breaker)`). The retry took an open circuit's
/// refusal for the upstream's failure: it spent every attempt (and its budget) on refusals that
/// could only repeat, and a caller waited out the backoff for nothing. A refusal of this crate's
/// layers is now understood: an open circuit is not retried (it fails fast, as it is meant to;
/// once its wait is over it lets a few probes through and refuses the rest again).
#[tokio::test(start_paused = true)]
async fn a_retry_outside_a_breaker_does_not_retry_an_open_circuit() {
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let gave_up = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&gave_up);
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(100 * MS)
        .no_budget()
        .on_event(move |e: &RetryEvent| {
            if let RetryEvent::GaveUp { why, .. } = e {
                seen.lock().unwrap().push(*why);
            }
        })
        .build()
        .unwrap();
    let upstream = Scripted::failing();
    let mut client = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .service(upstream.service());
    circuit.force_open();
    let start = tokio::time::Instant::now();
    let err: BoxError = client.ready().await.unwrap().call(1).await.unwrap_err();
    let last = err
        .downcast_ref::<LastError>()
        .expect("the retry's last error");
    let refused = std::error::Error::source(last).expect("the refusal");
    assert!(refused.is::<CircuitOpen>(), "{err}");
    assert_eq!(last.attempts(), 1, "not retried");
    assert_eq!(
        *gave_up.lock().unwrap(),
        [GiveUp::Refused],
        "reported as refused"
    );
    assert_eq!(circuit.snapshot().rejected(), 1, "one attempt, refused");
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff waited");
    assert_eq!(upstream.calls(), 0);
}

/// A client-side rate limit under a retry: its refusal says when the quota allows another call,
/// and the retry waits that long (rather than its own shorter backoff, which the limiter refused
/// again until the attempts were spent).
#[tokio::test(start_paused = true)]
async fn a_retry_outside_a_rate_limit_waits_for_the_quota() {
    let (mut client, upstream) =
        retry_over_a_limit(tower_rampart::rate_limit::Quota::per_second(1));
    assert_eq!(client.ready().await.unwrap().call(1).await.unwrap(), 1);
    let start = tokio::time::Instant::now();
    assert_eq!(client.ready().await.unwrap().call(2).await.unwrap(), 2);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "waited for the quota: {:?}",
        start.elapsed()
    );
    assert_eq!(upstream.calls(), 2);
}

/// In HTTP mode the breaker answers an open circuit with a `503` and `Retry-After`, which the
/// retry's HTTP classifier took for an upstream's: it retried, capped the wait at its longest
/// delay, and was refused again. The response carries the refusal (`Refused`), and the retry
/// gives up at once.
#[tokio::test(start_paused = true)]
async fn an_http_retry_outside_an_http_breaker_does_not_retry_its_503() {
    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use tower_rampart::rejection::{Refused, RejectionKind};
    let breaker = CircuitBreakerLayer::builder()
        .http()
        .wait_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let retry = RetryLayer::builder()
        .http()
        .max_attempts(3)
        .exponential_backoff(100 * MS, 2.0, Duration::from_secs(2))
        .no_budget()
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(retry)
        .layer(breaker)
        .service(tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from("up"))))
        }));
    circuit.force_open();
    let start = tokio::time::Instant::now();
    let res = client
        .ready()
        .await
        .unwrap()
        .call(Request::new(Full::new(Bytes::new())))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let refused = res
        .extensions()
        .get::<Refused>()
        .expect("marked as a refusal");
    assert_eq!(refused.kind(), RejectionKind::CircuitOpen);
    assert_eq!(circuit.snapshot().rejected(), 1, "one attempt, refused");
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff waited");
}

/// A rate limit whose quota allows another call only after a longer wait than the retry ever
/// makes: the retry gives up at once (one attempt) rather than be refused until its attempts
/// are spent.
#[tokio::test(start_paused = true)]
async fn a_retry_gives_up_at_once_on_a_quota_it_would_not_wait_for() {
    use tower_rampart::rate_limit::error::RateLimited;
    let (mut client, upstream) =
        retry_over_a_limit(tower_rampart::rate_limit::Quota::per_minute(1));
    client.ready().await.unwrap().call(1).await.unwrap();
    let start = tokio::time::Instant::now();
    let err: BoxError = client.ready().await.unwrap().call(2).await.unwrap_err();
    let last = err
        .downcast_ref::<LastError>()
        .expect("the retry's last error");
    assert_eq!(last.attempts(), 1, "given up at once");
    assert!(std::error::Error::source(last).unwrap().is::<RateLimited>());
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(upstream.calls(), 1);
}

/// A breaker above a rate limit: a half-open probe the limit refused never reached the upstream,
/// and counted as a passing probe (a refusal read as "not a failure"), closing the circuit on no
/// evidence. A refusal from below counts as nothing now: the probe's permit goes back and the
/// circuit stays half-open until a probe reaches the upstream.
#[tokio::test(start_paused = true)]
async fn a_probe_refused_below_the_breaker_does_not_close_it() {
    use tower_rampart::rate_limit::{Quota, RateLimitLayer};
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .build()
        .unwrap();
    let upstream = Scripted::new(|n| n == 0);
    let mut client = ServiceBuilder::new()
        .layer(breaker)
        .layer(limit)
        .service(upstream.service());
    client.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(circuit.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_millis(1100)).await;
    // The probe: refused by the limit (one call a minute, spent), never sent.
    client.ready().await.unwrap().call(2).await.unwrap_err();
    assert_eq!(upstream.calls(), 1);
    assert_eq!(
        circuit.state(),
        CircuitState::HalfOpen,
        "a refused probe proves nothing"
    );
    // Once the quota allows, a probe reaches the upstream, succeeds, and closes the circuit.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(client.ready().await.unwrap().call(3).await.unwrap(), 3);
    assert_eq!(circuit.state(), CircuitState::Closed);
}

/// The README's order, breaker outside the retries, over a client-side rate limit: the retry
/// hands back its `LastError` (here holding the limit's refusal), which the breaker counted as the
/// upstream's failure, so the client's own quota could open the circuit. It is read through now.
#[tokio::test(start_paused = true)]
async fn a_breaker_outside_a_retry_does_not_count_the_limit_below_as_a_failure() {
    use tower_rampart::rate_limit::{Quota, RateLimitLayer};
    let breaker = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let circuit = breaker.handle();
    let retry = retry_waiting_up_to_2s();
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false);
    let mut client = ServiceBuilder::new()
        .layer(breaker)
        .layer(retry)
        .layer(limit)
        .service(upstream.service());
    client.ready().await.unwrap().call(1).await.unwrap();
    let err: BoxError = client.ready().await.unwrap().call(2).await.unwrap_err();
    assert!(err.is::<LastError>(), "{err}");
    assert_eq!(
        circuit.state(),
        CircuitState::Closed,
        "a refusal is no failure"
    );
    assert_eq!(circuit.snapshot().consecutive_failures(), 0);
}

/// Up to 3 attempts, exponential backoff from 100 ms doubling up to 2 s, no budget: the retry of
/// the tests of this crate's refusals below it.
fn retry_waiting_up_to_2s() -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(3)
        .exponential_backoff(100 * MS, 2.0, Duration::from_secs(2))
        .no_budget()
        .build()
        .unwrap()
}

/// [`retry_waiting_up_to_2s`] over a rate limit of `quota` over an upstream that always answers,
/// and that upstream.
fn retry_over_a_limit(
    quota: tower_rampart::rate_limit::Quota,
) -> (
    impl Service<u32, Response = u32, Error = BoxError>,
    Scripted,
) {
    let limit = tower_rampart::rate_limit::RateLimitLayer::builder()
        .quota(quota)
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false);
    let client = ServiceBuilder::new()
        .layer(retry_waiting_up_to_2s())
        .layer(limit)
        .service(upstream.service());
    (client, upstream)
}
