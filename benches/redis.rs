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
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What the `redis_rate_limit` rows and the paired rounds decide with, on one server: the store
/// (one limit, batching on), the same with two limits, the same unbatched, a raw connection with
/// the store's arguments, and throttle-kit's backend with its quota.
struct Rows {
    store: RedisRateLimitStore<u32>,
    two: RedisRateLimitStore<u32>,
    unbatched: RedisRateLimitStore<u32>,
    raw: redis::aio::ConnectionManager,
    args: [String; 2],
    tk: throttle_kit::RedisBackend,
    tk_quota: throttle_kit::Quota,
}

impl Rows {
    /// Every row connected, its script loaded (by a first decision).
    async fn new(server: &RedisServer) -> Self {
        let backend = |batch: bool| async move {
            RedisBackend::connect(&server.url())
                .await
                .expect("connect to the bench redis-server")
                .prefix("bench")
                .timeout(Duration::from_secs(1))
                .batch_decisions(batch)
        };
        let shared = backend(true).await;
        let rows = Self {
            // The layer's own limit alone: the single form of the script.
            store: RateLimitLayer::builder()
                .quota(HUGE)
                .key(key_fn(|k: &u32| Some(*k)))
                .backend(shared.clone())
                .build()
                .expect("valid configuration")
                .store()
                .clone(),
            // Two limits: the set form, both states in the key's one value.
            two: RateLimitLayer::builder()
                .name("two")
                .limits([Limit::new("a", HUGE), Limit::new("b", HUGE)])
                .key(key_fn(|k: &u32| Some(*k)))
                .backend(shared)
                .build()
                .expect("valid configuration")
                .store()
                .clone(),
            unbatched: RateLimitLayer::builder()
                .name("unb")
                .quota(HUGE)
                .key(key_fn(|k: &u32| Some(*k)))
                .backend(backend(false).await)
                .build()
                .expect("valid configuration")
                .store()
                .clone(),
            raw: redis::aio::ConnectionManager::new(redis::Client::open(server.url()).unwrap())
                .await
                .unwrap(),
            args: {
                let emission = 3_600_000_000_000u64 / u64::from(u32::MAX);
                [
                    emission.to_string(),
                    (emission * u64::from(u32::MAX)).to_string(),
                ]
            },
            tk: throttle_kit::RedisBackend::connect(&server.url())
                .await
                .expect("throttle-kit connects to the bench redis-server"),
            tk_quota: throttle_kit::Quota::from_parts(Duration::from_millis(1), u32::MAX),
        };
        // One decision through each store loads its script; throttle-kit's first call, its own.
        assert!(decide(&rows.unbatched, 0).await);
        assert!(decide(&rows.store, 0).await);
        assert!(decide(&rows.two, 0).await);
        tk_decide(&rows.tk, "tk:0", &rows.tk_quota).await;
        rows
    }

    /// A raw `EVALSHA` of the store's script with the store's arguments, on `key`.
    fn raw_call(&self, key: &[u8]) -> impl Future<Output = ()> + use<> {
        let mut con = self.raw.clone();
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(script_sha(Algorithm::Gcra))
            .arg(1)
            .arg(key)
            .arg(&self.args[0])
            .arg(&self.args[1])
            .arg("") // Redis TIME
            .arg("0") // no minimum expiry
            .arg("1") // repair unreadable state, as the store does by default
            .arg("9007199254740991"); // not after (us): as the store, a bound far off
        async move {
            let v: redis::Value = cmd.query_async(&mut con).await.expect("evalsha");
            black_box(v);
        }
    }
}

/// The single-limit rows of `redis_rate_limit`, in the order the group runs them.
#[derive(Clone, Copy)]
enum Row {
    Raw,
    Store,
    Unbatched,
    ThrottleKit,
}

const ROWS: [Row; 4] = [Row::Raw, Row::Store, Row::Unbatched, Row::ThrottleKit];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Row::Raw => "raw_evalsha",
            Row::Store => "store",
            Row::Unbatched => "unbatched",
            Row::ThrottleKit => "throttle_kit",
        }
    }
}

/// The keys of `n` callers: ours (1,000 to 1,000 + n - 1, and their Redis keys) and throttle-kit's.
struct Keys {
    n: u32,
    redis: Vec<Vec<u8>>,
    tk: Vec<String>,
}

impl Keys {
    fn new(rows: &Rows, n: u32) -> Self {
        Self {
            n,
            redis: (0..n).map(|k| rows.store.redis_key(&(1_000 + k))).collect(),
            tk: (0..n).map(|k| format!("tk:{}", 1_000 + k)).collect(),
        }
    }
}

