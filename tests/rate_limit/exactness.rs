//! Regressions of three review findings, each named after what a user saw: the waiting global
//! limiter spent one unit whatever a request cost; a set's take-back after an emission interval
//! erased another decision's spend; and a period that is not whole seconds was stated as one
//! (`RateLimited::period()`, `RateLimit-Policy`'s `w=`).

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::backend::memory::MemoryRateLimitStore;
use tower_rampart::backend::{BackendError, MemoryBackend};
use tower_rampart::clock::{Clock, Nanos};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::error::{CostTooHigh, RateLimited};
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Decision, Limit, LimitSet, Quota, RateLimitBackend, RateLimitLayer,
    RateLimitSpec, RateLimitStore,
};
use tower_rampart::{BoxError, ConfigError};

use crate::support::Counting;

async fn send<S>(svc: &mut S, cost: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(cost).await
}

/// A waiting global limiter of `quota` on `inner`, each request costing the units it carries,
/// waiting up to `wait`.
fn waiting(
    quota: Quota,
    wait: Duration,
    inner: Counting,
) -> impl Service<u32, Response = u32, Error = BoxError> {
    RateLimitLayer::builder()
        .quota(quota)
        .cost(|units: &u32| *units)
        .wait_up_to(wait)
        .build()
        .unwrap()
        .layer(inner)
}

/// Waiting mode with the global key reserved one unit in `poll_ready` and `call` took it whatever
/// the request cost: ten requests of 10 units passed at one instant on 10 a minute, and a cost
/// above the burst was never `CostTooHigh`.
#[tokio::test(start_paused = true)]
async fn waiting_global_limiter_spends_each_requests_whole_cost() {
    let inner = Counting::default();
    let mut svc = waiting(
        Quota::per_minute(10),
        Duration::from_millis(10),
        inner.clone(),
    );
    let mut admitted = 0;
    for _ in 0..10 {
        match send(&mut svc, 10).await {
            Ok(_) => admitted += 1,
            Err(e) => assert!(e.is::<RateLimited>(), "{e}"),
        }
    }
    assert_eq!(admitted, 1, "one request of 10 units fills 10 a minute");
    assert_eq!(inner.calls(), 1);
    // The refusal carries the real cost's wait: its 10 units are back after a minute.
    let e = send(&mut svc, 10).await.unwrap_err();
    let limited = e.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.retry_after(), Duration::from_secs(60));

    // A cost above the burst: `CostTooHigh`, with quota left (the reservation granted) and
    // without (refused), never a 429 that invites a retry.
    let mut svc = waiting(
        Quota::per_minute(10),
        Duration::from_millis(10),
        Counting::default(),
    );
    let e = send(&mut svc, 11).await.unwrap_err();
    let too_high = e.downcast_ref::<CostTooHigh>().expect("cost too high");
    assert_eq!((too_high.cost(), too_high.capacity()), (11, 10));
    // It spent nothing: the whole burst is still there (the unit reserved for it served this
    // call, so the service's next reservation is granted too).
    assert_eq!(send(&mut svc, 10).await.unwrap(), 10);
    let e = send(&mut svc, 11).await.unwrap_err();
    assert!(e.is::<CostTooHigh>(), "{e}");
}

/// The rest of a request's cost is waited for like the unit `poll_ready` reserved, and a cost of
/// zero passes without spending whether the reservation was granted or refused.
#[tokio::test(start_paused = true)]
async fn waiting_global_limiter_waits_for_the_rest_and_lets_zero_cost_through() {
    // 10 a second: one unit every 100 ms, a burst of 10.
    let mut svc = waiting(
        Quota::per_second(10),
        Duration::from_secs(1),
        Counting::default(),
    );
    let start = Instant::now();
    assert_eq!(send(&mut svc, 4).await.unwrap(), 4);
    assert_eq!(send(&mut svc, 4).await.unwrap(), 4);
    assert_eq!(start.elapsed(), Duration::ZERO);
    // Two units left: the reserved one at once, the other three 200 ms later.
    assert_eq!(send(&mut svc, 4).await.unwrap(), 4);
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    // The bucket is empty again: one unit 100 ms later.
    assert_eq!(send(&mut svc, 1).await.unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(300));

    // Two an hour: a request of cost 0 keeps the reserved unit for the service's next call.
    let inner = Counting::default();
    let mut svc = waiting(Quota::per_hour(2), Duration::from_millis(10), inner.clone());
    assert_eq!(send(&mut svc, 0).await.unwrap(), 0);
    assert_eq!(send(&mut svc, 1).await.unwrap(), 1);
    assert_eq!(
        send(&mut svc, 1).await.unwrap(),
        1,
        "the cost-0 request spent nothing"
    );
    assert!(send(&mut svc, 1).await.unwrap_err().is::<RateLimited>());
    // Exhausted (the reservation refused): a cost of 0 still passes, readied afresh.
    assert_eq!(send(&mut svc, 0).await.unwrap(), 0);
    assert_eq!(inner.calls(), 4);
}

