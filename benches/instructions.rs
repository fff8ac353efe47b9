//! Instructions per call beside criterion times: every layer's default configuration and its peers,
//! each against the bare service of the same run.
//!
//! Run with `cargo bench --bench instructions` (add `-- <filter>` to run the scenarios whose name
//! contains it; `INSTRUCTIONS_ONLY=1` skips the criterion times, `INSTRUCTIONS_CALLS=<N>` sets N,
//! default 20,000). Needs `valgrind` (`apt-get install valgrind`); no `perf`, no hardware counters,
//! so it runs on a small shared VM and its figures do not move with the machine's load.
//!
//! For each scenario the binary re-executes itself twice under
//! `valgrind --tool=callgrind --toggle-collect=<the measured loop>`, once making N calls and once
//! 2N, and counts instructions inside the measured loop only (set-up, warm-up and the process's start
//! are not collected). Instructions per call are `(I(2N) - I(N)) / N`: whatever the loop costs once
//! (a first-call initialisation, a lazily grown table) cancels out. The `added` column subtracts the
//! scenario's bare row of the same run (the same inner service, the same requests, no layer).
//! The time columns are criterion's (`ns/call` is the mean over all of criterion's samples of the
//! same closure, run natively), with the same subtraction.
//!
//! Scenarios (`u64/*` call an echo service with a `u64`; `http/*` call a JSON handler's response,
//! `200` with `content-type: application/json` and a body, an `axum::body::Body` as axum's
//! handlers answer, with one peer IP in `ConnectInfo`; `http10k/*` cycle through 10,000 peer IPs,
//! every one known to the limiter before measuring):
//!
//! - rate limiter: ours global (plain service, on the opt-in `CoarseClock` too, and HTTP mode with and without the success headers,
//!   and with a quota where no `RateLimit` value repeats),
//!   keyed by peer IP in HTTP mode (with and without), tower's `RateLimit`, governor's direct
//!   limiter, tower_governor (global and peer IP, with and without `use_headers()`), throttle-kit's
//!   tower layer (in memory); our in-memory store alone (`RateLimitStore::check`, no service), one
//!   limit and two;
//! - circuit breaker closed; retry with a successful first attempt (ours, ours without a budget,
//!   tower's `Retry`); cache hit (and with one event hook); the stack rate limit + circuit breaker + retry;
//! - an HTTP cache's successful write (a `POST`, which invalidates its resource's variants) beside
//!   10,000 cached resources keyed with a field (`http10k/rampart_cache_write_beside_10k_variants`:
//!   not a hot path; it shows the write's cost does not grow with the entries held).
//! - Redis (`redis1/*`, `redis64/*`, each row on its own `redis-server`; see `instructions_redis.rs`):
//!   a rate-limit decision through our store against a raw `EVALSHA` of the same script, 1 and 64
//!   in flight (and throttle-kit's Redis backend, its own script, beside them), and an HTTP
//!   cache hit on Redis against a raw `GET` of the entry, 64 in flight (both rows build the same
//!   request per call; `redis64/build_request` counts that alone).
//!   Callgrind counts the client side only. Each call is a round trip: `INSTRUCTIONS_CALLS=2000`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::Criterion;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tower::{Layer, Service, service_fn};
use tower_rampart::backend::MemoryBackend;
use tower_rampart::cache::{CacheEvent, CacheLayer};
use tower_rampart::circuit_breaker::CircuitBreakerLayer;
use tower_rampart::clock::CoarseClock;
use tower_rampart::key::{PeerIp, key_fn};
use tower_rampart::rate_limit::{Ask, Check, Limit, RateLimitLayer, RateLimitStore};
use tower_rampart::retry::RetryLayer;

#[allow(dead_code)]
mod support;

mod callgrind;
use callgrind::Run;

#[path = "instructions_redis.rs"]
mod redis_rows;

use support::{HUGE, bare_u64, call_now, noop_cx, refused, rl_cb_retry_u64};

/// Distinct peers in the `http10k` rows.
const PEERS: usize = 10_000;

/// The JSON body every HTTP handler here answers with.
const JSON: &str = r#"{"status":"ok","count":42,"items":[1,2,3]}"#;

