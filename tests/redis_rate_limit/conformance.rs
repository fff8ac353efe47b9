//! One conformance suite for `RateLimitStore`, run against the in-memory store, the Redis store on a
//! single node, and the Redis store on a 3-master cluster: the same decisions and the same headers.
//!
//! The stores run on one hand-moved clock (the Redis scripts take "now" from it instead of `TIME`),
//! so decisions can be compared to the nanosecond. Every scenario runs twice: from time zero, and
//! from a Unix time of today in nanoseconds, where the scripts' split arithmetic is exercised (Lua
//! numbers are exact only below 2^53).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::backend::{MemoryBackend, RedisBackend};
use tower_rampart::clock::{Clock, ManualClock};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Algorithm, Ask, Decision, Limit, Quota, RateLimitBackend, RateLimitLayer,
};

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{connect, connect_cluster, decide_ask, unique_prefix};

const S: u64 = 1_000_000_000;
const MS: u64 = 1_000_000;
/// A Unix time of 2026 in nanoseconds: about 2^60.6.
const LATE: u64 = 1_771_234_567_891_234_567;

type Decide = Box<dyn Fn(u8) -> Pin<Box<dyn Future<Output = Decision> + Send>> + Send + Sync>;

/// A store for `quota` on `backend`, built by the layer as an application would, as a function
/// from key to decision (a backend error fails the test).
fn subject<B>(backend: B, quota: Quota, algorithm: Algorithm) -> Decide
where
    B: RateLimitBackend<u8>,
    B::Store: Send + Sync,
{
    let layer = RateLimitLayer::builder()
        .quota(quota)
        .algorithm(algorithm)
        .key(key_fn(|k: &u8| Some(*k)))
        .backend(backend)
        .build()
        .expect("a valid quota");
    Box::new(move |k| {
        let layer = layer.clone();
        Box::pin(async move {
            let set = layer.limit_set();
            decide_ask(layer.store(), &k, &Ask::new(&set))
                .await
                .expect("no backend error in the conformance suite")
        })
    })
}

fn clock_at(t: u64) -> ManualClock {
    let clock = ManualClock::new();
    clock.set(t);
    clock
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Fixed scenarios with known answers, for any backend.
async fn scripted<B>(make: impl Fn(&ManualClock) -> B)
where
    B: RateLimitBackend<u8>,
    B::Store: Send + Sync,
{
    for start in [5 * S, LATE] {
        // GCRA, 10 per minute: 10 at once, then one every 6 s.
        let clock = clock_at(start);
        let d = subject(make(&clock), Quota::per_minute(10), Algorithm::Gcra);
        for i in 0..10u32 {
            let x = d(1).await;
            assert!(x.is_allowed(), "request {i} from {start}");
            assert_eq!(x.remaining(), 9 - i);
            assert_eq!(x.reset(), secs(6 * (u64::from(i) + 1)));
            assert!(x.is_counted());
        }
        let refused = d(1).await;
        assert!(!refused.is_allowed());
        assert_eq!(refused.retry_after(), secs(6));
        assert_eq!(refused.reset(), secs(60));
        assert_eq!(refused.remaining(), 0);
        assert_eq!(d(1).await, refused, "refusals consume nothing");
        clock.advance(Duration::from_nanos(6 * S - 1));
        let x = d(1).await;
        assert!(!x.is_allowed());
        assert_eq!(x.retry_after(), Duration::from_nanos(1));
        clock.advance(Duration::from_nanos(1));
        let x = d(1).await;
        assert!(x.is_allowed(), "admitted exactly at the retry time");
        assert_eq!(x.remaining(), 0);
        assert!(!d(1).await.is_allowed());
        assert_eq!(d(2).await.remaining(), 9, "keys are independent");
        clock.advance(secs(66));
        assert_eq!(d(1).await.remaining(), 9, "a full quota after a period");

        // GCRA burst independent of the rate.
        let clock = clock_at(start);
        let d = subject(
            make(&clock),
            Quota::per_second(10).burst(2),
            Algorithm::Gcra,
        );
        assert!(d(1).await.is_allowed() && d(1).await.is_allowed());
        let x = d(1).await;
        assert!(!x.is_allowed());
        assert_eq!(x.retry_after(), Duration::from_millis(100));
        clock.advance(Duration::from_millis(100));
        assert!(d(1).await.is_allowed());

        // Sliding window, 10 per minute, from the start of a window.
        let aligned = start - start % (60 * S);
        let clock = clock_at(aligned);
        let d = subject(
            make(&clock),
            Quota::per_minute(10),
            Algorithm::SlidingWindow,
        );
        for i in 0..10u32 {
            let x = d(1).await;
            assert!(x.is_allowed(), "request {i}");
            assert_eq!(x.remaining(), 9 - i);
            assert_eq!(x.reset(), secs(120));
        }
        let x = d(1).await;
        assert!(!x.is_allowed());
        // At the start of the next window the previous 10 weigh fully; a slot frees after 6 s.
        assert_eq!(x.retry_after(), secs(66));
        assert_eq!(x.reset(), secs(120));
        clock.advance(Duration::from_nanos(66 * S - 1));
        assert!(!d(1).await.is_allowed());
        clock.advance(Duration::from_nanos(1));
        assert!(d(1).await.is_allowed());
        assert!(!d(1).await.is_allowed());

        // Sliding window: room within the window once enough of the previous one slid out.
        let aligned = start - start % S;
        let clock = clock_at(aligned);
        let d = subject(make(&clock), Quota::per_second(4), Algorithm::SlidingWindow);
        for _ in 0..4 {
            assert!(d(1).await.is_allowed());
        }
        clock.advance(secs(1));
        let x = d(1).await;
        assert!(!x.is_allowed());
        assert_eq!(x.retry_after(), Duration::from_millis(250));
        clock.advance(Duration::from_millis(250));
        assert!(d(1).await.is_allowed());
    }
}

/// A cost of zero passes, spending nothing, even for a key that spent more than a limit lowered at
/// run time allows (it was refused); a cost of one is refused. For any backend.
async fn zero_cost_after_a_lowered_limit<B>(make: impl Fn(&ManualClock) -> B)
where
    B: RateLimitBackend<u8>,
    B::Store: Send + Sync,
{
    for start in [5 * S, LATE] {
        for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
            let clock = clock_at(start - start % (60 * S) + 30 * S);
            let layer = RateLimitLayer::builder()
                .quota(Quota::per_minute(10))
                .algorithm(algorithm)
                .key(key_fn(|k: &u8| Some(*k)))
                .backend(make(&clock))
                .build()
                .unwrap();
            let decide = |cost: u32| {
                let layer = layer.clone();
                async move {
                    let set = layer.limit_set();
                    decide_ask(layer.store(), &1, &Ask::new(&set).cost(cost))
                        .await
                        .unwrap()
                }
            };
            for _ in 0..10 {
                assert!(decide(1).await.is_allowed());
            }
            layer
                .handle()
                .set_default([Limit::new("default", Quota::per_minute(2))])
                .unwrap();
            let zero = decide(0).await;
            assert!(zero.is_allowed(), "{algorithm:?}: {zero:?}");
            assert_eq!(zero.remaining(), 0, "{algorithm:?}");
            let one = decide(1).await;
            assert!(!one.is_allowed(), "{algorithm:?}: {one:?}");
            // The zero spent nothing: the next cost of one waits no longer than the first.
            assert_eq!(
                decide(1).await.retry_after(),
                one.retry_after(),
                "{algorithm:?}"
            );
        }
    }
}

