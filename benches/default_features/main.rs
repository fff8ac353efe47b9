//! Instructions per call of every layer's default configuration, built as a user's app builds
//! the library by default (see `Cargo.toml` here): the `instructions` bench's `u64` rows without
//! the features and the test clock that the root package's benches cannot leave out.
//!
//! Run with `cargo run --release` in this directory (add a row's name, or part of it, to run
//! only those; `INSTRUCTIONS_CALLS=<N>` sets N, default 20,000; `INSTRUCTIONS_ONLY=1` skips
//! criterion's times). Needs `valgrind`. Times are criterion's mean over all its samples of the
//! same loop, run natively, as in the `instructions` bench.

use std::time::{Duration, Instant};

use criterion::Criterion;

use tower::{Layer, Service};
use tower_rampart::cache::CacheLayer;
use tower_rampart::circuit_breaker::CircuitBreakerLayer;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::RateLimitLayer;
use tower_rampart::retry::RetryLayer;

#[allow(dead_code)]
#[path = "../support.rs"]
mod support;

#[path = "../callgrind.rs"]
mod callgrind;

use callgrind::Run;
use support::{HUGE, bare_u64, call_now, noop_cx, refused, rl_cb_retry_u64};

/// A `u64` service driven `n` times.
fn u64_run<S>(mut svc: S) -> Run
where
    S: Service<u64> + 'static,
{
    let mut cx = noop_cx();
    Box::new(move |n| {
        for i in 0..n {
            match call_now(&mut svc, &mut cx, std::hint::black_box(i)) {
                Ok(v) => drop(std::hint::black_box(v)),
                Err(_) => refused(),
            }
        }
    })
}

/// A row: its name and how to set it up.
type Row = (&'static str, fn() -> Run);

/// The rows: each as the `instructions` bench sets up its row of the same name.
fn rows() -> Vec<Row> {
    vec![
        ("u64/bare", || u64_run(bare_u64())),
        ("u64/rampart_rate_limit_global", || {
            let layer = RateLimitLayer::builder()
                .quota(HUGE)
                .build()
                .expect("valid quota");
            u64_run(layer.layer(bare_u64()))
        }),
        ("u64/rampart_rate_limit_keyed", || {
            let layer = RateLimitLayer::builder()
                .quota(HUGE)
                .key(key_fn(|n: &u64| Some(n % 1024)))
                .build()
                .expect("valid quota");
            u64_run(layer.layer(bare_u64()))
        }),
        ("u64/rampart_breaker_closed", || {
            let layer = CircuitBreakerLayer::builder()
                .build()
                .expect("valid configuration");
            u64_run(layer.layer(bare_u64()))
        }),
        ("u64/rampart_retry", || {
            let layer = RetryLayer::builder().build().expect("valid configuration");
            u64_run(layer.layer(bare_u64()))
        }),
        ("u64/rampart_cache_hit", || {
            let layer = CacheLayer::builder()
                .ttl(Duration::from_secs(3600))
                .key(key_fn(|_: &u64| Some(7u64)))
                .build()
                .expect("valid cache");
            u64_run(layer.layer(bare_u64()))
        }),
        ("u64/rampart_stack_rl_cb_retry", || {
            u64_run(rl_cb_retry_u64())
        }),
    ]
}

fn main() {
    // Entered for the life of the process, as a server's code runs inside a runtime.
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("tokio runtime"),
    ));
    std::mem::forget(rt.enter());
    if let Some((name, n)) = callgrind::child_spec() {
        let (_, setup) = rows()
            .into_iter()
            .find(|(row, _)| *row == name)
            .unwrap_or_else(|| panic!("no row {name:?}"));
        let mut run = setup();
        run(1_000);
        callgrind::rampart_measured_calls(&mut *run, n);
        return;
    }
    let filter = std::env::args().nth(1);
    let selected: Vec<_> = rows()
        .into_iter()
        .enumerate()
        .filter(|(i, (name, _))| *i == 0 || filter.as_deref().is_none_or(|f| name.contains(f)))
        .map(|(_, row)| row)
        .collect();
    let n: u64 = std::env::var("INSTRUCTIONS_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let times: Vec<Option<f64>> = if std::env::var_os("INSTRUCTIONS_ONLY").is_some() {
        vec![None; selected.len()]
    } else {
        criterion_times(&selected)
    };
    let counts: Vec<f64> = selected
        .iter()
        .map(|(name, _)| callgrind::per_call(name, n))
        .collect();
    println!(
        "\ninstructions per call, default features: (I(2N) - I(N)) / N under callgrind, N = {n}; times: criterion, same run"
    );
    println!("| scenario | instructions/call | added | ns/call | added ns |");
    println!("|---|---:|---:|---:|---:|");
    for (i, (name, _)) in selected.iter().enumerate() {
        let added = if i == 0 {
            String::new()
        } else {
            format!("{:+.0}", counts[i] - counts[0])
        };
        let (t, added_t) = match (times[i], times[0]) {
            (Some(t), _) if i == 0 => (format!("{t:.1}"), String::new()),
            (Some(t), Some(b)) => (format!("{t:.1}"), format!("{:+.1}", t - b)),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "| `{name}` | {:.0} | {added} | {t} | {added_t} |",
            counts[i]
        );
    }
}

/// Criterion's mean time per call of each row, in nanoseconds (over all of its samples).
fn criterion_times(rows: &[Row]) -> Vec<Option<f64>> {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    rows.iter()
        .map(|(name, setup)| {
            let mut run = setup();
            let (mut calls, mut total) = (0u64, Duration::ZERO);
            c.bench_function(&format!("default_features/{name}"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    run(iters);
                    let took = start.elapsed();
                    calls += iters;
                    total += took;
                    took
                });
            });
            Some(total.as_nanos() as f64 / calls.max(1) as f64)
        })
        .collect()
}
