//! Redis-backed rate limiting, against the ceiling of the same Redis in the same run.
//!
//! Starts its own `redis-server` on a free loopback port (never the machine's 6379); without one the
//! group is skipped with a printed reason.
//!
//! - `redis_rate_limit/raw_evalsha/N`: N concurrent `EVALSHA` calls of the GCRA script, with the
//!   arguments the store sends, straight through a `ConnectionManager`: the ceiling.
//! - `redis_rate_limit/store/N`: N concurrent decisions from one `RedisBackend` store (key
//!   encoding, the call with its timeout, health bookkeeping, parsing). Throughput is in elements,
//!   so criterion reports decisions per second; compare each with `raw_evalsha` at the same N.
//! - `redis_rate_limit/unbatched/N`: the same store with `batch_decisions(false)`: each decision
//!   its own call, as before decisions made at once were batched (#21).
//! - `redis_rate_limit/throttle_kit/N`: N concurrent decisions from throttle-kit's Redis backend
//!   (its `RateLimitBackend::check`, GCRA in its own Lua script through a `MultiplexedConnection`
//!   of `redis` 0.25), same server, same run: the peer the store must keep up with (issue #21). Its
//!   quota is one request per millisecond with a burst of `u32::MAX` (its script works in whole
//!   milliseconds and an interval under one would be 0), so it too admits every call; a reply
//!   that is not an admission from Redis (it fails open on errors, with `remaining` 0) stops the
//!   run.
//! - `redis_rate_limit/two_limits_raw_evalsha/N` and `two_limits_store/N` (#18): the same with
//!   a layer of two limits (`.limits([a, b])`), decided and spent together in one script call on
//!   one key, whose one value holds both states: the set form of the same script. Compare `two_limits_store` with `store` at the
//!   same N (the goal: at least 90% of the single-limit rate at 64 in flight).
//! - `redis_rate_limit/known_over_limit`: a decision for a key Redis has already refused: answered
//!   from the replica's memory. The group prints the `EVALSHA` count before and after it from
//!   `INFO commandstats`: it does not move.
//!
//! The keys differ per concurrent caller and the quota is far larger than any run can spend, so
//! every measured decision (but the last row's) is an admission computed by Redis.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/common/redis.rs"]
pub(crate) mod redis_server;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::{RedisRateLimitStore, script_sha};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Limit, Quota, RateLimitLayer, RateLimitStore, StoreLimits,
};

use self::redis_server::RedisServer;
use crate::support::HUGE;

