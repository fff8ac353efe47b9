//! Cache overhead, measured against a bare service in the same run.
//!
//! - `cache/hit_u64`: a small cloneable response (`u64` in, `u64` out), keyed by the request, one
//!   thread. `bare` is the inner service alone; `rampart_hit` answers from the cache without
//!   calling it. Reference rows, no service: `moka_get` (moka's own `get` of a `u64` key: the
//!   store the cache used to be built on, kept here as the measure of why it no longer is) and
//!   `rampart_store_get` (our in-memory store's lookup with a `CacheKey`).
//! - `cache/http_1k`: an `http::Request<()>` for `GET /api/metrics/summary?type=cpu_usage`
//!   answered with a 1 KiB JSON body and three headers. `bare` builds that response each time;
//!   `rampart_hit` replays it from the cache (key, lookup, header map clone, `x-cache` and `age`).
//!   Requests are built outside the timed section; responses are dropped inside it, in both rows.
//! - `cache/miss`: every request misses (a fresh key each time): `rampart_miss_u64` leads a
//!   single flight, calls the inner service, stores the answer and hands it on; `rampart_miss_http`
//!   also buffers the 1 KiB body. Compare each with its group's `bare` row. The caches are 4 MiB
//!   and filled before timing, so every miss also evicts an entry (steady state).
//!   `moka_insert` (reference, no service) is moka's own insert of a fresh `u64` key into a full
//!   cache of 16,000 entries; `rampart_store_put` our store's put of a fresh `CacheKey` into a
//!   full 4 MiB store (the eviction it makes included).
//! - `cache/contention_2_threads`: one cache shared by one or two threads, each with a clone of the
//!   service (as `rate_limit/contention_2_threads`: time per call per thread; throughput is
//!   threads / time). Hits on 64 hot keys, misses on fresh keys, a mix of both (seven hits to a
//!   miss, on each thread), and moka's `get` for reference.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, Criterion};
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_rampart::cache::entry::{Lifetimes, Timing};
use tower_rampart::cache::{CacheEntry, CacheKey, CacheLayer, CacheStore, StoreOp};
use tower_rampart::key::key_fn;

use crate::support::{bare_u64, call_now, noop_cx, parallel, refused};

/// The value of a call that must succeed; anything else stops the run.
#[inline]
fn ok<T, E>(res: Result<T, E>) -> T {
    match res {
        Ok(v) => v,
        Err(_) => refused(),
    }
}

/// A key no request has had before: the thread's own prefix and a per-thread counter, so two
/// threads never contend on making one.
fn fresh_key() -> u64 {
    static THREADS: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static PREFIX: u64 = THREADS.fetch_add(1, Ordering::Relaxed) << 40;
        static NEXT: Cell<u64> = const { Cell::new(0) };
    }
    let n = NEXT.with(|n| {
        let v = n.get();
        n.set(v + 1);
        v
    });
    PREFIX.with(|p| p | n)
}

const SUMMARY: &str = "/api/metrics/summary?type=cpu_usage";

/// A 1 KiB JSON body.
fn body_1k() -> Bytes {
    let mut s = String::from("{\"type\":\"cpu_usage\",\"points\":[");
    while s.len() < 1000 {
        s.push_str("85.5,");
    }
    s.push_str("0]}");
    Bytes::from(s)
}

type JsonResponse = Response<Full<Bytes>>;

/// The HTTP inner service: a 1 KiB JSON answer with three headers.
fn bare_http(
    body: Bytes,
) -> impl Service<
    Request<()>,
    Response = JsonResponse,
    Error = Infallible,
    Future = Ready<Result<JsonResponse, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<()>| {
        let mut res = Response::new(Full::new(body.clone()));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        h.insert(header::ETAG, HeaderValue::from_static("\"5f1e-cpu\""));
        ready(Ok::<_, Infallible>(res))
    })
}

fn summary_request() -> Request<()> {
    Request::get(SUMMARY).body(()).expect("valid request")
}

/// `cache/hit_u64`.
pub(crate) fn hit_u64(c: &mut Criterion) {
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("cache/hit_u64");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))))
    });

    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .key(key_fn(|n: &u64| Some(*n)))
        .build()
        .expect("valid cache");
    let mut svc = layer.layer(bare_u64());
    ok(call_now(&mut svc, &mut cx, 7)); // stored
    g.bench_function("rampart_hit", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))))
    });

    let moka: moka::sync::Cache<u64, Arc<u64>> = moka::sync::Cache::new(10_000);
    moka.insert(7, Arc::new(7));
    g.bench_function("moka_get", |b| {
        b.iter(|| moka.get(black_box(&7)).map(|v| *v))
    });

    let store = layer.store();
    let key = CacheKey::from(7u64);
    g.bench_function("rampart_store_get", |b| {
        b.iter(|| match store.get(black_box(&key)) {
            StoreOp::Ready(Ok(Some(entry))) => *entry.value(),
            _ => refused(),
        })
    });
    g.finish();
}

