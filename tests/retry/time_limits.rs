//! Deadlines and per-attempt timeouts on paused time, and what the caller gets when they run out.

use std::time::Duration;

use tokio::time::Instant;
use tower::Layer;
use tower_rampart::retry::error::{AttemptTimedOut, LastError, attempts};
use tower_rampart::retry::{RetryLayer, TimeLimit};

use crate::{MS, Scripted, call};

#[tokio::test(start_paused = true)]
async fn no_retry_starts_that_could_not_begin_before_the_deadline() {
    let layer = RetryLayer::builder()
        .max_attempts(10)
        .fixed_backoff(400 * MS)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let upstream = Scripted::failing();
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    // Attempts at 0, 400 and 800 ms; the next would start at 1200 ms, past the deadline: the last
    // error is returned at once, at 800 ms.
    assert_eq!(upstream.call_times(start), [0, 400, 800].map(|n| n * MS));
    assert_eq!(Instant::now() - start, 800 * MS);
    let last = err.downcast_ref::<LastError>().expect("the last error");
    assert_eq!(last.attempts(), 3);
    assert_eq!(last.get_ref().to_string(), "upstream failed");
}

#[tokio::test(start_paused = true)]
async fn an_attempt_still_running_at_the_deadline_is_dropped() {
    let layer = RetryLayer::builder()
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false).slow(|_| Duration::from_secs(10));
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    let timed_out = err.downcast_ref::<AttemptTimedOut>().expect("a timeout");
    assert!(timed_out.is_deadline());
    assert_eq!(timed_out.limit(), TimeLimit::Deadline);
    assert_eq!(timed_out.attempts(), 1);
    assert_eq!(err.to_string(), "deadline exceeded");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn timed_out_attempts_are_retried() {
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(100 * MS)
        .attempt_timeout(500 * MS)
        .no_budget()
        .build()
        .unwrap();
    // The first two calls hang; the third answers at once.
    let upstream = Scripted::new(|_| false).slow(|n| {
        if n < 2 {
            Duration::from_secs(3600)
        } else {
            Duration::ZERO
        }
    });
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(upstream.call_times(start), [0, 600, 1200].map(|n| n * MS));
}

#[tokio::test(start_paused = true)]
async fn a_final_timeout_is_a_downcastable_error_with_the_attempt_count() {
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .fixed_backoff(100 * MS)
        .attempt_timeout(500 * MS)
        .deadline(Duration::from_secs(60))
        .no_budget()
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false).slow(|_| Duration::from_secs(3600));
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(Instant::now() - start, 1100 * MS);
    let timed_out = err.downcast_ref::<AttemptTimedOut>().expect("a timeout");
    assert!(!timed_out.is_deadline());
    assert_eq!(timed_out.attempts(), 2);
    assert_eq!(err.to_string(), "attempt timed out");
    assert_eq!(attempts(err.as_ref()), Some(2));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_the_per_attempt_timeout_short() {
    let layer = RetryLayer::builder()
        .max_attempts(5)
        .fixed_backoff(100 * MS)
        .attempt_timeout(400 * MS)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false).slow(|_| Duration::from_secs(3600));
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    // 0-400 (timeout), 500-900 (timeout), 1000? no: 900 + 100 = 1000 is the deadline itself.
    assert_eq!(upstream.call_times(start), [0, 500].map(|n| n * MS));
    assert_eq!(Instant::now() - start, 900 * MS);
    let timed_out = err.downcast_ref::<AttemptTimedOut>().unwrap();
    assert_eq!((timed_out.attempts(), timed_out.is_deadline()), (2, false));

    // With more room, the third attempt gets only what is left before the deadline.
    let layer = RetryLayer::builder()
        .max_attempts(5)
        .fixed_backoff(50 * MS)
        .attempt_timeout(400 * MS)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false).slow(|_| Duration::from_secs(3600));
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(upstream.call_times(start), [0, 450, 900].map(|n| n * MS));
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    let timed_out = err.downcast_ref::<AttemptTimedOut>().unwrap();
    assert_eq!((timed_out.attempts(), timed_out.is_deadline()), (3, true));
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_final_when_retrying_them_is_off() {
    let layer = RetryLayer::builder()
        .attempt_timeout(500 * MS)
        .retry_timeouts(false)
        .build()
        .unwrap();
    let upstream = Scripted::new(|_| false).slow(|_| Duration::from_secs(3600));
    let mut svc = layer.layer(upstream.service());
    let err = call(&mut svc, 1).await.unwrap_err();
    assert_eq!(err.downcast_ref::<AttemptTimedOut>().unwrap().attempts(), 1);
    assert_eq!(upstream.calls(), 1);
}

