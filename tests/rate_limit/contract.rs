//! The tower Service contract (STYLE habits 6-9): readiness is the inner service's, refusals come
//! from the call future, reservations happen once per `poll_ready`/`call` pair and are not cloned,
//! a pending `poll_ready` registers its waker, and inner errors pass through. Plus the auto traits.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::backend::memory::MemoryRateLimitStore;
use tower_rampart::backend::{BackendError, BackendUnavailable};
use tower_rampart::http::AsHttp;
use tower_rampart::key::PeerIp;
use tower_rampart::rate_limit::error::RateLimited;
use tower_rampart::rate_limit::{
    Check, Decision, Quota, RateLimit, RateLimitBackend, RateLimitLayer, RateLimitSpec,
    RateLimitStore,
};

use crate::support::Counting;

#[tokio::test(start_paused = true)]
async fn poll_ready_is_the_inner_services_and_registers_the_waker() {
    let layer = RateLimitLayer::new(Quota::per_minute(1));
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    handle.allow(0);
    assert_pending!(svc.poll_ready());
    handle.allow(1);
    assert!(
        svc.is_woken(),
        "waker registered while the inner service was not ready"
    );
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(1);
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, 1);
    send.send_response(2);
    assert_eq!(fut.await.unwrap(), 2);

    // Over quota, poll_ready still reports the inner service's readiness: the refusal comes from
    // the call future, which never reaches the inner service.
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call(3).await.unwrap_err();
    assert!(err.is::<RateLimited>());
    assert!(
        handle.poll_request().is_pending(),
        "no request reached the inner service"
    );
}

#[tokio::test]
async fn inner_poll_ready_errors_pass_through() {
    let layer = RateLimitLayer::new(Quota::per_minute(10));
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(layer);
    handle.send_error("inner is broken");
    let err = assert_ready_err!(svc.poll_ready());
    assert_eq!(err.to_string(), "inner is broken");
}

fn waiting_layer(
    limit: u32,
) -> RateLimitLayer<tower_rampart::key::GlobalKey, MemoryRateLimitStore<()>> {
    RateLimitLayer::builder()
        .quota(Quota::per_hour(limit))
        .wait_up_to(Duration::from_millis(10))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
#[should_panic(expected = "poll_ready must be called first")]
async fn waiting_mode_call_without_poll_ready_panics() {
    let mut svc = waiting_layer(5).layer(Counting::default());
    drop(svc.call(1u32));
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_reserves_once_per_call_and_clones_do_not_share_a_reservation() {
    let inner = Counting::default();
    let mut svc = tokio_test::task::spawn(waiting_layer(2).layer(inner.clone()));
    // Two poll_readys before one call reserve one unit, not two.
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));

    // A clone made now does not inherit the reservation.
    let mut clone = svc.clone();
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(clone.call(0u32));
    }));
    assert!(panicked.is_err(), "the clone must be made ready itself");

    svc.call(1u32).await.unwrap();
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    svc.call(2u32).await.unwrap();
    assert_eq!(inner.calls(), 2);
    // The quota is spent: the next reservation is a refusal (the wait would exceed 10 ms).
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    assert!(svc.call(3u32).await.unwrap_err().is::<RateLimited>());
}

/// A reservation that is a refusal is answered by `call` without the inner service, so
/// `poll_ready` does not wait for the inner service's readiness to deliver it.
#[tokio::test(start_paused = true)]
async fn waiting_mode_refusal_does_not_wait_for_the_inner_service() {
    let (mut svc, mut handle) = tower_test::mock::spawn_layer::<u32, u32, _>(waiting_layer(1));
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(1);
    let (_, respond) = handle.next_request().await.unwrap();
    respond.send_response(1);
    fut.await.unwrap();
    // The quota is spent (the wait would exceed 10 ms) and the inner service is not ready.
    handle.allow(0);
    assert_ready_ok!(svc.poll_ready());
    assert!(svc.call(2).await.unwrap_err().is::<RateLimited>());
    assert!(
        handle.poll_request().is_pending(),
        "the inner service was not called"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_pending_poll_ready_is_woken_when_quota_returns() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1).burst(1))
        .wait_up_to(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = tokio_test::task::spawn(layer.layer(Counting::default()));
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    svc.call(1u32).await.unwrap();
    assert_pending!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    tokio::time::advance(Duration::from_millis(999)).await;
    assert!(!svc.is_woken());
    assert_pending!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(svc.is_woken());
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    svc.call(2u32).await.unwrap();
}

