//! Rate limiter overhead, measured against a bare service in the same run.
//!
//! Every row admits every request (the quotas are far larger than any run can spend, and a refusal
//! stops the run), so what is measured is the cost of the limiter on the path every request takes.
//! The rows worth reading are the differences to each group's `bare` row.
//!
//! - `rate_limit/global`: one limit for the whole service, single thread. tower's own
//!   `RateLimit` is there for reference; note that it is a per-instance counter (`&mut self`, not
//!   shared by clones or threads), while ours is one shared atomic word.
//! - `rate_limit/keyed_peer_ip_10k`: per-client limits keyed by peer IP, cycling through 10,000
//!   pre-built `http::Request`s from 10,000 distinct IPv4 peers, all known to the store before timing.
//!   Requests are cloned from the pool outside the timed section, a small batch at a time; moving
//!   them in and dropping them is timed, in every row alike. `governor_keyed_check` and
//!   `rampart_store_decide` take the IP directly (no service, no request): compare them with each
//!   other.
//! - `rate_limit/contention_2_threads`: one limiter shared by one or two threads. Each thread owns a
//!   clone of the service and makes `iters` calls; the time reported per iteration is the wall time
//!   of the slower thread divided by `iters`, i.e. the latency of one call while the other thread
//!   runs too (throughput is threads / time). Rows: the global limiter (one atomic word), a keyed
//!   limiter with both threads on one key, and with each thread on its own 4,096 keys; the
//!   `unshared` row gives each thread a limiter of its own, which is as well as two threads can
//!   scale on the machine.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response, StatusCode};
use tower::{Layer, Service, service_fn};
use tower_rampart::backend::MemoryBackend;
use tower_rampart::clock::ManualClock;
use tower_rampart::key::{PeerIp, key_fn};
use tower_rampart::rate_limit::{Algorithm, Ask, Check, Limit, RateLimitLayer, RateLimitStore};

use crate::support::{HUGE, bare_u64, call_now, noop_cx, parallel, refused};

/// Distinct peers in the keyed group.
const PEERS: usize = 10_000;

/// Requests cloned from the pool per timed batch in the keyed group (about 60 KB of requests).
const BATCH: usize = 256;

/// Keys per thread in the "own keys" contention rows: many clients, spread over all the store's
/// shards, as on a busy server.
const OWN_KEYS: u64 = 4096;

/// The inner service of the keyed group: reads nothing, answers `200 OK` with a JSON content type,
/// like any real endpoint (so the response already has a header map when a layer adds to it).
fn bare_http() -> impl Service<
    Request<()>,
    Response = Response<Bytes>,
    Error = Infallible,
    Future = Ready<Result<Response<Bytes>, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<()>| {
        let mut res = Response::new(Bytes::from_static(b"{}"));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        ready(Ok::<_, Infallible>(res))
    })
}

/// The value of an admitted call; anything else stops the run.
#[inline]
fn admitted<T, E>(res: Result<T, E>) -> T {
    match res {
        Ok(v) => v,
        Err(_) => refused(),
    }
}