/// One row: its name, the bare row it is compared with, and how to set it up.
struct Scenario {
    name: &'static str,
    bare: &'static str,
    setup: fn() -> Run,
}

/// A tokio runtime entered for the life of the process (tower's `RateLimit` makes a `Sleep`, our
/// clock reads tokio's time), as a server's code runs inside one.
fn enter_runtime() {
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("tokio runtime"),
    ));
    // The guard is never dropped: the runtime stays entered on this thread.
    std::mem::forget(rt.enter());
}

/// A `u64` service driven `n` times.
fn u64_run<S>(mut svc: S) -> Run
where
    S: Service<u64> + 'static,
{
    let mut cx = noop_cx();
    Box::new(move |n| {
        for i in 0..n {
            match call_now(&mut svc, &mut cx, black_box(i)) {
                Ok(v) => drop(black_box(v)),
                Err(_) => refused(),
            }
        }
    })
}

/// Runs `n` decisions of an in-memory store over `limits` on 1,024 keys, without a service.
fn store_run(limits: Vec<Limit>) -> Run {
    let layer = RateLimitLayer::builder()
        .limits(limits)
        .key(key_fn(|n: &u64| Some(n % 1024)))
        .build()
        .expect("valid quota");
    let set = layer.limit_set();
    Box::new(move |n| {
        let store = layer.store();
        for i in 0..n {
            match store.check(&black_box(i % 1024), &Ask::new(&set)) {
                Check::Ready(Ok(d)) if d.is_allowed() => drop(black_box(d)),
                _ => refused(),
            }
        }
    })
}

/// The JSON handler: `200`, `content-type: application/json`, a small JSON body.
fn json_handler() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<Body>| {
        let mut res = Response::new(Body::from(JSON));
        res.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        ready(Ok::<_, Infallible>(res))
    })
}

/// The peer of request `i` when cycling through `peers` of them.
fn peer(i: u64, peers: u64) -> SocketAddr {
    let n = u32::try_from(i % peers).expect("fewer than 2^32 peers");
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)), 40_000)
}

/// An HTTP service driven `n` times, request `i` from peer `i % peers` (as axum records it); every
/// answer must be a `200`. The first `peers` calls are made before measuring (every key known).
fn http_run<S>(mut svc: S, peers: u64) -> Run
where
    S: Service<Request<Body>, Response = Response<Body>> + 'static,
{
    let mut cx = noop_cx();
    let mut next = 0u64;
    let mut run = move |n: u64| {
        for _ in 0..n {
            let mut req = Request::new(Body::empty());
            req.extensions_mut().insert(ConnectInfo(peer(next, peers)));
            next += 1;
            match call_now(&mut svc, &mut cx, req) {
                Ok(res) if res.status() == StatusCode::OK => drop(black_box(res)),
                _ => refused(),
            }
        }
    };
    run(peers);
    Box::new(run)
}

/// The global limiter in HTTP mode where no `RateLimit` value repeats: `u32::MAX` requests per 366
/// days (one unit every 7.4 ms), so every response has one request fewer remaining than the last.
/// Its policy's table of kept values is full after the warm-up: every value is built per response.
fn rampart_http_new_values() -> Run {
    let layer = RateLimitLayer::builder()
        .quota(tower_rampart::rate_limit::Quota::with_period(
            u32::MAX,
            Duration::from_secs(366 * 24 * 3600),
        ))
        .http()
        .build()
        .expect("valid quota");
    http_run(layer.layer(json_handler()), 1)
}