/// `cache/http_1k`.
pub(crate) fn http_1k(c: &mut Criterion) {
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("cache/http_1k");
    let body = body_1k();

    let mut svc = bare_http(body.clone());
    g.bench_function("bare", |b| {
        b.iter_batched(
            summary_request,
            |req| ok(call_now(&mut svc, &mut cx, req)),
            BatchSize::SmallInput,
        )
    });

    let mut svc = CacheLayer::http(Duration::from_secs(3600)).layer(bare_http(body.clone()));
    let res = ok(call_now(&mut svc, &mut cx, summary_request()));
    assert_eq!(res.headers()["x-cache"], "MISS");
    let res = ok(call_now(&mut svc, &mut cx, summary_request()));
    assert_eq!(res.headers()["x-cache"], "HIT");
    g.bench_function("rampart_hit", |b| {
        b.iter_batched(
            summary_request,
            |req| ok(call_now(&mut svc, &mut cx, req)),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The bound of the caches that only miss: small enough to be full (and evicting) before timing.
const STEADY_BYTES: u64 = 4 * 1024 * 1024;

/// `cache/miss`.
pub(crate) fn miss(c: &mut Criterion) {
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("cache/miss");
    let body = body_1k();

    let mut svc = bare_u64();
    g.bench_function("bare_u64", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))))
    });
    // A full cache, as in a steady state: every miss also evicts.
    let mut svc = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .key(key_fn(|_: &u64| Some(fresh_key())))
        .max_bytes(STEADY_BYTES)
        .build()
        .expect("valid cache")
        .layer(bare_u64());
    for _ in 0..100_000 {
        ok(call_now(&mut svc, &mut cx, 7));
    }
    g.bench_function("rampart_miss_u64", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))))
    });

    // Reference: moka's own insert of a fresh key into a full cache of about as many entries.
    let moka: moka::sync::Cache<u64, Arc<u64>> = moka::sync::Cache::new(16_000);
    for _ in 0..100_000 {
        moka.insert(fresh_key(), Arc::new(7));
    }
    g.bench_function("moka_insert", |b| {
        b.iter(|| moka.insert(black_box(fresh_key()), Arc::new(7)))
    });

    // Reference: our store's own put of a fresh key (eviction included), into a full store like
    // the `rampart_miss_u64` one.
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .key(key_fn(|_: &u64| Some(fresh_key())))
        .max_bytes(STEADY_BYTES)
        .build()
        .expect("valid cache");
    let store = layer.store();
    let lifetimes = Lifetimes::ttl(Duration::from_secs(3600));
    let entry = || {
        CacheEntry::new(
            7u64,
            Timing::new(tokio::time::Instant::now(), lifetimes),
            56,
        )
    };
    for _ in 0..100_000 {
        let _ = store.put(CacheKey::from(fresh_key()), entry());
    }
    g.bench_function("rampart_store_put", |b| {
        b.iter(
            || match store.put(CacheKey::from(black_box(fresh_key())), entry()) {
                StoreOp::Ready(Ok(())) => {}
                _ => refused(),
            },
        )
    });

    let mut svc = bare_http(body.clone());
    g.bench_function("bare_http", |b| {
        b.iter_batched(
            summary_request,
            |req| ok(call_now(&mut svc, &mut cx, req)),
            BatchSize::SmallInput,
        )
    });
    let mut svc = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(3600))
        .max_bytes(STEADY_BYTES)
        .build()
        .expect("valid cache")
        .layer(bare_http(body));
    let fresh_request = || {
        Request::get(format!("{SUMMARY}&n={}", fresh_key()))
            .body(())
            .expect("valid request")
    };
    for _ in 0..20_000 {
        ok(call_now(&mut svc, &mut cx, fresh_request()));
    }
    g.bench_function("rampart_miss_http", |b| {
        b.iter_batched(
            fresh_request,
            |req| {
                let res = ok(call_now(&mut svc, &mut cx, req));
                debug_assert_eq!(res.headers()["x-cache"], "MISS");
                res
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The 64 hot keys, spread over both threads.
fn hot_key(t: u64, i: u64) -> u64 {
    (t * 32 + i) % 64
}

/// The request that stands for "a key never seen" in the mixed rows.
const FRESH: u64 = u64::MAX;

/// Seven hits on the hot keys, then a miss.
fn mostly_hot(t: u64, i: u64) -> u64 {
    if i % 8 == 7 { FRESH } else { hot_key(t, i) }
}

/// `cache/contention_2_threads`.
pub(crate) fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("cache/contention_2_threads");
    let hits = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .key(key_fn(|n: &u64| Some(*n)))
        .build()
        .expect("valid cache")
        .layer(bare_u64());
    parallel(vec![hits.clone()], 64, hot_key); // store the hot keys
    let misses = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .key(key_fn(|_: &u64| Some(fresh_key())))
        .max_bytes(STEADY_BYTES)
        .build()
        .expect("valid cache")
        .layer(bare_u64());
    parallel(vec![misses.clone()], 100_000, hot_key); // fill it
    let mixed = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .key(key_fn(|n: &u64| {
            Some(if *n == FRESH { fresh_key() } else { *n })
        }))
        .max_bytes(STEADY_BYTES)
        .build()
        .expect("valid cache")
        .layer(bare_u64());
    parallel(vec![mixed.clone()], 100_000, |_, _| FRESH); // fill it
    parallel(vec![mixed.clone()], 64, hot_key); // then store the hot keys
    let moka: moka::sync::Cache<u64, Arc<u64>> = moka::sync::Cache::new(10_000);
    for k in 0..64 {
        moka.insert(k, Arc::new(k));
    }
    let moka_svc = service_fn(move |k: u64| ready(moka.get(&k).map(|v| *v).ok_or(())));
    let bare = bare_u64();

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
            parallel(vec![bare.clone(); threads], iters, hot_key)
        });
    }
    for threads in [1, 2] {
        row("moka_get", threads, &|iters| {
            parallel(vec![moka_svc.clone(); threads], iters, hot_key)
        });
    }
    for threads in [1, 2] {
        row("rampart_hit", threads, &|iters| {
            parallel(vec![hits.clone(); threads], iters, hot_key)
        });
    }
    for threads in [1, 2] {
        row("rampart_miss", threads, &|iters| {
            parallel(vec![misses.clone(); threads], iters, hot_key)
        });
    }
    for threads in [1, 2] {
        row("rampart_7_hits_1_miss", threads, &|iters| {
            parallel(vec![mixed.clone(); threads], iters, mostly_hot)
        });
    }
    g.finish();
}