impl Rows {
    /// One decision of caller `i` of `keys`, through `row`.
    async fn one(&self, row: Row, keys: &Keys, i: u32) {
        match row {
            Row::Raw => self.raw_call(&keys.redis[i as usize]).await,
            Row::Store => assert!(decide(&self.store, 1_000 + i).await),
            Row::Unbatched => assert!(decide(&self.unbatched, 1_000 + i).await),
            Row::ThrottleKit => tk_decide(&self.tk, &keys.tk[i as usize], &self.tk_quota).await,
        }
    }

    /// `keys`' callers each on a task of its own, deciding one after another through `row` for
    /// `slice`, as a server's requests do (each on its task); the decisions made, and each one's
    /// time from its call to its answer (µs).
    async fn tasks(
        self: &Arc<Self>,
        row: Row,
        keys: &Arc<Keys>,
        slice: Duration,
    ) -> (u64, Vec<u32>) {
        let stop = Arc::new(AtomicBool::new(false));
        let callers: Vec<_> = (0..keys.n)
            .map(|i| {
                let (rows, keys, stop) = (Arc::clone(self), Arc::clone(keys), Arc::clone(&stop));
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let at = std::time::Instant::now();
                        rows.one(row, &keys, i).await;
                        took.push(u32::try_from(at.elapsed().as_micros()).unwrap_or(u32::MAX));
                    }
                    took
                })
            })
            .collect();
        tokio::time::sleep(slice).await;
        stop.store(true, Ordering::Relaxed);
        let mut took = Vec::new();
        for caller in callers {
            took.extend(caller.await.expect("a caller task panicked"));
        }
        (took.len() as u64, took)
    }

    /// One decision for each of `keys`' callers at once, through `row`.
    async fn wave(&self, row: Row, keys: &Keys) {
        match row {
            Row::Raw => {
                join_all(keys.redis.iter().map(|key| self.raw_call(key))).await;
            }
            Row::Store | Row::Unbatched => {
                let store = match row {
                    Row::Store => &self.store,
                    _ => &self.unbatched,
                };
                join_all((0..keys.n).map(|k| async move {
                    assert!(decide(store, 1_000 + k).await);
                }))
                .await;
            }
            Row::ThrottleKit => {
                join_all(
                    keys.tk
                        .iter()
                        .map(|key| tk_decide(&self.tk, key, &self.tk_quota)),
                )
                .await;
            }
        }
    }
}