/// An HTTP cache keyed on `accept` (so every key has a variant part) holding 10,000 resources'
/// entries; each measured call is a `POST` to one more resource, answered `200`, which
/// invalidates that resource's `GET` and `HEAD` entries and their variants. What it costs should
/// not grow with the entries the cache holds.
fn rampart_cache_writes() -> Run {
    use tower_rampart::cache::HttpKey;
    let layer = CacheLayer::builder()
        .http()
        .key(HttpKey::new().header(header::ACCEPT))
        .ttl(Duration::from_secs(3600))
        .max_bytes(256 * 1024 * 1024)
        .build()
        .expect("valid cache");
    let mut svc = layer.layer(json_handler());
    let mut cx = noop_cx();
    let request = |method: http::Method, path: String| {
        Request::builder()
            .method(method)
            .uri(path)
            .header(header::ACCEPT, "application/json")
            .body(Body::empty())
            .expect("a valid request")
    };
    for i in 0..PEERS {
        match call_now(
            &mut svc,
            &mut cx,
            request(http::Method::GET, format!("/r/{i}")),
        ) {
            Ok(res) if res.status() == StatusCode::OK => drop(res),
            _ => refused(),
        }
    }
    assert_eq!(
        layer.store().entry_count(),
        PEERS as u64,
        "every resource is cached"
    );
    Box::new(move |n| {
        for _ in 0..n {
            match call_now(
                &mut svc,
                &mut cx,
                request(http::Method::POST, "/w".to_owned()),
            ) {
                Ok(res) if res.status() == StatusCode::OK => drop(black_box(res)),
                _ => refused(),
            }
        }
    })
}

fn rampart_http(peers: u64, headers: bool) -> Run {
    if peers == 1 {
        let layer = RateLimitLayer::builder()
            .quota(HUGE)
            .http()
            .headers_on_success(headers)
            .build()
            .expect("valid quota");
        http_run(layer.layer(json_handler()), peers)
    } else {
        let layer = RateLimitLayer::builder()
            .quota(HUGE)
            .key(PeerIp::new())
            .http()
            .headers_on_success(headers)
            .build()
            .expect("valid quota");
        http_run(layer.layer(json_handler()), peers)
    }
}

fn tower_governor_run(peers: u64, headers: bool) -> Run {
    use tower_governor::GovernorLayer;
    use tower_governor::governor::GovernorConfigBuilder;
    use tower_governor::key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor};
    // governor's largest quota: one cell per nanosecond, a burst of u32::MAX.
    macro_rules! build {
        ($key:expr) => {{
            let mut b = GovernorConfigBuilder::default();
            b.per_nanosecond(1).burst_size(u32::MAX);
            let mut b = b.key_extractor($key);
            if headers {
                let config = b.use_headers().finish().expect("valid config");
                http_run(GovernorLayer::new(config).layer(json_handler()), peers)
            } else {
                let config = b.finish().expect("valid config");
                http_run(GovernorLayer::new(config).layer(json_handler()), peers)
            }
        }};
    }
    if peers == 1 {
        build!(GlobalKeyExtractor)
    } else {
        build!(PeerIpKeyExtractor)
    }
}

fn throttle_kit_run(peers: u64) -> Run {
    use throttle_kit::{InMemoryBackend, Quota as TkQuota, RateLimitLayer as TkLayer};
    let quota = TkQuota::from_parts(Duration::from_nanos(1), u32::MAX);
    let layer = TkLayer::new(quota, InMemoryBackend::new());
    // throttle-kit's service boxes its future, which awaits the inner service's: poll it on the
    // runtime's thread with a no-op waker, as the others (it is ready at once in memory).
    http_run(layer.layer(json_handler()), peers)
}

