//! Cache hits served from Redis, against a raw `GET` of the same bytes in the same run.
//!
//! Starts its own `redis-server` on a free loopback port (never the machine's 6379); without one
//! the group is skipped with a printed reason.
//!
//! - `redis_cache_hit/raw_get/N`: N concurrent `GET`s of the stored entry's key, straight through
//!   a `ConnectionManager`: the ceiling (the same bytes over the same kind of connection). Each
//!   also builds and drops the request a hit would answer, as the `layer` rows build it: a server
//!   makes that request whether or not a cache answers it, so the rows differ by the layer's work
//!   alone.
//! - `redis_cache_hit/layer/N`: N concurrent requests through an HTTP `CacheLayer` on a
//!   `RedisBackend`, each a hit on a 1 KiB response with a few headers: the request (built as a
//!   server would hand it over), the key, the `GET` with its timeout and health bookkeeping, the
//!   entry (decoded, or the same bytes recognised), the freshness check and the replayed response
//!   with `x-cache` and `age`.
//!
//! Each request of an iteration runs on its own task, as a server runs them (one task polling
//! all N would put every request's work on one thread).
//!
//! Throughput is in elements, so criterion reports requests per second; compare each `layer` row
//! with `raw_get` at the same N (the target: at least 80% of it). At N = 1 the time per
//! iteration is the latency of one hit.
//!
//! Criterion measures one row after the other, so load from anything else on the machine can
//! favour either. The group then prints a second comparison that does not depend on that:
//! `redis_cache_hit interleaved N=..`, N workers each sending one request after another, raw and
//! layer in alternating 250 ms slices for 3 s each, with requests per second, p50 and p99 latency
//! and the layer's share of the raw throughput.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, ServiceExt};
use tower_rampart::backend::RedisBackend;
use tower_rampart::cache::{CacheKey, CacheLayer};

pub(crate) fn hit(c: &mut Criterion) {
    let Some((server, rt)) = crate::redis::redis_group("redis_cache_hit") else {
        return;
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let body = Bytes::from(vec![b'x'; 1024]);
    let inner = tower::service_fn(move |_: Request<()>| {
        counted.fetch_add(1, Ordering::Relaxed);
        let body = body.clone();
        async move {
            let res = Response::builder()
                .header("content-type", "application/json")
                .header("etag", "\"33a64df551425fcc55e4d42a148795d9f25f89d4\"")
                .header("last-modified", "Sat, 21 Feb 2026 12:00:00 GMT")
                .header("vary", "accept-encoding")
                .body(Full::new(body))
                .expect("a valid response");
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let (svc, raw, name) = rt.block_on(async {
        let backend = RedisBackend::connect(&server.url())
            .await
            .expect("connect to the bench redis-server")
            .prefix("bench")
            .timeout(Duration::from_secs(1));
        let layer = CacheLayer::builder()
            .http()
            .key(tower_rampart::cache::HttpKey::new().header(http::header::ACCEPT_ENCODING))
            .name("bench")
            .ttl(Duration::from_secs(3600))
            .backend(backend)
            .build()
            .expect("valid configuration");
        let store = layer.store().clone();
        let svc = layer.layer(inner);
        // The miss that stores the entry, then wait for its write.
        let res = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(res.headers()["x-cache"], "MISS");
        let client = redis::Client::open(server.url()).unwrap();
        let raw = redis::aio::ConnectionManager::new(client).await.unwrap();
        let name = store.redis_key(&CacheKey::from(
            "GET /api/metrics/summary?type=cpu_usage\naccept-encoding=gzip",
        ));
        for _ in 0..500 {
            let v: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&name)
                .query_async(&mut raw.clone())
                .await
                .unwrap();
            if v.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let res = svc.clone().oneshot(request()).await.unwrap();
        assert_eq!(res.headers()["x-cache"], "HIT");
        (svc, raw, name)
    });
    let entry_len = rt.block_on(async {
        let v: Vec<u8> = redis::cmd("GET")
            .arg(&name)
            .query_async(&mut raw.clone())
            .await
            .unwrap();
        v.len()
    });
    println!("redis_cache_hit: the entry is {entry_len} bytes in Redis (1 KiB body, 4 headers)");

    let mut g = c.benchmark_group("redis_cache_hit");
    for n in [1u64, 16, 64] {
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(BenchmarkId::new("raw_get", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                join_all((0..n).map(|_| {
                    let mut con = raw.clone();
                    let mut cmd = redis::cmd("GET");
                    cmd.arg(&name);
                    tokio::spawn(async move {
                        drop(black_box(request()));
                        let v: redis::Value = cmd.query_async(&mut con).await.expect("get");
                        drop(black_box(v));
                    })
                }))
            });
        });
        g.bench_with_input(BenchmarkId::new("layer", n), &n, |b, &n| {
            b.to_async(&rt).iter(|| {
                join_all((0..n).map(|_| {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let res = svc.oneshot(request()).await.expect("infallible");
                        drop(black_box(res));
                    })
                }))
            });
        });
    }
    g.finish();
    for n in [1usize, 16, 64] {
        let (raw_row, layer_row) = rt.block_on(interleaved(n, &raw, &name, &svc));
        println!(
            "redis_cache_hit interleaved N={n:<2}  raw_get {raw_row}  layer {layer_row}  layer/raw {:.0}%",
            100.0 * layer_row.per_second() / raw_row.per_second()
        );
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        1,
        "every measured request was a hit"
    );
}