/// The layer's own limit (one quota, the single form on Redis), GCRA: a key that spent 10 an
/// hour, its quota then raised to 10 a second, waited for the rest of the hour (its arrival time
/// an hour ahead, kept across the change); it now counts as spent in full under the new quota,
/// is rebased there (written back on the refusal), and drains from there: one interval.
async fn a_raised_quota_rebases_a_spent_key<B>(make: impl Fn(&ManualClock) -> B)
where
    B: RateLimitBackend<u8>,
    B::Store: Send + Sync,
{
    for start in [5 * S, LATE] {
        let clock = clock_at(start);
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_hour(10))
            .key(key_fn(|k: &u8| Some(*k)))
            .backend(make(&clock))
            .build()
            .unwrap();
        let decide = || {
            let layer = layer.clone();
            async move {
                let set = layer.limit_set();
                decide_ask(layer.store(), &1, &Ask::new(&set))
                    .await
                    .unwrap()
            }
        };
        for _ in 0..10 {
            assert!(decide().await.is_allowed());
        }
        assert!(decide().await.retry_after() > secs(300));
        layer
            .handle()
            .set_default([Limit::new("default", Quota::per_second(10))])
            .unwrap();
        let refused = decide().await;
        assert!(!refused.is_allowed(), "{refused:?}");
        assert_eq!(
            (refused.retry_after(), refused.reset()),
            (Duration::from_millis(100), secs(1)),
            "spent in full under the new quota, no more"
        );
        clock.advance(refused.retry_after());
        let admitted = decide().await;
        assert!(
            admitted.is_allowed(),
            "it drains from the rebased state: {admitted:?}"
        );
        assert_eq!(admitted.remaining(), 0);
        clock.advance(secs(1));
        for i in 0..10 {
            assert!(decide().await.is_allowed(), "{i}: the new quota's burst");
        }
    }
}

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Quotas whose arithmetic has edges: odd periods, bursts, long periods near the scripts' range.
fn quotas() -> Vec<(Quota, Algorithm)> {
    vec![
        (Quota::per_minute(10), Algorithm::Gcra),
        (Quota::per_second(3).burst(1), Algorithm::Gcra),
        (
            Quota::with_period(7, Duration::from_nanos(S + 333)),
            Algorithm::Gcra,
        ),
        (
            Quota::with_period(1000, secs(30 * 86_400)).burst(900),
            Algorithm::Gcra,
        ),
        (Quota::per_minute(10), Algorithm::SlidingWindow),
        (
            Quota::with_period(7, Duration::from_nanos(60 * S + 333)),
            Algorithm::SlidingWindow,
        ),
        (Quota::per_hour(100_000), Algorithm::SlidingWindow),
        (
            Quota::with_period(3, secs(50 * 86_400)),
            Algorithm::SlidingWindow,
        ),
        (
            Quota::with_period(u32::MAX, secs(50 * 86_400)),
            Algorithm::SlidingWindow,
        ),
    ]
}