/// The in-memory store answering as a backend that does I/O does (`Check::Pending`): the
/// reservation and the rest of a cost are awaited.
#[derive(Clone, Debug, Default)]
struct Deferred<S = ()>(S);

impl RateLimitBackend<()> for Deferred {
    type Store = Deferred<MemoryRateLimitStore<()>>;

    fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError> {
        Ok(Deferred(MemoryBackend::new().rate_limit_store(spec)?))
    }
}

impl RateLimitStore<()> for Deferred<MemoryRateLimitStore<()>> {
    type Future = std::future::Ready<Result<Decision, BackendError>>;

    fn check(&self, key: &(), ask: &Ask<'_>) -> Check<Self::Future> {
        match self.0.check(key, ask) {
            Check::Ready(result) => Check::Pending(std::future::ready(result)),
            Check::Pending(_) => unreachable!("the in-memory store answers at once"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn waiting_global_limiter_on_an_io_backend_spends_each_requests_whole_cost() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(10))
        .backend(Deferred::default())
        .cost(|units: &u32| *units)
        .wait_up_to(Duration::from_millis(10))
        .build()
        .unwrap();
    let inner = Counting::default();
    let mut svc = layer.layer(inner.clone());
    let e = send(&mut svc, 11).await.unwrap_err();
    assert!(e.is::<CostTooHigh>(), "{e}");
    assert_eq!(send(&mut svc, 0).await.unwrap(), 0);
    let mut admitted = 0;
    for _ in 0..10 {
        match send(&mut svc, 10).await {
            Ok(_) => admitted += 1,
            Err(e) => assert!(e.is::<RateLimited>(), "{e}"),
        }
    }
    assert_eq!(admitted, 1, "one request of 10 units fills 10 a minute");
    assert_eq!(inner.calls(), 2);
}

/// The keyed waiting path decides each request's cost in its response future: the same ten
/// requests of 10 units pass once.
#[tokio::test(start_paused = true)]
async fn waiting_keyed_limiter_spends_each_requests_whole_cost() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(10))
        .key(key_fn(|_: &u32| Some(7u8)))
        .cost(|units: &u32| *units)
        .wait_up_to(Duration::from_millis(10))
        .build()
        .unwrap();
    let svc = layer.layer(Counting::default());
    let mut admitted = 0;
    for _ in 0..10 {
        admitted += usize::from(svc.clone().oneshot(10u32).await.is_ok());
    }
    assert_eq!(admitted, 1);
    let e = svc.clone().oneshot(11u32).await.unwrap_err();
    assert!(e.is::<CostTooHigh>(), "{e}");
}

/// Key 7's decision over `set` (spent unless `peek`).
fn decide<St: RateLimitStore<u64>>(store: &St, set: &Arc<LimitSet>, peek: bool) -> Decision {
    let ask = if peek {
        Ask::new(set).peek()
    } else {
        Ask::new(set)
    };
    match store.check(&7, &ask) {
        Check::Ready(Ok(d)) => d,
        _ => unreachable!("the in-memory store answers at once"),
    }
}

type Hook = Box<dyn FnOnce(&HookClock) + Send>;

/// A manual clock that runs the next queued hook on a read (not from within a hook).
#[derive(Clone, Default)]
struct HookClock {
    now: Arc<AtomicU64>,
    hooks: Arc<Mutex<Vec<Hook>>>,
    busy: Arc<AtomicBool>,
}

impl Clock for HookClock {
    fn now(&self) -> Nanos {
        if !self.busy.load(Ordering::SeqCst) {
            let hook = {
                let mut hooks = self.hooks.lock().unwrap();
                (!hooks.is_empty()).then(|| hooks.remove(0))
            };
            if let Some(hook) = hook {
                self.busy.store(true, Ordering::SeqCst);
                hook(self);
                self.busy.store(false, Ordering::SeqCst);
            }
        }
        self.now.load(Ordering::SeqCst)
    }
}