/// Requests made in some slices of time, with their latencies.
#[derive(Default)]
struct Row {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Row {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile(&self, q: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort_unstable();
        l[((l.len() - 1) as f64 * q) as usize]
    }
}

impl std::fmt::Display for Row {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.0}/s p50 {:>5.0} µs p99 {:>5.0} µs",
            self.per_second(),
            self.quantile(0.5).as_secs_f64() * 1e6,
            self.quantile(0.99).as_secs_f64() * 1e6
        )
    }
}

/// `n` workers on the runtime, each sending one request after another for `slice`.
async fn run_slice<F, Fut>(n: usize, slice: Duration, one: F, row: &mut Row)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = std::time::Instant::now();
    let workers: Vec<_> = (0..n)
        .map(|_| {
            let one = one.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while start.elapsed() < slice && latencies.len() < 200_000 {
                    let sent = std::time::Instant::now();
                    one().await;
                    latencies.push(sent.elapsed());
                }
                latencies
            })
        })
        .collect();
    for w in workers {
        row.latencies.extend(w.await.expect("a bench worker"));
    }
    row.elapsed += start.elapsed();
}

/// Raw `GET`s and layer hits with `n` workers, in alternating 250 ms slices, 3 s each.
async fn interleaved<S>(
    n: usize,
    raw: &redis::aio::ConnectionManager,
    name: &[u8],
    svc: &S,
) -> (Row, Row)
where
    S: tower::Service<Request<()>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send,
    S::Response: Send,
{
    let raw_one = {
        let raw = raw.clone();
        let name = name.to_vec();
        move || {
            let mut con = raw.clone();
            let mut cmd = redis::cmd("GET");
            cmd.arg(&name);
            async move {
                drop(black_box(request()));
                let v: redis::Value = cmd.query_async(&mut con).await.expect("get");
                drop(black_box(v));
            }
        }
    };
    let layer_one = {
        let svc = svc.clone();
        move || {
            let svc = svc.clone();
            async move {
                drop(black_box(svc.oneshot(request()).await.expect("infallible")));
            }
        }
    };
    let slice = Duration::from_millis(250);
    // Warm up both.
    run_slice(n, slice, raw_one.clone(), &mut Row::default()).await;
    run_slice(n, slice, layer_one.clone(), &mut Row::default()).await;
    let (mut raw_row, mut layer_row) = (Row::default(), Row::default());
    for round in 0..12 {
        if round % 2 == 0 {
            run_slice(n, slice, raw_one.clone(), &mut raw_row).await;
            run_slice(n, slice, layer_one.clone(), &mut layer_row).await;
        } else {
            run_slice(n, slice, layer_one.clone(), &mut layer_row).await;
            run_slice(n, slice, raw_one.clone(), &mut raw_row).await;
        }
    }
    (raw_row, layer_row)
}

fn request() -> Request<()> {
    Request::get("/api/metrics/summary?type=cpu_usage")
        .header("accept-encoding", "gzip")
        .body(())
        .expect("a valid request")
}