fn scenarios() -> Vec<Scenario> {
    macro_rules! s {
        ($name:literal, $bare:literal, $setup:expr) => {
            Scenario {
                name: $name,
                bare: $bare,
                setup: $setup,
            }
        };
    }
    vec![
        s!("u64/bare", "u64/bare", || u64_run(bare_u64())),
        s!("u64/rampart_rate_limit_global", "u64/bare", || {
            let layer = RateLimitLayer::builder()
                .quota(HUGE)
                .build()
                .expect("valid quota");
            u64_run(layer.layer(bare_u64()))
        }),
        s!(
            "u64/rampart_rate_limit_global_two_limits",
            "u64/bare",
            || {
                let layer = RateLimitLayer::builder()
                    .limits([Limit::new("a", HUGE), Limit::new("b", HUGE)])
                    .build()
                    .expect("valid quota");
                u64_run(layer.layer(bare_u64()))
            }
        ),
        // Keyed rows: 1,024 keys (`n % 1024`), known to the store after the first calls.
        s!("u64/rampart_rate_limit_keyed", "u64/bare", || {
            let layer = RateLimitLayer::builder()
                .quota(HUGE)
                .key(key_fn(|n: &u64| Some(n % 1024)))
                .build()
                .expect("valid quota");
            u64_run(layer.layer(bare_u64()))
        }),
        s!("u64/rampart_rate_limit_keyed_tiers", "u64/bare", || {
            // Per-key quota resolution: half the keys in a tier, the rest on the default.
            let layer = RateLimitLayer::builder()
                .quota(HUGE)
                .tier("pro", [Limit::new("pro", HUGE)])
                .key(key_fn(|n: &u64| Some(n % 1024)))
                .tier_of(|k: &u64| k.is_multiple_of(2).then_some("pro"))
                .build()
                .expect("valid quota");
            u64_run(layer.layer(bare_u64()))
        }),
        s!(
            "u64/rampart_rate_limit_keyed_two_limits",
            "u64/bare",
            || {
                let layer = RateLimitLayer::builder()
                    .limits([Limit::new("a", HUGE), Limit::new("b", HUGE)])
                    .key(key_fn(|n: &u64| Some(n % 1024)))
                    .build()
                    .expect("valid quota");
                u64_run(layer.layer(bare_u64()))
            }
        ),
        s!(
            "u64/rampart_rate_limit_global_coarse_clock",
            "u64/bare",
            || {
                let layer = RateLimitLayer::builder()
                    .quota(HUGE)
                    .backend(
                        MemoryBackend::new().clock(CoarseClock::spawn(Duration::from_millis(1))),
                    )
                    .build()
                    .expect("valid quota");
                u64_run(layer.layer(bare_u64()))
            }
        ),
        // The in-memory store alone (`RateLimitStore::check`, 1,024 keys), one limit and two
        // (#18's 1.6x goal at the store).
        s!("u64/rampart_rate_limit_store_one_limit", "u64/bare", || {
            store_run(vec![Limit::new("a", HUGE)])
        }),
        s!(
            "u64/rampart_rate_limit_store_two_limits",
            "u64/bare",
            || store_run(vec![Limit::new("a", HUGE), Limit::new("b", HUGE)])
        ),
        s!("u64/tower_rate_limit", "u64/bare", || {
            u64_run(
                tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(3600))
                    .layer(bare_u64()),
            )
        }),
        s!("u64/governor_direct_check", "u64/bare", || {
            let limiter = governor::RateLimiter::direct(governor::Quota::per_hour(NonZeroU32::MAX));
            let mut svc = bare_u64();
            let mut cx = noop_cx();
            Box::new(move |n| {
                for i in 0..n {
                    if limiter.check().is_err() {
                        refused();
                    }
                    match call_now(&mut svc, &mut cx, black_box(i)) {
                        Ok(v) => drop(black_box(v)),
                        Err(_) => refused(),
                    }
                }
            })
        }),
        s!("u64/rampart_breaker_closed", "u64/bare", || {
            let layer = CircuitBreakerLayer::builder()
                .build()
                .expect("valid configuration");
            u64_run(layer.layer(bare_u64()))
        }),
        s!("u64/rampart_retry", "u64/bare", || {
            let layer = RetryLayer::builder().build().expect("valid configuration");
            u64_run(layer.layer(bare_u64()))
        }),
        s!("u64/rampart_retry_no_budget", "u64/bare", || {
            let layer = RetryLayer::builder()
                .no_budget()
                .build()
                .expect("valid configuration");
            u64_run(layer.layer(bare_u64()))
        }),
        s!("u64/tower_retry", "u64/bare", || {
            u64_run(tower::retry::RetryLayer::new(Trivial).layer(bare_u64()))
        }),
        s!("u64/rampart_cache_hit", "u64/bare", || {
            let layer = CacheLayer::builder()
                .ttl(Duration::from_secs(3600))
                .key(key_fn(|_: &u64| Some(7u64)))
                .build()
                .expect("valid cache");
            u64_run(layer.layer(bare_u64()))
        }),
        s!("u64/rampart_cache_hit_hooked", "u64/bare", || {
            // The same hit with one `.on_event` hook (counting hits): what a hook adds where a
            // layer emits on its hot path; `u64/rampart_cache_hit` is the cost with none (#19).
            let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let layer = CacheLayer::builder()
                .ttl(Duration::from_secs(3600))
                .key(key_fn(|_: &u64| Some(7u64)))
                .on_event(move |e: &CacheEvent| {
                    if matches!(e, CacheEvent::Hit { .. }) {
                        hits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                })
                .build()
                .expect("valid cache");
            u64_run(layer.layer(bare_u64()))
        }),
        s!("u64/rampart_stack_rl_cb_retry", "u64/bare", || {
            let svc = rl_cb_retry_u64();
            u64_run(svc)
        }),
        s!("http/bare", "http/bare", || http_run(json_handler(), 1)),
        s!("http/rampart_global", "http/bare", || rampart_http(1, true)),
        s!(
            "http/rampart_global_no_success_headers",
            "http/bare",
            || { rampart_http(1, false) }
        ),
        s!("http/rampart_global_new_values", "http/bare", || {
            rampart_http_new_values()
        }),
        s!("http/tower_governor_global", "http/bare", || {
            tower_governor_run(1, false)
        }),
        s!(
            "http/tower_governor_global_use_headers",
            "http/bare",
            || { tower_governor_run(1, true) }
        ),
        s!("http10k/bare", "http10k/bare", || {
            http_run(json_handler(), PEERS as u64)
        }),
        s!("http10k/rampart_peer_ip", "http10k/bare", || {
            rampart_http(PEERS as u64, true)
        }),
        s!(
            "http10k/rampart_peer_ip_no_success_headers",
            "http10k/bare",
            || rampart_http(PEERS as u64, false)
        ),
        s!(
            "http10k/rampart_peer_ip_no_success_headers_coarse_clock",
            "http10k/bare",
            || {
                // The row above on `CoarseClock`: what the default clock's read costs of it (the
                // peers' rows read the TSC through `quanta`). Its task never runs here (the
                // runtime is entered, not driven), so it reads 0: only the read is measured.
                let layer = RateLimitLayer::builder()
                    .quota(HUGE)
                    .key(PeerIp::new())
                    .http()
                    .headers_on_success(false)
                    .backend(
                        MemoryBackend::new().clock(CoarseClock::spawn(Duration::from_millis(1))),
                    )
                    .build()
                    .expect("valid quota");
                http_run(layer.layer(json_handler()), PEERS as u64)
            }
        ),
        s!("http10k/tower_governor_peer_ip", "http10k/bare", || {
            tower_governor_run(PEERS as u64, false)
        }),
        s!(
            "http10k/tower_governor_peer_ip_use_headers",
            "http10k/bare",
            || tower_governor_run(PEERS as u64, true)
        ),
        s!("http10k/throttle_kit_peer_ip", "http10k/bare", || {
            throttle_kit_run(PEERS as u64)
        }),
        s!(
            "http10k/rampart_cache_write_beside_10k_variants",
            "http10k/bare",
            rampart_cache_writes
        ),
        s!("redis1/raw_evalsha", "redis1/raw_evalsha", || {
            redis_rows::raw(1)
        }),
        s!("redis1/rampart_store", "redis1/raw_evalsha", || {
            redis_rows::store(1)
        }),
        s!("redis1/throttle_kit", "redis1/raw_evalsha", || {
            redis_rows::throttle_kit(1)
        }),
        s!("redis64/raw_evalsha", "redis64/raw_evalsha", || {
            redis_rows::raw(64)
        }),
        s!("redis64/rampart_store", "redis64/raw_evalsha", || {
            redis_rows::store(64)
        }),
        s!("redis64/throttle_kit", "redis64/raw_evalsha", || {
            redis_rows::throttle_kit(64)
        }),
        s!(
            "redis64/raw_get",
            "redis64/raw_get",
            || redis_rows::raw_get(64)
        ),
        s!("redis64/rampart_cache_hit", "redis64/raw_get", || {
            redis_rows::cache_hit(64)
        }),
        s!("redis64/build_request", "redis64/build_request", || {
            redis_rows::build_request()
        }),
    ]
}