/// A decision over a set that spends a limit and is then refused by another takes its spend
/// back. When another decision had spent the same limit more than an emission interval later
/// (from its own `now`, past the end of ours), taking back our spend's length erased that
/// decision's: 11 admitted in a burst of 10.
#[test]
fn a_sets_take_back_never_erases_a_later_decisions_spend() {
    const MS: u64 = 1_000_000;
    let clock = HookClock::default();
    clock.now.store(1_000 * MS, Ordering::SeqCst);
    // a: a 1 ms emission interval, a burst of 10. s: a shadow limit (it sends the set down the
    // general path, spending limit by limit). b: one an hour, spent below.
    let a = Limit::new("take-back-a", Quota::per_second(1000).burst(10));
    let s = Limit::new("take-back-s", Quota::per_second(1000)).shadow(true);
    let b = Limit::new("take-back-b", Quota::per_hour(1).burst(1));
    let layer = RateLimitLayer::builder()
        .limits([a, s, b])
        .tier("a", [a])
        .tier("s", [s])
        .tier("b", [b])
        .key(key_fn(|k: &u64| Some(*k)))
        .backend(MemoryBackend::new().clock(clock.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let all = handle.default_set();
    let (set_a, set_s, set_b) = (
        handle.tier_set("a").unwrap(),
        handle.tier_set("s").unwrap(),
        handle.tier_set("b").unwrap(),
    );
    assert!(
        decide(layer.store(), &set_b, false).is_allowed(),
        "b spent for an hour"
    );
    // The key's entry gets a cell for every limit of the set.
    let _ = decide(layer.store(), &all, true);
    {
        let mut hooks = clock.hooks.lock().unwrap();
        // On the set's clock read: another decision spends s, so that the set's spend of s
        // loses its compare-exchange (after a is spent) and reads the clock again.
        let (l, set) = (layer.clone(), Arc::clone(&set_s));
        hooks.push(Box::new(move |_| {
            assert!(decide(l.store(), &set, false).is_allowed());
        }));
        // On that second read: 5 ms later, a decision spends a alone, from its own `now`.
        let (l, set) = (layer.clone(), Arc::clone(&set_a));
        hooks.push(Box::new(move |c: &HookClock| {
            c.now.fetch_add(5 * MS, Ordering::SeqCst);
            assert!(decide(l.store(), &set, false).is_allowed());
        }));
    }
    // b refuses the set, which takes its spend of a back.
    assert!(!decide(layer.store(), &all, false).is_allowed());
    assert!(clock.hooks.lock().unwrap().is_empty(), "both hooks ran");
    // The later decision's unit of a stays spent: 9 more at this instant, not 10.
    let mut admitted = 0;
    while decide(layer.store(), &set_a, false).is_allowed() {
        admitted += 1;
    }
    assert_eq!(
        admitted, 9,
        "a's burst of 10, one spent by the later decision"
    );
}

/// A period that is not whole seconds was rounded up to them: 5 per 500 ms said `period()` 1 s
/// and `q=5;w=1` (10 a second are admitted).
#[tokio::test(start_paused = true)]
async fn a_period_not_of_whole_seconds_is_stated_truthfully() {
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        for (period, policy) in [
            (Duration::from_millis(500), r#""default";q=10;w=1"#),
            // 6.67 admitted in 2 s: rounded down, never more than is admitted.
            (Duration::from_millis(1500), r#""default";q=6;w=2"#),
            (Duration::from_secs(60), r#""default";q=5;w=60"#),
        ] {
            let layer = RateLimitLayer::builder()
                .quota(Quota::with_period(5, period))
                .algorithm(algorithm)
                .http()
                .build()
                .unwrap();
            let svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
                Ok::<_, Infallible>(http::Response::new(Body::empty()))
            }));
            for _ in 0..5 {
                let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
                assert_eq!(res.status(), http::StatusCode::OK);
                assert_eq!(res.headers()["ratelimit-policy"], policy, "{algorithm:?}");
            }
            let res = svc.clone().oneshot(http::Request::new(())).await.unwrap();
            assert_eq!(res.status(), http::StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(res.headers()["ratelimit-policy"], policy, "{algorithm:?}");
        }
        let layer = RateLimitLayer::builder()
            .quota(Quota::with_period(5, Duration::from_millis(500)))
            .algorithm(algorithm)
            .build()
            .unwrap();
        let mut svc = layer.layer(Counting::default());
        for _ in 0..5 {
            send(&mut svc, 1).await.unwrap();
        }
        let e = send(&mut svc, 1).await.unwrap_err();
        let limited = e.downcast_ref::<RateLimited>().unwrap();
        assert_eq!(
            limited.period(),
            Duration::from_millis(500),
            "{algorithm:?}"
        );
        assert_eq!(limited.limit(), 5);
    }
}
