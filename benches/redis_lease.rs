//! Leased mode (#20) against exact mode: one hot global key across 4 replicas (4 backends, each
//! with its own connection, in this process) on one local `redis-server` started for the bench.
//!
//! - `redis_lease/exact` and `redis_lease/leased`: 4 replicas x 4 concurrent clients deciding the
//!   same global key as fast as they can, with a quota far above the load (every decision is an
//!   admission). Throughput is in decisions, so criterion reports decisions per second in total.
//! - `redis_lease/leased_binding`: the same with a quota of 200,000 a second, far below the load:
//!   the row that shows over-admission, if any.
//!
//! After each row the bench prints the decisions it made (warm-up included), the Redis commands
//! they cost (`EVALSHA` + `EVAL` from `INFO commandstats`, before and after) and commands per
//! decision, and for the binding row the admissions against what exact counting allows, span by
//! measured span (each `iter_custom` call: burst + rate x its length; the time criterion spends
//! between spans, when the quota accrues unused, is not counted), with the worst span's excess
//! beside the stated bound (1.25 leases per replica).
//!
//! Run: `cargo bench --bench rampart -- redis_lease`

#![allow(clippy::cast_precision_loss)]

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::LeaseConfig;
use tower_rampart::rate_limit::{Ask, Check, Quota, RateLimitLayer, RateLimitStore, StoreLimits};

use crate::redis::redis_server::RedisServer;

const REPLICAS: usize = 4;
const CLIENTS_PER_REPLICA: usize = 4;

/// Decisions and admissions made by a row, and when its first and last decisions were made.
#[derive(Default)]
struct Count {
    decisions: AtomicU64,
    admitted: AtomicU64,
}

