//! The tower Service contract: readiness is the inner service's and registers the waker; the first
//! attempt goes through the readied service; each retry readies the spare clone first (it waits for
//! it, without calling it unready); readiness errors; cancellation; the auto traits.

use std::time::Duration;

use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::classify::{ErrorsAreFailures, HttpClassifier};
use tower_rampart::retry::error::{AttemptTimedOut, LastError};
use tower_rampart::retry::request::{CloneAll, HttpRequests};
use tower_rampart::retry::{Retry, RetryBudget, RetryLayer, StandardPolicy};

use crate::MS;

fn layer() -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(10 * MS)
        .no_budget()
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_retries_wait_for_the_spare_to_be_ready() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer());
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(svc.is_woken());
    assert_ready_ok!(svc.poll_ready());

    let mut fut = tokio_test::task::spawn(svc.call(7));
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(req, 7);
    respond.send_error("boom");

    // The backoff passes; the spare is not ready (no capacity allowed), so no retry is sent.
    assert_pending!(fut.poll());
    tokio::time::advance(20 * MS).await;
    assert_pending!(fut.poll());
    assert!(handle.poll_request().is_pending(), "not called unready");

    // Capacity for one call: the spare becomes ready, and the retry goes out with a copy.
    handle.allow(1);
    assert!(fut.is_woken());
    assert_pending!(fut.poll());
    let (req, respond) = handle.next_request().await.unwrap();
    assert_eq!(req, 7);
    respond.send_response(14);
    assert_eq!(assert_ready_ok!(fut.poll()), 14);
}

#[tokio::test(start_paused = true)]
async fn inner_poll_ready_errors_pass_through() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer());
    handle.send_error("inner is broken");
    assert_eq!(
        assert_ready_err!(svc.poll_ready()).to_string(),
        "inner is broken"
    );
}

#[tokio::test(start_paused = true)]
async fn a_spare_that_fails_to_get_ready_ends_the_request_with_its_error() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("first");
    assert_pending!(fut.poll());
    tokio::time::advance(10 * MS).await;
    handle.send_error("the connection pool is gone");
    let err: BoxError = fut.await.unwrap_err();
    let last = err.downcast_ref::<LastError>().unwrap();
    assert_eq!(last.attempts(), 1);
    assert_eq!(last.get_ref().to_string(), "the connection pool is gone");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_future_cancels_the_attempt_and_the_wait() {
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(Duration::from_secs(1))
        .attempt_timeout(Duration::from_secs(5))
        .no_budget()
        .build()
        .unwrap();
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    handle.allow(10);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(1));
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_error("first");
    assert_pending!(fut.poll()); // waiting out the backoff
    drop(fut);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(
        handle.poll_request().is_pending(),
        "no retry after cancellation"
    );
}

#[tokio::test(start_paused = true)]
async fn the_attempt_timer_is_armed_again_for_each_retry() {
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .fixed_backoff(MS)
        .attempt_timeout(100 * MS)
        .no_budget()
        .build()
        .unwrap();
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    handle.allow(10);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(1);
    let task = tokio::spawn(fut);
    let (_, first) = handle.next_request().await.unwrap();
    let (_, second) = handle.next_request().await.unwrap();
    // The first attempt timed out (its call was dropped), and so does the second.
    drop(first);
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<AttemptTimedOut>().unwrap().attempts(), 2);
    drop(second);
}

/// Regression guard (the same as the other layers'): a spawned task calling through the layer over
/// a `BoxError` service must compile; the future names its error type directly, not through the
/// mode's trait.
#[tokio::test]
async fn spawned_calls_over_a_boxerror_service_compile_and_run() {
    let svc = layer().layer(tower::service_fn(|n: u32| async move {
        Ok::<_, BoxError>(n + 1)
    }));
    let task = tokio::spawn(async move {
        let mut svc = svc;
        ServiceExt::<u32>::ready(&mut svc)
            .await
            .unwrap()
            .call(1)
            .await
            .unwrap()
    });
    assert_eq!(task.await.unwrap(), 2);
}