/// A layer with a 1 s deadline, 3 attempts, 10 ms between them, no budget.
fn deadline_layer() -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(10 * MS)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .build()
        .unwrap()
}

/// Regression (#5 review): the deadline did not bound the wait for the inner service to become
/// ready before a retry. With a 1 s deadline and an upstream that never became ready, the request
/// was still pending an hour later.
#[tokio::test(start_paused = true)]
async fn the_deadline_bounds_the_wait_for_the_inner_service_to_be_ready() {
    use tokio_test::{assert_pending, assert_ready_ok};
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(deadline_layer());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let start = Instant::now();
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("first");
    assert_pending!(fut.poll());
    // The backoff passes; no capacity, so the retry waits for readiness...
    tokio::time::advance(500 * MS).await;
    assert_pending!(fut.poll());
    // ... until the deadline, where the last result is returned.
    tokio::time::advance(500 * MS).await;
    assert!(fut.is_woken(), "the deadline wakes the request");
    let err = match fut.poll() {
        std::task::Poll::Ready(result) => result.unwrap_err(),
        std::task::Poll::Pending => panic!("still pending at the deadline"),
    };
    assert_eq!(Instant::now() - start, Duration::from_secs(1));
    let last = err
        .downcast_ref::<LastError>()
        .expect("the last attempt's error");
    assert_eq!(
        (last.attempts(), last.get_ref().to_string()),
        (1, "first".into())
    );
}

/// Regression (#5 review): capacity that arrived after the deadline once started a retry at once
/// (cut off by the deadline immediately). No attempt may start after the deadline.
#[tokio::test(start_paused = true)]
async fn no_attempt_starts_after_the_deadline_even_when_capacity_arrives() {
    use tokio_test::{assert_pending, assert_ready_ok};
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(deadline_layer());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("first");
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_secs(3600)).await;
    // Capacity arrives before the request is polled again, an hour past its deadline.
    handle.allow(1);
    let err = match fut.poll() {
        std::task::Poll::Ready(result) => result.unwrap_err(),
        std::task::Poll::Pending => panic!("still pending an hour past the deadline"),
    };
    assert_eq!(attempts(err.as_ref()), Some(1));
    assert!(
        handle.poll_request().is_pending(),
        "no retry sent past the deadline"
    );
}

/// The deadline's outcome while waiting for readiness is the last *response* when the last
/// attempt answered with one (a retryable response, here `503`), as the module documentation's
/// table says.
#[tokio::test(start_paused = true)]
async fn a_deadline_reached_while_waiting_for_readiness_returns_the_last_response() {
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower_rampart::classify::{Reason, Verdict, classify_fn};
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(10 * MS)
        .deadline(Duration::from_secs(1))
        .no_budget()
        .classify(classify_fn(
            |r: &Result<u32, tower_rampart::BoxError>| match r {
                Ok(503) => Verdict::transient(Reason::Status(503)),
                Ok(_) => Verdict::Success,
                Err(_) => Verdict::transient(Reason::Error),
            },
        ))
        .build()
        .unwrap();
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(503);
    assert_pending!(fut.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    match fut.poll() {
        std::task::Poll::Ready(result) => assert_eq!(result.unwrap(), 503),
        std::task::Poll::Pending => panic!("still pending at the deadline"),
    }
}