/// tower's retry policy at its simplest: copy the request, never retry.
#[derive(Clone, Copy)]
struct Trivial;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Trivial {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Ready<()>> {
        result.is_err().then(|| ready(()))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// The loop callgrind counts (`--toggle-collect` names this function): nothing else is collected.
#[inline(never)]
/// Under callgrind: set up `name`, warm it up, and make `n` measured calls.
fn child(name: &str, n: u64) {
    enter_runtime();
    let scenario = scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name:?}"));
    let mut run = (scenario.setup)();
    run(1_000);
    callgrind::rampart_measured_calls(&mut *run, n);
}

/// Criterion's samples of each scenario: total calls and total time.
static TIMES: Mutex<Option<HashMap<&'static str, (u64, Duration)>>> = Mutex::new(None);

/// Criterion's times for `selected` (this binary picks the rows itself: criterion's own filter, which
/// would read the same argument, is not used).
fn criterion_times(selected: &[Scenario]) {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for s in selected {
        let mut run = (s.setup)();
        let name = s.name;
        c.bench_function(&format!("instructions/{name}"), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                run(iters);
                let took = start.elapsed();
                let mut t = TIMES.lock().expect("not poisoned");
                let e = t.get_or_insert_with(HashMap::new).entry(name).or_default();
                e.0 += iters;
                e.1 += took;
                took
            });
        });
    }
}