/// A caller that gave up on readiness (a timeout around `ready()`) and comes back later waits
/// afresh, up to the whole `wait_up_to` again: the first wait's deadline, long past, used to
/// refuse it at once.
#[tokio::test(start_paused = true)]
async fn waiting_mode_a_wait_given_up_and_resumed_later_gets_its_own_deadline() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1).burst(1))
        .wait_up_to(Duration::from_secs(5))
        .build()
        .unwrap();
    let counting = Counting::default();
    let mut svc = layer.layer(counting.clone());
    let mut other = svc.clone();
    ServiceExt::<u32>::ready(&mut svc).await.unwrap();
    svc.call(1u32).await.unwrap();
    // Refused (the next unit comes in 1 s): the caller stops waiting after 100 ms.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(100),
            ServiceExt::<u32>::ready(&mut svc)
        )
        .await
        .is_err()
    );
    // 20 s later another caller takes the unit that came back, and this one asks again: it
    // waits for the next, 1 s, within its new wait.
    tokio::time::advance(Duration::from_secs(20)).await;
    ServiceExt::<u32>::ready(&mut other).await.unwrap();
    other.call(2u32).await.unwrap();
    let start = tokio::time::Instant::now();
    ServiceExt::<u32>::ready(&mut svc).await.unwrap();
    svc.call(3u32)
        .await
        .expect("admitted after waiting, not refused");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// A backend that decides after 10 ms of "I/O": refuses the first `refuse_first` checks, allows
/// the `allow` after them, then refuses, and fails every check once `fail` is set. Exercises the
/// path Redis will take.
#[derive(Clone, Default)]
struct SlowBackend {
    checks: Arc<AtomicUsize>,
    refuse_first: usize,
    allow: usize,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl<K> RateLimitBackend<K> for SlowBackend {
    type Store = SlowBackend;
    fn rate_limit_store(&self, _: &RateLimitSpec) -> Result<Self, tower_rampart::ConfigError> {
        Ok(self.clone())
    }
}

impl std::fmt::Debug for SlowBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlowBackend")
    }
}

type SlowCheck = Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>;

impl<K> RateLimitStore<K> for SlowBackend {
    type Future = SlowCheck;
    fn check(&self, _: &K, _: &tower_rampart::rate_limit::Ask<'_>) -> Check<SlowCheck> {
        let n = self.checks.fetch_add(1, Ordering::SeqCst);
        let allow = n >= self.refuse_first && n < self.refuse_first + self.allow;
        let fail = self.fail.load(Ordering::SeqCst);
        Check::Pending(Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if fail {
                return Err(BackendError::new("backend down", None));
            }
            Ok(if allow {
                Decision::allowed(2, 1, Duration::from_secs(1))
            } else {
                Decision::denied(2, Duration::from_secs(1), Duration::from_secs(1))
            })
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn backends_that_do_io_decide_in_the_future_with_the_readied_service() {
    let backend = SlowBackend {
        allow: 1,
        ..SlowBackend::default()
    };
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(2))
        .backend(backend.clone())
        .build()
        .unwrap();
    let inner = Counting::default();
    let mut svc = layer.layer(inner.clone());
    let start = tokio::time::Instant::now();
    assert_eq!(
        ServiceExt::<u32>::ready(&mut svc)
            .await
            .unwrap()
            .call(5)
            .await
            .unwrap(),
        5
    );
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    let err = ServiceExt::<u32>::ready(&mut svc)
        .await
        .unwrap()
        .call(6)
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
    assert_eq!(inner.calls(), 1);
    backend.fail.store(true, Ordering::SeqCst);
    let err = ServiceExt::<u32>::ready(&mut svc)
        .await
        .unwrap()
        .call(7)
        .await
        .unwrap_err();
    let unavailable = err
        .downcast_ref::<BackendUnavailable>()
        .expect("BackendUnavailable");
    assert_eq!(unavailable.to_string(), "backend unavailable: backend down");
    assert_eq!(inner.calls(), 1);
    assert_eq!(backend.checks.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_on_an_io_backend_waits_then_calls() {
    let backend = SlowBackend {
        allow: 0,
        ..SlowBackend::default()
    };
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(2))
        .key(tower_rampart::key::key_fn(|_: &u32| Some(())))
        .backend(backend.clone())
        .wait_up_to(Duration::from_millis(2500))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    // Every check refuses with retry_after 1 s: checks at 0, ~1 s and ~2 s, then the wait runs out.
    let start = tokio::time::Instant::now();
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert!(err.is::<RateLimited>());
    assert_eq!(backend.checks.load(Ordering::SeqCst), 3);
    assert_eq!(start.elapsed(), Duration::from_millis(2030));
}

#[test]
fn layers_services_and_futures_are_send_sync_static() {
    use crate::common::send_sync_static;
    fn send_static<T: Send + 'static>(_: &T) {}
    type HttpLayer = RateLimitLayer<PeerIp, MemoryRateLimitStore<IpAddr>, AsHttp>;
    send_sync_static::<HttpLayer>();
    send_sync_static::<RateLimit<Counting, PeerIp, MemoryRateLimitStore<IpAddr>, AsHttp>>();
    send_sync_static::<RateLimitLayer<tower_rampart::key::GlobalKey, MemoryRateLimitStore<()>>>();
    send_sync_static::<RateLimited>();
    send_sync_static::<BackendUnavailable>();

    let mut svc = RateLimitLayer::per_ip(Quota::per_second(1)).layer(tower::service_fn(
        |_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(bytes::Bytes::new()))
        },
    ));
    let fut = svc.call(http::Request::new(()));
    send_static(&fut);
    let _: Result<(), BoxError> = Ok(());
}

#[test]
fn refusals_are_ready_at_once_without_polling_the_inner_service() {
    let inner = Counting::default();
    let mut svc = RateLimitLayer::new(Quota::per_minute(1)).layer(inner.clone());
    let mut first = tokio_test::task::spawn(svc.call(1u32));
    assert_eq!(assert_ready_ok!(first.poll()), 1);
    let mut second = tokio_test::task::spawn(svc.call(2u32));
    let out = assert_ready!(second.poll());
    assert!(out.unwrap_err().is::<RateLimited>());
    assert_eq!(inner.calls(), 1);
}

/// A job with a tenant, for the named layer below.
struct Job {
    tenant: u64,
}

/// A layer keyed by a plain `fn` has a type that can be written down, so a function can return
/// it and a struct can hold it (#15).
fn per_tenant(
    limit: u32,
) -> RateLimitLayer<tower_rampart::key::KeyFnPtr<Job, u64>, MemoryRateLimitStore<u64>> {
    RateLimitLayer::builder()
        .quota(Quota::per_hour(limit))
        .key(tower_rampart::key::KeyFn::from_fn(|job: &Job| {
            Some(job.tenant)
        }))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_layer_keyed_by_a_fn_is_nameable_and_limits_per_key() {
    let mut svc = per_tenant(1).layer(tower::service_fn(|job: Job| async move {
        Ok::<_, BoxError>(job.tenant)
    }));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Job { tenant: 1 })
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(Job { tenant: 2 })
            .await
            .unwrap(),
        2
    );
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Job { tenant: 1 })
        .await
        .unwrap_err();
    assert!(err.is::<RateLimited>());
}