/// What every Redis group starts with: nothing unless the filter may select `group` (no
/// redis-server started for nothing), then a throw-away redis-server on a free loopback port and
/// a two-worker runtime; `None`, with the reason printed, where redis-server is not installed.
pub(crate) fn redis_group(group: &str) -> Option<(RedisServer, tokio::runtime::Runtime)> {
    if !crate::group_selected(group) {
        return None;
    }
    let Some(server) = RedisServer::start() else {
        println!("{group}: skipped, no redis-server (apt-get install redis-server)");
        return None;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    Some((server, rt))
}

async fn decide(store: &RedisRateLimitStore<u32>, key: u32) -> bool {
    match store.check(&key, &Ask::new(store.limit_set())) {
        Check::Ready(r) => r,
        Check::Pending(f) => f.await,
    }
    .expect("no backend error while benchmarking")
    .is_allowed()
}

/// One decision from throttle-kit's Redis backend, which must be an admission made by Redis.
async fn tk_decide(backend: &throttle_kit::RedisBackend, key: &str, quota: &throttle_kit::Quota) {
    use throttle_kit::RateLimitBackend;
    let r = backend.check(key, quota).await;
    // On a Redis error it fails open with `remaining` 0; an admission from its script has at least 1.
    assert!(
        r.allowed && r.remaining > 0,
        "throttle-kit's decision did not come from Redis"
    );
    black_box(r);
}

pub(crate) fn rate_limit(c: &mut Criterion) {
    let Some((server, rt)) = redis_group("redis_rate_limit") else {
        return;
    };

    let (layer, two, raw, args) = rt.block_on(async {
        let backend = RedisBackend::connect(&server.url())
            .await
            .expect("connect to the bench redis-server")
            .prefix("bench")
            .timeout(Duration::from_secs(1));
        let layer = RateLimitLayer::builder()
            .quota(HUGE)
            .key(key_fn(|k: &u32| Some(*k)))
            .backend(backend.clone())
            .build()
            .expect("valid configuration");
        let two = RateLimitLayer::builder()
            .name("two")
            .limits([Limit::new("a", HUGE), Limit::new("b", HUGE)])
            .key(key_fn(|k: &u32| Some(*k)))
            .backend(backend)
            .build()
            .expect("valid configuration");
        let client = redis::Client::open(server.url()).unwrap();
        let raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let period = 3_600_000_000_000u64;
        let emission = period / u64::from(u32::MAX);
        let args = [
            emission.to_string(),
            (emission * u64::from(u32::MAX)).to_string(),
        ];
        (layer, two, raw, args)
    });
    let store = layer.store();
    let two_store = two.store();
    let unbatched = rt.block_on(async {
        RateLimitLayer::builder()
            .name("unb")
            .quota(HUGE)
            .key(key_fn(|k: &u32| Some(*k)))
            .backend(
                RedisBackend::connect(&server.url())
                    .await
                    .expect("connect to the bench redis-server")
                    .prefix("bench")
                    .timeout(Duration::from_secs(1))
                    .batch_decisions(false),
            )
            .build()
            .expect("valid configuration")
    });
    let unb = unbatched.store();
    assert!(rt.block_on(decide(unb, 0)));
    // One decision through the store loads the script.
    assert!(rt.block_on(decide(store, 0)));
    let tk = rt.block_on(async {
        throttle_kit::RedisBackend::connect(&server.url())
            .await
            .expect("throttle-kit connects to the bench redis-server")
    });
    let tk_quota = throttle_kit::Quota::from_parts(Duration::from_millis(1), u32::MAX);
    // Its first call loads its script.
    rt.block_on(tk_decide(&tk, "tk:0", &tk_quota));
    assert!(rt.block_on(decide(two_store, 0)));
    let sha = script_sha(Algorithm::Gcra);

    let mut g = c.benchmark_group("redis_rate_limit");
    for n in [1u32, 16, 64] {
        g.throughput(Throughput::Elements(u64::from(n)));
        let keys: Vec<Vec<u8>> = (0..n).map(|k| store.redis_key(&(1_000 + k))).collect();
        g.bench_with_input(BenchmarkId::new("raw_evalsha", n), &n, |b, _| {
            b.to_async(&rt).iter(|| {
                let calls = keys.iter().map(|key| {
                    let mut con = raw.clone();
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(sha)
                        .arg(1)
                        .arg(key)
                        .arg(&args[0])
                        .arg(&args[1])
                        .arg("") // Redis TIME
                        .arg("0") // no minimum expiry
                        .arg("1") // repair unreadable state, as the store does by default
                        .arg("9007199254740991"); // not after (us): as the store, a bound far off
                    async move {
                        let v: redis::Value = cmd.query_async(&mut con).await.expect("evalsha");
                        black_box(v)
                    }
                });
                join_all(calls)
            });
        });
        g.bench_with_input(BenchmarkId::new("store", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                join_all((0..n).map(|k| async move {
                    assert!(decide(store, 1_000 + k).await);
                }))
            });
        });
        g.bench_with_input(BenchmarkId::new("unbatched", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                join_all((0..n).map(|k| async move {
                    assert!(decide(unb, 1_000 + k).await);
                }))
            });
        });
        let tk_keys: Vec<String> = (0..n).map(|k| format!("tk:{}", 1_000 + k)).collect();
        g.bench_with_input(BenchmarkId::new("throttle_kit", n), &n, |b, _| {
            b.to_async(&rt).iter(|| {
                let (tk, quota) = (&tk, &tk_quota);
                join_all(tk_keys.iter().map(move |key| tk_decide(tk, key, quota)))
            });
        });
        // Both limits' states are in the key's one value.
        let pair_keys: Vec<Vec<u8>> = (0..n).map(|k| two_store.redis_key(&(1_000 + k))).collect();
        g.bench_with_input(BenchmarkId::new("two_limits_raw_evalsha", n), &n, |b, _| {
            b.to_async(&rt).iter(|| {
                let calls = pair_keys.iter().map(|key| {
                    let mut con = raw.clone();
                    let mut cmd = redis::cmd("EVALSHA");
                    cmd.arg(sha)
                        .arg(1)
                        .arg(key)
                        .arg(&args[0]) // limit a
                        .arg(&args[1])
                        .arg("") // Redis TIME
                        .arg("0") // no minimum expiry
                        .arg("1") // repair unreadable state
                        .arg("1") // cost
                        .arg("000") // spend; a and b enforced
                        .arg("a") // limit a's name
                        .arg("b") // limit b
                        .arg(&args[0])
                        .arg(&args[1])
                        .arg("9007199254740991"); // not after (us)
                    async move {
                        let v: redis::Value = cmd.query_async(&mut con).await.expect("evalsha");
                        black_box(v)
                    }
                });
                join_all(calls)
            });
        });
        g.bench_with_input(BenchmarkId::new("two_limits_store", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                join_all((0..n).map(|k| async move {
                    assert!(decide(two_store, 1_000 + k).await);
                }))
            });
        });
    }

    // A key Redis refused: answered locally.
    let over = RateLimitLayer::builder()
        .quota(Quota::per_hour(1))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(rt.block_on(async {
            RedisBackend::connect(&server.url())
                .await
                .unwrap()
                .prefix("bench-over")
        }))
        .build()
        .expect("valid configuration");
    let over_store = over.store();
    let over_set = over.limit_set();
    rt.block_on(async {
        assert!(decide(over_store, 9).await);
        assert!(!decide(over_store, 9).await);
    });
    let before = server.calls("evalsha");
    g.throughput(Throughput::Elements(1));
    g.bench_function("known_over_limit", |b| {
        b.iter(
            || match over_store.check(black_box(&9), &Ask::new(&over_set)) {
                Check::Ready(Ok(d)) => black_box(d.is_allowed()),
                _ => panic!("a known over-limit key must be answered locally"),
            },
        );
    });
    let after = server.calls("evalsha");
    println!(
        "redis_rate_limit/known_over_limit: EVALSHA calls before {before}, after {after} (no Redis traffic)"
    );
    assert_eq!(
        before, after,
        "known over-limit keys must cost no round trip"
    );
    g.finish();
}
