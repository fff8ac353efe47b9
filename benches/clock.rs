//! What reading the time costs: the floor under every limiter that takes time from tokio.

use std::hint::black_box;

use criterion::Criterion;
use tower_rampart::clock::{Clock, ManualClock, TokioClock};

/// `std` and tokio instants against the crate's clocks, same run.
pub(crate) fn clocks(c: &mut Criterion) {
    let mut g = c.benchmark_group("clock");
    g.bench_function("std_instant_now", |b| b.iter(std::time::Instant::now));
    g.bench_function("tokio_instant_now", |b| b.iter(tokio::time::Instant::now));
    let tokio_clock = TokioClock::new();
    g.bench_function("tokio_clock_now", |b| {
        b.iter(|| black_box(&tokio_clock).now())
    });
    let manual = ManualClock::new();
    g.bench_function("manual_clock_now", |b| b.iter(|| black_box(&manual).now()));
    g.finish();
}