/// With per-request keys, a request sleeping for its key's quota does not hold what the inner
/// service's readiness reserved: another key's request, with quota, goes through at once.
#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_quota_does_not_hold_the_inner_services_readiness() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1).burst(1))
        .key(tower_rampart::key::key_fn(|k: &u32| Some(*k)))
        .wait_up_to(Duration::from_secs(5))
        .build()
        .unwrap();
    let inner = Counting::default();
    let svc = layer.layer(tower::limit::ConcurrencyLimit::new(inner.clone(), 1));
    let mut svc = tokio_test::task::spawn(svc);
    // Key 1's first request spends its quota; its second must sleep a second for it.
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    svc.call(1u32).await.unwrap();
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    let mut sleeping = tokio_test::task::spawn(svc.call(1u32));
    assert_pending!(sleeping.poll());
    // Key 2 has quota: the service is ready for it, and it is answered, with no time passing.
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    let other = tokio::time::timeout(Duration::ZERO, svc.call(2u32)).await;
    assert!(matches!(other, Ok(Ok(_))), "key 2 waited for key 1's quota");
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_ready_ok!(sleeping.poll());
    assert_eq!(inner.calls(), 3);

    // One caller using the service in turn (`ready().await`, then `call().await`): its second
    // request for key 3 waits for the quota, then reaches the inner service (the readiness its
    // `poll_ready` reserved is let go while it sleeps, not kept where nothing will use it).
    let mut one = layer.layer(tower::limit::ConcurrencyLimit::new(inner.clone(), 1));
    ServiceExt::<u32>::ready(&mut one)
        .await
        .unwrap()
        .call(3)
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let second = ServiceExt::<u32>::ready(&mut one).await.unwrap().call(3);
    tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("not stuck waiting for its own reservation")
        .unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(1));
}

/// The pending-check path (an I/O backend such as Redis) in waiting mode with per-request keys: a
/// request told to wait for quota does not hold what the inner service's readiness reserved
/// either.
#[tokio::test(start_paused = true)]
async fn waiting_mode_on_an_io_backend_does_not_hold_the_inner_services_readiness() {
    let backend = SlowBackend {
        refuse_first: 1,
        allow: 5,
        ..SlowBackend::default()
    };
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(2))
        .key(tower_rampart::key::key_fn(|k: &u32| Some(*k)))
        .backend(backend.clone())
        .wait_up_to(Duration::from_millis(2500))
        .build()
        .unwrap();
    let inner = Counting::default();
    let svc = layer.layer(tower::limit::ConcurrencyLimit::new(inner.clone(), 1));
    let mut svc = tokio_test::task::spawn(svc);
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    let mut waiting = tokio_test::task::spawn(svc.call(1u32));
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_millis(10)).await;
    assert_pending!(waiting.poll()); // refused: sleeping for its quota
    // The next request: the service is ready for it, and the store admits it.
    assert_ready_ok!(svc.enter(|cx, mut s| Service::<u32>::poll_ready(s.as_mut().get_mut(), cx)));
    let started = tokio::time::Instant::now();
    svc.call(2u32).await.unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(10),
        "only the check's I/O"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(waiting.await.unwrap(), 1);
    assert_eq!(inner.calls(), 2);
}