/// Runs `iters` decisions spread over the replicas' clients; the time they took.
async fn run<St>(stores: &[Arc<St>], iters: u64, count: &Arc<Count>) -> Duration
where
    St: RateLimitStore<()> + StoreLimits + 'static,
{
    let clients = (REPLICAS * CLIENTS_PER_REPLICA) as u64;
    let each = iters.div_ceil(clients);
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients as usize)
        .map(|c| {
            let store = Arc::clone(&stores[c % REPLICAS]);
            let count = Arc::clone(count);
            tokio::spawn(async move {
                let mut admitted = 0u64;
                for i in 0..each {
                    let d = match store.check(&(), &Ask::new(store.limit_set())) {
                        Check::Ready(r) => r,
                        Check::Pending(f) => f.await,
                    }
                    .expect("no backend error while benchmarking");
                    admitted += u64::from(d.is_allowed());
                    // A server's clients yield between requests: so do these, now and then.
                    if i % 256 == 255 {
                        tokio::task::yield_now().await;
                    }
                }
                count.decisions.fetch_add(each, Ordering::Relaxed);
                count.admitted.fetch_add(admitted, Ordering::Relaxed);
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a client task panicked");
    }
    start.elapsed()
}

fn commands(server: &RedisServer) -> u64 {
    server.calls("evalsha") + server.calls("eval")
}

pub(crate) fn lease(c: &mut Criterion) {
    let Some((server, rt)) = crate::redis::redis_group("redis_lease") else {
        return;
    };
    let backends: Vec<RedisBackend> = rt.block_on(async {
        let mut out = Vec::new();
        for _ in 0..REPLICAS {
            let b = RedisBackend::connect(&server.url())
                .await
                .expect("connect to the bench redis-server");
            out.push(b.timeout(Duration::from_millis(200)));
        }
        out
    });
    let open = Quota::per_second(100_000_000);
    let binding = Quota::per_second(200_000);

    let mut g = c.benchmark_group("redis_lease");
    g.throughput(Throughput::Elements(1));
    g.sample_size(10);

    // Exact mode: one round trip per decision.
    let exact: Vec<_> = backends
        .iter()
        .map(|b| {
            let layer = RateLimitLayer::builder()
                .name("hot")
                .quota(open)
                .backend(b.clone().prefix("bench-exact"))
                .build()
                .expect("valid configuration");
            Arc::new(layer.store().clone())
        })
        .collect();
    row(&mut g, &rt, &server, "exact", &exact, None);

    for (id, quota, prefix) in [
        ("leased", open, "bench-leased"),
        ("leased_binding", binding, "bench-binding"),
    ] {
        let leased: Vec<_> = backends
            .iter()
            .map(|b| {
                let layer = RateLimitLayer::builder()
                    .name("hot")
                    .quota(quota)
                    .backend(b.clone().prefix(prefix).leased(LeaseConfig::new()))
                    .build()
                    .expect("valid configuration");
                Arc::new(layer.store().clone())
            })
            .collect();
        // The stated bound beyond exact over any window: 1.25 leases per replica.
        let held_bound = REPLICAS as u64 * (leased[0].max_lease_units() * 5 / 4);
        let binding = (id == "leased_binding").then_some((quota, held_bound));
        let admitted = row(&mut g, &rt, &server, id, &leased, binding);
        let carved: u64 = leased.iter().map(|s| s.leased_units()).sum();
        let held: u64 = leased.iter().map(|s| s.held_units(&())).sum();
        let stranded: u64 = leased.iter().map(|s| s.stranded_units()).sum();
        let calls: u64 = leased.iter().map(|s| s.lease_calls()).sum();
        println!(
            "redis_lease/{id}: {calls} lease calls carved {carved} units in Redis: {admitted} \
             admitted, {held} held, {stranded} stranded (admitted <= carved: {})",
            admitted <= carved
        );
    }
    g.finish();
}

/// One row: benchmarks `stores`, then prints what it cost in Redis commands and, for a binding
/// quota (with the stated bound beyond exact over any window), admissions against exact counting
/// over the measured spans only (criterion's `iter_custom` calls, warm-up included; not the time
/// criterion spends between them).
fn row<St>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    server: &RedisServer,
    id: &str,
    stores: &[Arc<St>],
    binding: Option<(Quota, u64)>,
) -> u64
where
    St: RateLimitStore<()> + StoreLimits + 'static,
{
    let count = Arc::new(Count::default());
    let before = commands(server);
    let started = Instant::now();
    // Each measured span and the admissions made in it.
    let spans = RefCell::new(Vec::new());
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let before = count.admitted.load(Ordering::Relaxed);
            let span = rt.block_on(run(stores, iters, &count));
            let admitted = count.admitted.load(Ordering::Relaxed) - before;
            spans.borrow_mut().push((span, admitted));
            span
        });
    });
    let spans = spans.into_inner();
    let elapsed = started.elapsed();
    let cmds = commands(server) - before;
    let decisions = count.decisions.load(Ordering::Relaxed);
    let admitted = count.admitted.load(Ordering::Relaxed);
    println!(
        "redis_lease/{id}: {decisions} decisions ({admitted} admitted) in {elapsed:.2?}, \
         {cmds} redis commands: {:.5} commands per decision ({:.3}%)",
        cmds as f64 / decisions as f64,
        100.0 * cmds as f64 / decisions as f64
    );
    if let Some((q, held_bound)) = binding {
        // Exact mode (GCRA) admits at most burst + rate x length in any span of that length; a
        // leased span may also admit the units held in leases at its start (the stated bound).
        let burst = u64::from(q.burst_size());
        let rate = f64::from(q.limit()) / q.period().as_secs_f64();
        let exact = |span: Duration| burst + (rate * span.as_secs_f64()).ceil() as u64;
        let measured: Duration = spans.iter().map(|(span, _)| *span).sum();
        let beyond = spans
            .iter()
            .map(|&(span, admitted)| admitted.saturating_sub(exact(span)))
            .max()
            .unwrap_or(0);
        let worst = spans
            .iter()
            .map(|&(span, admitted)| admitted as f64 / exact(span) as f64)
            .fold(0.0, f64::max);
        println!(
            "redis_lease/{id}: admitted {admitted} in {measured:.2?} measured over {} spans \
             ({:.0}/s against the quota's {rate:.0}/s); busiest span admitted {:.3} x exact \
             mode's allowance (burst + rate x span); most beyond it in one span {beyond} \
             (stated bound {held_bound})",
            spans.len(),
            admitted as f64 / measured.as_secs_f64(),
            worst
        );
    }
    admitted
}