#[test]
fn layers_services_and_futures_are_send_sync_static() {
    use crate::common::send_sync_static;
    send_sync_static::<RetryLayer>();
    send_sync_static::<
        RetryLayer<StandardPolicy<HttpClassifier, HttpRequests>, tower_rampart::http::AsHttp>,
    >();
    send_sync_static::<
        Retry<
            tower::util::BoxCloneSyncService<u32, u32, BoxError>,
            StandardPolicy<ErrorsAreFailures, CloneAll>,
        >,
    >();
    send_sync_static::<RetryBudget>();
    send_sync_static::<LastError>();
    send_sync_static::<AttemptTimedOut>();
    fn send<T: Send + 'static>(_: &T) {}
    let mut svc = RetryLayer::builder()
        .http()
        .build()
        .unwrap()
        .layer(tower::service_fn(|_: http::Request<String>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(axum::body::Body::empty()))
        }));
    let fut = svc.call(http::Request::new(String::new()));
    send(&fut);
}

#[test]
fn debug_output_names_the_parts() {
    let l = layer();
    let text = format!("{l:?}");
    assert!(
        text.contains("RetryLayer") && text.contains("max_attempts: 3"),
        "{text}"
    );
}

/// A custom policy that retries every error at once (no delay), up to `attempts` attempts.
struct AtOnce {
    attempts: u32,
}

impl tower_rampart::retry::Policy<u32, u32, BoxError> for AtOnce {
    type State = ();

    fn start(&self, _req: &u32) {}

    fn clone_request(
        &self,
        req: &mut u32,
    ) -> Result<u32, tower_rampart::retry::request::NotRetryable> {
        Ok(*req)
    }

    fn decide(
        &self,
        _state: &mut (),
        attempt: tower_rampart::retry::Attempt,
        outcome: tower_rampart::retry::Outcome<'_, u32, BoxError>,
    ) -> tower_rampart::retry::Decision {
        use tower_rampart::classify::Reason;
        use tower_rampart::retry::{Decision, GiveUp, Outcome};
        match outcome {
            Outcome::Finished(Ok(_)) => Decision::Done,
            _ if attempt.number() >= self.attempts => Decision::GiveUp {
                reason: Reason::Error,
                why: GiveUp::Attempts,
            },
            _ => Decision::Retry {
                after: Duration::ZERO,
                reason: Reason::Error,
            },
        }
    }
}

/// An always-ready upstream that always fails, counting its calls.
fn always_failing(
    calls: &std::sync::Arc<std::sync::atomic::AtomicU32>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let calls = calls.clone();
    tower::service_fn(move |_: u32| {
        calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Err::<u32, BoxError>("down".into()))
    })
}

/// Regression (#5 review): a custom policy asking for immediate retries (`after: 0`) against an
/// always-ready failing service looped inside one `poll`, without ever yielding. Each immediate
/// retry now yields to the executor first: one attempt per poll.
#[tokio::test]
async fn immediate_retries_yield_between_attempts() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let count = || calls.load(std::sync::atomic::Ordering::SeqCst);
    let layer = RetryLayer::custom(AtOnce { attempts: 1_000 })
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(&calls));
    ServiceExt::<u32>::ready(&mut svc).await.unwrap();
    let mut fut = tokio_test::task::spawn(svc.call(1));
    assert_eq!(count(), 1, "the first attempt, sent by `call`");
    assert_pending!(fut.poll());
    assert!(fut.is_woken(), "it asks to be polled again at once");
    assert_eq!(count(), 1, "the retry waits for the next poll");
    let mut polls = 1;
    let err = loop {
        polls += 1;
        if let std::task::Poll::Ready(result) = fut.poll() {
            break result.unwrap_err();
        }
        assert!(fut.is_woken());
        assert_eq!(count(), polls, "one attempt per poll");
    };
    assert_eq!(err.downcast_ref::<LastError>().unwrap().attempts(), 1_000);
    assert_eq!((count(), polls), (1_000, 1_000));
}

/// The same on a one-thread runtime: another task runs while the request retries.
#[tokio::test(flavor = "current_thread")]
async fn immediate_retries_leave_room_for_other_tasks() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let layer = RetryLayer::custom(AtOnce { attempts: 10_000 })
        .build()
        .unwrap();
    let mut svc = layer.layer(always_failing(&calls));
    let task = tokio::spawn(async move { crate::call(&mut svc, 1).await });
    tokio::task::yield_now().await;
    let seen = calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        seen < 10_000,
        "this task ran while the request was retrying ({seen} attempts so far)"
    );
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.downcast_ref::<LastError>().unwrap().attempts(), 10_000);
}
