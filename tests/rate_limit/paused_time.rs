//! Behaviour over time, on tokio's paused clock.

use std::time::Duration;

use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::rate_limit::error::RateLimited;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

use crate::support::Counting;

async fn send<S>(svc: &mut S) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(7).await
}

#[tokio::test(start_paused = true)]
async fn ten_per_minute_admits_exactly_ten_of_twelve_then_recovers() {
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let inner = Counting::default();
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_minute(10))
            .algorithm(algorithm)
            .build()
            .unwrap();
        let mut svc = layer.layer(inner.clone());
        let mut outcomes = Vec::new();
        for _ in 0..12 {
            outcomes.push(send(&mut svc).await);
        }
        assert!(outcomes[..10].iter().all(|r| r.is_ok()), "{algorithm:?}");
        assert_eq!(
            inner.calls(),
            10,
            "refused requests never reach the inner service"
        );
        let eleventh = outcomes[10].as_ref().unwrap_err();
        let limited = eleventh
            .downcast_ref::<RateLimited>()
            .expect("a RateLimited error");
        assert_eq!(limited.limit(), 10);
        assert_eq!(limited.remaining(), 0);
        assert_eq!(limited.period(), Duration::from_secs(60));
        assert_eq!(eleventh.to_string(), "rate limit exceeded");
        match algorithm {
            // GCRA frees one slot every 6 s.
            Algorithm::Gcra => assert_eq!(limited.retry_after(), Duration::from_secs(6)),
            // The sliding window waits for the next window plus the decay of this one's count.
            _ => assert_eq!(limited.retry_after(), Duration::from_secs(66)),
        }
        // Just before the retry time: still refused. At it: admitted.
        tokio::time::advance(limited.retry_after() - Duration::from_millis(1)).await;
        assert!(
            send(&mut svc).await.is_err(),
            "{algorithm:?} admitted early"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(
            send(&mut svc).await.is_ok(),
            "{algorithm:?} refused at retry_after"
        );
        // After a quiet period long enough for everything to decay, the whole quota again.
        tokio::time::advance(Duration::from_secs(180)).await;
        for i in 0..10 {
            assert!(
                send(&mut svc).await.is_ok(),
                "{algorithm:?} request {i} after recovery"
            );
        }
        assert!(send(&mut svc).await.is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn burst_allows_back_to_back_requests_then_the_steady_rate() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(10).burst(3))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    for _ in 0..3 {
        send(&mut svc).await.unwrap();
    }
    let err = send(&mut svc).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<RateLimited>().unwrap().retry_after(),
        Duration::from_millis(100)
    );
    // At the steady rate, one every 100 ms goes through indefinitely.
    for _ in 0..20 {
        tokio::time::advance(Duration::from_millis(100)).await;
        send(&mut svc).await.unwrap();
        assert!(send(&mut svc).await.is_err());
    }
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_the_limit() {
    let layer = RateLimitLayer::new(Quota::per_minute(4));
    let mut a = layer.layer(Counting::default());
    let mut b = layer.clone().layer(Counting::default());
    let mut c = a.clone();
    send(&mut a).await.unwrap();
    send(&mut b).await.unwrap();
    send(&mut c).await.unwrap();
    send(&mut a).await.unwrap();
    assert!(send(&mut b).await.is_err());
    assert!(send(&mut c).await.is_err());
    // A separately built layer has its own limit.
    let mut other = RateLimitLayer::new(Quota::per_minute(4)).layer(Counting::default());
    send(&mut other).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_with_a_global_key_waits_in_poll_ready() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(2).burst(1))
        .wait_up_to(Duration::from_secs(1))
        .build()
        .unwrap();
    let inner = Counting::default();
    let mut svc = layer.layer(inner.clone());
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        send(&mut svc).await.unwrap();
    }
    // One immediately, then one per 500 ms: the two waits happened in poll_ready.
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(inner.calls(), 3);

    // A wait longer than the maximum is refused at once, without sleeping.
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .wait_up_to(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    send(&mut svc).await.unwrap();
    let before = tokio::time::Instant::now();
    let err = send(&mut svc).await.unwrap_err();
    assert!(err.is::<RateLimited>());
    assert_eq!(before.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_with_request_keys_waits_in_the_response_future() {
    use tower_rampart::key::key_fn;
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1).burst(1))
        .key(key_fn(|n: &u32| Some(*n)))
        .wait_up_to(Duration::from_secs(2))
        .build()
        .unwrap();
    let inner = Counting::default();
    let mut svc = layer.layer(inner.clone());
    svc.ready().await.unwrap().call(1).await.unwrap();
    let start = tokio::time::Instant::now();
    // Key 1 waits a second; key 2 does not wait at all.
    let waiting = svc.ready().await.unwrap().call(1);
    let other = svc.ready().await.unwrap().call(2).await.unwrap();
    assert_eq!(other, 2);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(waiting.await.unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(inner.calls(), 3);
}