fn main() {
    if let Some((name, n)) = callgrind::child_spec() {
        child(&name, n);
        return;
    }
    // `cargo test --benches` runs this binary without `--bench`: check that every scenario sets up
    // and runs, natively, and stop.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let bench = args.iter().any(|a| a == "--bench");
    enter_runtime();
    if !bench {
        let redis = redis_rows::available();
        for s in scenarios() {
            if s.name.starts_with("redis") && !redis {
                println!("instructions: {} skipped, no redis-server", s.name);
                continue;
            }
            let mut run = (s.setup)();
            run(100);
        }
        println!("instructions: every scenario ran (run `cargo bench --bench instructions`)");
        return;
    }
    let filter = args.iter().find(|a| !a.starts_with('-')).cloned();
    let all = scenarios();
    let mut selected: Vec<&Scenario> = all
        .iter()
        .filter(|s| filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    // Every selected row's bare row is measured too.
    for s in &all {
        if !selected.iter().any(|x| x.name == s.name) && selected.iter().any(|x| x.bare == s.name) {
            selected.push(s);
        }
    }
    selected.sort_by_key(|s| all.iter().position(|x| x.name == s.name));
    let n: u64 = std::env::var("INSTRUCTIONS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    if std::env::var_os("INSTRUCTIONS_ONLY").is_none() {
        let owned: Vec<Scenario> = selected
            .iter()
            .map(|s| Scenario {
                name: s.name,
                bare: s.bare,
                setup: s.setup,
            })
            .collect();
        criterion_times(&owned);
    }
    let mut per_call = HashMap::new();
    for s in &selected {
        per_call.insert(s.name, callgrind::per_call(s.name, n));
    }
    let times = TIMES
        .lock()
        .expect("not poisoned")
        .take()
        .unwrap_or_default();
    let ns = |name: &str| {
        times
            .get(name)
            .map(|(calls, t)| t.as_nanos() as f64 / *calls as f64)
    };
    println!(
        "\ninstructions per call: (I(2N) - I(N)) / N under callgrind, N = {n}; times: criterion, same run"
    );
    println!("| scenario | instructions/call | added | ns/call | added ns |");
    println!("|---|---:|---:|---:|---:|");
    for s in &selected {
        let i = per_call[s.name];
        let added = i - per_call[s.bare];
        let (t, added_t) = match (ns(s.name), ns(s.bare)) {
            (Some(t), Some(b)) => (format!("{t:.1}"), format!("{:+.1}", t - b)),
            _ => ("-".into(), "-".into()),
        };
        let added = if s.name == s.bare {
            String::new()
        } else {
            format!("{added:+.0}")
        };
        let added_t = if s.name == s.bare {
            String::new()
        } else {
            added_t
        };
        println!("| `{}` | {i:.0} | {added} | {t} | {added_t} |", s.name);
    }
}