/// `redis_paired`: the four single-limit rows of `redis_rate_limit` at 1, 16 and 64 in flight,
/// measured in alternating rounds rather than one after another, so that a change in the machine's
/// load (this VM's neighbours) falls on every row alike: each round runs each row for
/// `RAMPART_PAIRED_MS` (250 by default), the rows' order rotating from round to round, for
/// `RAMPART_PAIRED_ROUNDS` rounds (12) after one not counted. Prints each row's median rate and,
/// for the store against throttle-kit and against the raw `EVALSHA`, the ratio of the two rates of
/// each round (median, range, and the rounds the store was ahead), and the CPU time each row's
/// decisions cost this process (its threads' `schedstat`) and the server (`INFO cpu`), which the
/// machine's load moves less than the rates. Each count of callers runs as waves (one task makes
/// n decisions at once and waits for them all, as the criterion group's rows), and 16 and 64 also
/// as tasks (`tasks/` rows: n tasks each deciding one after another, as a server's requests;
/// they also print each decision's time from call to answer, p50 and p99).
/// Not a criterion group: it prints its own figures,
/// and runs only when the filter names it (`cargo bench --bench rampart --all-features --
/// redis_paired`).
pub(crate) fn paired(_c: &mut Criterion) {
    // Its rounds take a minute and criterion's filter does not select them: only when named.
    if !crate::group_named("redis_paired") {
        return;
    }
    let Some((server, rt)) = redis_group("redis_paired") else {
        return;
    };
    let setting = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: a number")))
            .unwrap_or(default)
    };
    let rounds = setting("RAMPART_PAIRED_ROUNDS", 12).max(1) as usize;
    let slice = Duration::from_millis(setting("RAMPART_PAIRED_MS", 250));
    let rows = Arc::new(rt.block_on(Rows::new(&server)));
    println!(
        "redis_paired: {rounds} rounds of {} ms a row; thousands of decisions per second, median of \
         the rounds; ratios of two rows' rates in the same round, median [min-max] (rounds ahead)",
        slice.as_millis()
    );
    // Waves: one task makes n decisions at once and waits for all (the criterion group's
    // rows); tasks: n tasks each deciding one after another, as a server's requests do.
    for (mode, n) in [1u32, 16, 64]
        .map(|n| ("", n))
        .into_iter()
        .chain([16u32, 64].map(|n| ("tasks/", n)))
    {
        let keys = Arc::new(Keys::new(&rows, n));
        let mut rates = vec![Vec::with_capacity(rounds); ROWS.len()];
        // Per row: decisions, and the CPU time (s) this process and the server spent on them.
        let mut cpu = [(0u64, 0f64, 0f64); ROWS.len()];
        // Per row: each decision's time from call to answer (µs), in the `tasks/` rows.
        let mut latencies = vec![Vec::new(); ROWS.len()];
        for round in 0..=rounds {
            for i in 0..ROWS.len() {
                let r = (round + i) % ROWS.len();
                let (ours, theirs) = (client_cpu(), server_cpu(&server));
                let (rate, done, took) = rt.block_on(async {
                    let start = std::time::Instant::now();
                    let (mut done, mut took) = (0u64, Vec::new());
                    if mode.is_empty() {
                        while start.elapsed() < slice {
                            rows.wave(ROWS[r], &keys).await;
                            done += u64::from(n);
                        }
                    } else {
                        (done, took) = rows.tasks(ROWS[r], &keys, slice).await;
                    }
                    (
                        done as f64 / start.elapsed().as_secs_f64() / 1_000.0,
                        done,
                        took,
                    )
                });
                // The first round warms every row up.
                if round > 0 {
                    rates[r].push(rate);
                    latencies[r].extend(took);
                    cpu[r].0 += done;
                    cpu[r].1 += client_cpu() - ours;
                    cpu[r].2 += server_cpu(&server) - theirs;
                }
            }
        }
        let line: Vec<String> = ROWS
            .iter()
            .zip(&rates)
            .map(|(row, r)| format!("{} {:.1}", row.name(), median(r.clone())))
            .collect();
        println!("redis_paired/{mode}{n}: {}", line.join(", "));
        let line: Vec<String> = ROWS
            .iter()
            .zip(&cpu)
            .map(|(row, (done, ours, theirs))| {
                let us = |s: f64| s * 1e6 / *done as f64;
                format!("{} {:.1} + {:.1}", row.name(), us(*ours), us(*theirs))
            })
            .collect();
        println!(
            "redis_paired/{mode}{n}: CPU us per decision, this process + redis-server: {}",
            line.join(", ")
        );
        if !mode.is_empty() {
            let line: Vec<String> = ROWS
                .iter()
                .zip(&mut latencies)
                .map(|(row, took)| {
                    took.sort_unstable();
                    let at = |q: f64| took.get(((took.len().max(1) - 1) as f64 * q) as usize);
                    match (at(0.5), at(0.99)) {
                        (Some(p50), Some(p99)) => format!("{} {p50} / {p99}", row.name()),
                        _ => format!("{} -", row.name()),
                    }
                })
                .collect();
            println!(
                "redis_paired/{mode}{n}: µs from call to answer, p50 / p99: {}",
                line.join(", ")
            );
        }
        for (other, name) in [(3, "throttle_kit"), (0, "raw_evalsha")] {
            let ratios: Vec<f64> = rates[1]
                .iter()
                .zip(&rates[other])
                .map(|(ours, theirs)| ours / theirs)
                .collect();
            let ahead = ratios.iter().filter(|r| **r >= 1.0).count();
            let (lo, hi) = ratios
                .iter()
                .fold((f64::MAX, 0f64), |(lo, hi), r| (lo.min(*r), hi.max(*r)));
            println!(
                "redis_paired/{mode}{n}: store / {name} {:.2} [{lo:.2}-{hi:.2}] ({ahead} of {rounds})",
                median(ratios)
            );
        }
    }
}

/// CPU time (s) this process's threads have run, from `/proc/self/task/*/schedstat` (ns; 0
/// where there is no such file).
fn client_cpu() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ns: u64 = tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    ns as f64 / 1e9
}

/// CPU time (s) the server has run, user and system, from `INFO cpu`.
fn server_cpu(server: &RedisServer) -> f64 {
    server
        .info("cpu")
        .lines()
        .filter_map(|l| {
            l.strip_prefix("used_cpu_user:")
                .or_else(|| l.strip_prefix("used_cpu_sys:"))
        })
        .map(|v| v.trim().parse::<f64>().expect("a CPU time"))
        .sum()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[m - 1] + v[m]) / 2.0
    } else {
        v[m]
    }
}

pub(crate) fn rate_limit(c: &mut Criterion) {
    let Some((server, rt)) = redis_group("redis_rate_limit") else {
        return;
    };
    let rows = rt.block_on(Rows::new(&server));
    let (two_store, raw, args) = (&rows.two, &rows.raw, &rows.args);
    let sha = script_sha(Algorithm::Gcra);

    let mut g = c.benchmark_group("redis_rate_limit");
    for n in [1u32, 16, 64] {
        g.throughput(Throughput::Elements(u64::from(n)));
        let keys = Keys::new(&rows, n);
        for row in ROWS {
            g.bench_with_input(BenchmarkId::new(row.name(), n), &n, |b, _| {
                b.to_async(&rt).iter(|| rows.wave(row, &keys));
            });
        }
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