/// `rate_limit/global`: one limit for everything, one thread.
pub(crate) fn global(c: &mut Criterion) {
    // tower's RateLimit creates a tokio `Sleep`, which needs a runtime's timer. Every row runs
    // inside the same runtime context, as it would in a tokio server.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("rate_limit/global");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| admitted(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc =
        tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(3600)).layer(bare_u64());
    g.bench_function("tower_rate_limit", |b| {
        b.iter(|| admitted(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_gcra", |b| {
        b.iter(|| admitted(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .backend(MemoryBackend::new().clock(ManualClock::new()))
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_gcra_manual_clock", |b| {
        b.iter(|| admitted(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .algorithm(Algorithm::SlidingWindow)
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_sliding_window", |b| {
        b.iter(|| admitted(call_now(&mut svc, &mut cx, black_box(7))));
    });

    g.finish();
}

/// `PEERS` requests from distinct IPv4 peers (10.0.0.0 upwards), each with its `SocketAddr` in the
/// extensions, as a hyper server would record it.
fn request_pool() -> Vec<Request<()>> {
    (0..PEERS)
        .map(|i| {
            let n = u32::try_from(i).expect("small index");
            let ip = Ipv4Addr::from(0x0a00_0000 + n);
            let port = 40_000 + u16::try_from(i % 20_000).expect("small port");
            let mut req = Request::new(());
            req.extensions_mut()
                .insert(SocketAddr::new(IpAddr::V4(ip), port));
            req
        })
        .collect()
}

/// Sends `iters` requests from `pool` through `svc`, continuing the cycle at `cursor`, and returns
/// the time spent in the service. Requests are cloned from the pool untimed, `BATCH` at a time, so
/// they are in cache like a request a server has just parsed; moving each into the service, the
/// call, and dropping the response (and with it the request) are timed.
fn drive<S>(
    svc: &mut S,
    pool: &[Request<()>],
    cursor: &mut usize,
    iters: u64,
    ok: impl Fn(&Result<S::Response, S::Error>) -> bool,
) -> Duration
where
    S: Service<Request<()>>,
{
    let mut cx = noop_cx();
    let mut batch: Vec<Request<()>> = Vec::with_capacity(BATCH);
    let mut left = iters;
    let mut total = Duration::ZERO;
    while left > 0 {
        let from = *cursor;
        let n = (pool.len() - from)
            .min(BATCH)
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        batch.extend_from_slice(&pool[from..from + n]);
        *cursor = (from + n) % pool.len();
        let start = Instant::now();
        for req in batch.drain(..) {
            let res = call_now(svc, &mut cx, req);
            if !ok(&res) {
                refused();
            }
            drop(black_box(res));
        }
        total += start.elapsed();
        left -= n as u64;
    }
    total
}

/// Whether a call was admitted, in the default mode (refusals are errors).
fn is_ok<T, E>(res: &Result<T, E>) -> bool {
    res.is_ok()
}

/// Whether a call was admitted, in HTTP mode (refusals are 429 responses).
fn is_200<E>(res: &Result<Response<Bytes>, E>) -> bool {
    res.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)
}

/// `rate_limit/keyed_peer_ip_10k`: per-peer-IP limits over 10,000 distinct peers.
pub(crate) fn keyed_peer_ip(c: &mut Criterion) {
    let pool = request_pool();
    let ips: Vec<IpAddr> = pool
        .iter()
        .map(|r| r.extensions().get::<SocketAddr>().expect("peer").ip())
        .collect();
    let mut cursor = 0;
    let mut g = c.benchmark_group("rate_limit/keyed_peer_ip_10k");

    let mut svc = bare_http();
    g.bench_function("bare", |b| {
        b.iter_custom(|iters| drive(&mut svc, &pool, &mut cursor, iters, is_ok));
    });

    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .key(PeerIp::new())
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_http());
    // Every peer is known to the store before timing starts: the rows measure lookups, not inserts.
    drive(&mut svc, &pool, &mut cursor, PEERS as u64, is_ok);
    assert_eq!(layer.store().len(), PEERS);
    g.bench_function("rampart_peer_ip", |b| {
        b.iter_custom(|iters| drive(&mut svc, &pool, &mut cursor, iters, is_ok));
    });

    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .key(PeerIp::new())
        .http()
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_http());
    drive(&mut svc, &pool, &mut cursor, PEERS as u64, is_200);
    g.bench_function("rampart_peer_ip_http_mode", |b| {
        b.iter_custom(|iters| drive(&mut svc, &pool, &mut cursor, iters, is_200));
    });

    // Per-key quota resolution (#18): a resolver puts every other peer in a tier; the rest get the
    // default. Compare with `rampart_peer_ip`.
    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .tier("pro", [Limit::new("pro", HUGE)])
        .key(PeerIp::new())
        .tier_of(|ip: &IpAddr| match ip {
            IpAddr::V4(v4) if v4.octets()[3].is_multiple_of(2) => Some("pro"),
            _ => None,
        })
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_http());
    drive(&mut svc, &pool, &mut cursor, PEERS as u64, is_ok);
    g.bench_function("rampart_peer_ip_tiers", |b| {
        b.iter_custom(|iters| drive(&mut svc, &pool, &mut cursor, iters, is_ok));
    });

    // Two limits in one decision (#18), all or nothing. Compare with `rampart_peer_ip`.
    let layer = RateLimitLayer::builder()
        .limits([Limit::new("a", HUGE), Limit::new("b", HUGE)])
        .key(PeerIp::new())
        .build()
        .expect("valid quota");
    let mut svc = layer.layer(bare_http());
    drive(&mut svc, &pool, &mut cursor, PEERS as u64, is_ok);
    g.bench_function("rampart_peer_ip_two_limits", |b| {
        b.iter_custom(|iters| drive(&mut svc, &pool, &mut cursor, iters, is_ok));
    });

    // axum records the peer as `ConnectInfo<SocketAddr>`, which `PeerIp` looks for first.
    #[cfg(feature = "axum")]
    {
        let pool: Vec<Request<()>> = pool
            .iter()
            .map(|r| {
                let peer = *r.extensions().get::<SocketAddr>().expect("peer");
                let mut req = Request::new(());
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                req
            })
            .collect();
        let layer = RateLimitLayer::builder()
            .quota(HUGE)
            .key(PeerIp::new())
            .build()
            .expect("valid quota");
        let mut svc = layer.layer(bare_http());
        let mut cursor = 0;
        drive(&mut svc, &pool, &mut cursor, PEERS as u64, is_ok);
        assert_eq!(layer.store().len(), PEERS);
        g.bench_function("rampart_peer_ip_axum_connect_info", |b| {
            b.iter_custom(|iters| drive(&mut svc, &pool, &mut cursor, iters, is_ok));
        });
    }

    // Reference rows: the key is given, no request and no service.
    let limiter = governor::RateLimiter::keyed(governor::Quota::per_hour(NonZeroU32::MAX));
    for ip in &ips {
        admitted(limiter.check_key(ip));
    }
    let mut i = 0;
    g.bench_function("governor_keyed_check", |b| {
        b.iter(|| {
            let ip = &ips[i];
            i = if i + 1 == ips.len() { 0 } else { i + 1 };
            admitted(limiter.check_key(black_box(ip)))
        });
    });

    let layer = RateLimitLayer::builder()
        .quota(HUGE)
        .key(PeerIp::new())
        .build()
        .expect("valid quota");
    let store = layer.store();
    for ip in &ips {
        assert!(store.decide(ip).is_allowed());
    }
    let mut i = 0;
    g.bench_function("rampart_store_decide", |b| {
        b.iter(|| {
            let ip = &ips[i];
            i = if i + 1 == ips.len() { 0 } else { i + 1 };
            let d = store.decide(black_box(ip));
            if !d.is_allowed() {
                refused();
            }
            d
        });
    });

    // The store's decision through `RateLimitStore::check`: one limit, and two (#18).
    for (row, limits) in [
        ("rampart_store_check_one_limit", vec![Limit::new("a", HUGE)]),
        (
            "rampart_store_check_two_limits",
            vec![Limit::new("a", HUGE), Limit::new("b", HUGE)],
        ),
    ] {
        let layer = RateLimitLayer::builder()
            .limits(limits)
            .key(PeerIp::new())
            .build()
            .expect("valid quota");
        let (store, set) = (layer.store(), layer.limit_set());
        let check = |ip: &IpAddr| match store.check(ip, &Ask::new(&set)) {
            Check::Ready(Ok(d)) if d.is_allowed() => d,
            _ => refused(),
        };
        for ip in &ips {
            check(ip);
        }
        let mut i = 0;
        g.bench_function(row, |b| {
            b.iter(|| {
                let ip = &ips[i];
                i = if i + 1 == ips.len() { 0 } else { i + 1 };
                check(black_box(ip))
            });
        });
    }

    g.finish();
}

/// Thread `t`'s own keys: `OWN_KEYS` of them, disjoint from every other thread's.
fn own_key(t: u64, i: u64) -> u64 {
    t * OWN_KEYS + i % OWN_KEYS
}

/// Every thread on key 0.
fn same_key(_: u64, _: u64) -> u64 {
    0
}

/// `rate_limit/contention_2_threads`: one limiter, one thread or two.
pub(crate) fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit/contention_2_threads");
    let keyed = || {
        RateLimitLayer::builder()
            .quota(HUGE)
            .key(key_fn(|k: &u64| Some(*k)))
            .build()
            .expect("valid quota")
            .layer(bare_u64())
    };

    let bare = bare_u64();
    let global = RateLimitLayer::builder()
        .quota(HUGE)
        .build()
        .expect("valid quota")
        .layer(bare_u64());
    let shared = keyed();
    // Two limiters that share nothing: the most two threads can scale on this machine.
    let unshared = [keyed(), keyed()];
    // Insert the keys before timing.
    parallel(vec![shared.clone(); 2], OWN_KEYS, own_key);
    parallel(unshared.to_vec(), OWN_KEYS, own_key);
    parallel(vec![shared.clone()], 1, same_key);

    let mut row = |name: &str, threads: usize, run: &dyn Fn(u64) -> Duration| {
        let suffix = if threads == 1 {
            "1_thread"
        } else {
            "2_threads"
        };
        g.bench_function(format!("{name}_{suffix}"), |b| b.iter_custom(run));
    };
    for threads in [1, 2] {
        row("bare", threads, &|iters| {
            parallel(vec![bare.clone(); threads], iters, same_key)
        });
    }
    for threads in [1, 2] {
        row("rampart_global", threads, &|iters| {
            parallel(vec![global.clone(); threads], iters, same_key)
        });
    }
    for threads in [1, 2] {
        row("rampart_keyed_one_key", threads, &|iters| {
            parallel(vec![shared.clone(); threads], iters, same_key)
        });
    }
    for threads in [1, 2] {
        row("rampart_keyed_own_keys", threads, &|iters| {
            parallel(vec![shared.clone(); threads], iters, own_key)
        });
    }
    row("rampart_keyed_own_keys_unshared", 2, &|iters| {
        parallel(unshared.to_vec(), iters, own_key)
    });

    g.finish();
}