/// Random sequences of (time step, key), decided by the in-memory store and by `redis` on one clock:
/// every decision must be equal.
async fn differential(redis: impl Fn(&ManualClock) -> RedisBackend) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for (quota, algorithm) in quotas() {
        let period = quota.period().as_nanos() as u64;
        let emission = period / u64::from(quota.limit());
        let gaps = [
            0,
            1,
            emission.saturating_sub(1),
            emission,
            emission / 3,
            period / 7,
            period - 1,
            2 * period + 5,
            MS,
        ];
        for start in [0, LATE] {
            let clock = clock_at(start);
            let memory = subject(MemoryBackend::new().clock(clock.clone()), quota, algorithm);
            let shared = subject(redis(&clock), quota, algorithm);
            let mut allowed = 0;
            for step in 0..120 {
                let r = rng.next();
                // Mostly short gaps (so keys get refused), sometimes long ones.
                let gap = if r.is_multiple_of(4) {
                    gaps[(r >> 8) as usize % gaps.len()]
                } else {
                    (r >> 16) % (emission / 2 + 1)
                };
                clock.advance(Duration::from_nanos(gap));
                let key = (r >> 40) as u8 % 3;
                let expected = memory(key).await;
                let got = shared(key).await;
                assert_eq!(
                    got,
                    expected,
                    "{quota:?} {algorithm:?} from {start}, step {step}, key {key}, t = {}",
                    clock.now()
                );
                allowed += usize::from(expected.is_allowed());
            }
            assert!(allowed > 0, "{quota:?}: nothing admitted");
        }
    }
}

/// Status and headers of a sequence of HTTP requests through a layer in HTTP mode on `backend`.
async fn responses<B>(backend: B, clock: &ManualClock) -> Vec<(StatusCode, Vec<(String, String)>)>
where
    B: RateLimitBackend<u8>,
    B::Store: Send + Sync,
{
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(5))
        .name("conformance")
        .key(key_fn(|r: &Request<u8>| Some(*r.body())))
        .backend(backend)
        .legacy_headers(true)
        .http()
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|_: Request<u8>| async {
        Ok::<_, Infallible>(Response::new(Bytes::from_static(b"ok")))
    }));
    let mut out = Vec::new();
    for i in 0..14u64 {
        if i == 7 || i == 11 {
            clock.advance(Duration::from_millis(12_345));
        }
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(Request::new((i % 4 == 3) as u8))
            .await
            .unwrap();
        let mut headers: Vec<(String, String)> = res
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        headers.sort();
        out.push((res.status(), headers));
    }
    out
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    scripted(|clock| MemoryBackend::new().clock(clock.clone())).await;
    zero_cost_after_a_lowered_limit(|clock| MemoryBackend::new().clock(clock.clone())).await;
    a_raised_quota_rebases_a_spent_key(|clock| MemoryBackend::new().clock(clock.clone())).await;
}

#[tokio::test]
async fn redis_store_passes_the_suite_and_agrees_with_memory() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url()).await;
    let make = |clock: &ManualClock| {
        backend
            .clone()
            .prefix(unique_prefix("conf"))
            .clock(clock.clone())
    };
    scripted(make).await;
    zero_cost_after_a_lowered_limit(make).await;
    a_raised_quota_rebases_a_spent_key(make).await;
    differential(make).await;

    let clock = clock_at(LATE);
    let expected = responses(MemoryBackend::new().clock(clock.clone()), &clock).await;
    let clock = clock_at(LATE);
    let got = responses(make(&clock), &clock).await;
    assert_eq!(got, expected, "the same statuses and headers");
    assert!(
        expected
            .iter()
            .any(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
    );
}

#[tokio::test]
async fn redis_cluster_store_passes_the_suite_and_agrees_with_memory() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let backend = connect_cluster(&cluster.urls()).await;
    let make = |clock: &ManualClock| {
        backend
            .clone()
            .prefix(unique_prefix("conf"))
            .clock(clock.clone())
    };
    scripted(make).await;
    zero_cost_after_a_lowered_limit(make).await;
    a_raised_quota_rebases_a_spent_key(make).await;
    differential(make).await;

    let clock = clock_at(LATE);
    let expected = responses(MemoryBackend::new().clock(clock.clone()), &clock).await;
    let clock = clock_at(LATE);
    let got = responses(make(&clock), &clock).await;
    assert_eq!(got, expected, "the same statuses and headers");
    // The keys are spread over the three masters (hash tags of distinct keys).
    let mut holding = 0;
    for node in &cluster.nodes {
        let keyspace = node.info("keyspace");
        holding += usize::from(keyspace.contains("keys="));
    }
    assert!(holding >= 2, "keys on {holding} of 3 masters");
}
