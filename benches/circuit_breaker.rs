//! Circuit breaker overhead, measured against a bare service in the same run.
//!
//! - `circuit_breaker/closed`: the path every call takes while the upstream is healthy, one thread.
//!   Rows: the default configuration (failure rate over a count window of 100 calls), consecutive
//!   failures only, with slow-call detection (two clock reads per call), and a time-based window
//!   (one clock read per call).
//! - `circuit_breaker/open`: refusing while open. Rows: the default error mode (a boxed
//!   `CircuitOpen`), with a fallback value (no allocation), and forced open.
//! - `circuit_breaker/contention_2_threads`: one circuit shared by one or two threads, each thread
//!   owning a clone of the service; per-call latency while the other thread runs too (see
//!   `rate_limit/contention_2_threads` for the method). The `unshared` row gives each thread a
//!   circuit of its own: as well as two threads can scale on the machine.
//! - `circuit_breaker/shared_closed`: the closed path of a circuit shared through Redis
//!   (`.backend(redis)`, [#8]) next to the in-memory one and a bare service. Starts its own
//!   `redis-server` (skipped with a printed reason without one); the sync task runs on a runtime
//!   thread while the bench thread calls. Prints the script calls Redis ran during the row, from
//!   `INFO commandstats`: the sync traffic only, about one per sync interval, whatever the number
//!   of calls.
//!
//! [#8]: https://github.com/tower-rampart/tower-rampart/issues/8

use std::hint::black_box;
use std::time::Duration;

use criterion::Criterion;
use tower::Layer;
use tower_rampart::circuit_breaker::CircuitBreakerLayer;

use crate::redis::redis_server;

use crate::support::{bare_u64, call_now, noop_cx, parallel};

/// The value of a call that went through; anything else stops the run.
#[inline]
fn passed<T, E>(res: Result<T, E>) -> T {
    match res {
        Ok(v) => v,
        Err(_) => unexpected("a call through a closed circuit failed"),
    }
}

/// The error of a refused call; a call that went through stops the run.
#[inline]
fn refused_err<T, E>(res: Result<T, E>) -> E {
    match res {
        Ok(_) => unexpected("a call went through an open circuit"),
        Err(e) => e,
    }
}

#[cold]
#[inline(never)]
fn unexpected(what: &str) -> ! {
    panic!("{what}; the benchmark measures something else than it says")
}

/// The default configuration, named.
fn default_layer() -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name("bench")
        .build()
        .expect("valid configuration")
}

/// `circuit_breaker/closed`: calls through a closed circuit, one thread.
pub(crate) fn closed(c: &mut Criterion) {
    // The clock is tokio's: enter a runtime as a server would be in.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("circuit_breaker/closed");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = default_layer().layer(bare_u64());
    g.bench_function("rampart_count_window", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(5)
        .build()
        .expect("valid configuration");
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_consecutive_only", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = CircuitBreakerLayer::builder()
        .slow_calls(Duration::from_secs(2), 0.5)
        .failure_rate(0.5)
        .build()
        .expect("valid configuration");
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_count_window_slow_calls", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = CircuitBreakerLayer::builder()
        .time_window(Duration::from_secs(60), 60)
        .build()
        .expect("valid configuration");
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_time_window", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    g.finish();
}

/// `circuit_breaker/open`: refusals, one thread.
pub(crate) fn open(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("circuit_breaker/open");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    // Opened by failures, with a wait far longer than any run: the clock is read to tell.
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(24 * 3600))
        .build()
        .expect("valid configuration");
    let mut failing = layer.layer(tower::service_fn(|_: u64| {
        std::future::ready(Err::<u64, tower_rampart::BoxError>("down".into()))
    }));
    let _ = call_now(&mut failing, &mut cx, 0);
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_open_error", |b| {
        b.iter(|| refused_err(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(24 * 3600))
        .fallback(|_| 0u64)
        .build()
        .expect("valid configuration");
    let mut failing = layer.layer(tower::service_fn(|_: u64| {
        std::future::ready(Err::<u64, tower_rampart::BoxError>("down".into()))
    }));
    let _ = call_now(&mut failing, &mut cx, 0);
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_open_fallback", |b| {
        b.iter(|| {
            let v = passed(call_now(&mut svc, &mut cx, black_box(7)));
            if v != 0 {
                unexpected("the upstream answered through an open circuit");
            }
        });
    });

    let layer = default_layer();
    layer.handle().force_open();
    let mut svc = layer.layer(bare_u64());
    g.bench_function("rampart_forced_open_error", |b| {
        b.iter(|| refused_err(call_now(&mut svc, &mut cx, black_box(7))));
    });

    g.finish();
}

/// Every thread's request is the same: the circuit has no keys.
fn any(_: u64, i: u64) -> u64 {
    i
}

/// `circuit_breaker/contention_2_threads`: one circuit, one thread or two.
pub(crate) fn contention(c: &mut Criterion) {
    let mut g = c.benchmark_group("circuit_breaker/contention_2_threads");
    let bare = bare_u64();
    let shared = default_layer().layer(bare_u64());
    let unshared = [
        default_layer().layer(bare_u64()),
        default_layer().layer(bare_u64()),
    ];
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
            parallel(vec![bare.clone(); threads], iters, any)
        });
    }
    for threads in [1, 2] {
        row("rampart_shared_circuit", threads, &|iters| {
            parallel(vec![shared.clone(); threads], iters, any)
        });
    }
    row("rampart_unshared_circuits", 2, &|iters| {
        parallel(unshared.to_vec(), iters, any)
    });
    g.finish();
}

/// `circuit_breaker/shared_closed`: calls through a closed circuit shared through Redis.
pub(crate) fn shared_closed(c: &mut Criterion) {
    let Some(server) = redis_server::RedisServer::start() else {
        println!(
            "circuit_breaker/shared_closed: skipped, no redis-server (apt-get install redis-server)"
        );
        return;
    };
    // One worker thread runs the sync task; the bench thread calls (a server's request threads).
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let interval = Duration::from_millis(250);
    let backend = rt.block_on(async {
        tower_rampart::backend::RedisBackend::connect(&server.url())
            .await
            .expect("connect to the bench redis-server")
            .prefix("bench")
            .timeout(Duration::from_secs(1))
    });
    let shared = CircuitBreakerLayer::builder()
        .name("bench")
        .backend(backend)
        .sync_interval(interval)
        .build()
        .expect("valid configuration");
    let handle = shared.handle();
    rt.block_on(async {
        for _ in 0..500 {
            if handle.is_following_shared() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the shared circuit did not follow Redis within 5 s");
    });
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("circuit_breaker/shared_closed");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = default_layer().layer(bare_u64());
    g.bench_function("rampart_in_memory", |b| {
        b.iter(|| passed(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = shared.layer(bare_u64());
    let script_calls = || server.calls("evalsha") + server.calls("eval");
    let before = script_calls();
    let started = std::time::Instant::now();
    let mut calls = 0u64;
    g.bench_function("rampart_shared_redis", |b| {
        b.iter(|| {
            calls += 1;
            passed(call_now(&mut svc, &mut cx, black_box(7)))
        });
    });
    let elapsed = started.elapsed();
    let syncs = script_calls() - before;
    // Nothing to say when the row was filtered out.
    if calls > 0 {
        println!(
            "circuit_breaker/shared_closed: {calls} calls in {elapsed:.1?}: {syncs} script calls in \
         Redis (one per {interval:?} sync interval would be {}); following: {}",
            elapsed.as_millis() / interval.as_millis(),
            handle.is_following_shared()
        );
    }
    g.finish();
}
