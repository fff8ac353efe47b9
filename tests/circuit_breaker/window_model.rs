//! The closed-state trip rules against a reference model: a `VecDeque` of the last `window`
//! outcomes and a count of failures in a row.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tower::Layer;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::{Upstream, call};

/// The call (0-based) at which the model opens the circuit, if any.
fn model_opens_at(
    outcomes: &[bool],
    window: usize,
    minimum: usize,
    rate: Option<f64>,
    consecutive: Option<u32>,
) -> Option<usize> {
    let rate = if rate.is_none() && consecutive.is_none() {
        Some(0.5)
    } else {
        rate
    };
    let mut last: VecDeque<bool> = VecDeque::new();
    let mut in_a_row = 0;
    for (i, &failed) in outcomes.iter().enumerate() {
        last.push_back(failed);
        if last.len() > window {
            last.pop_front();
        }
        in_a_row = if failed { in_a_row + 1 } else { 0 };
        let failures = last.iter().filter(|f| **f).count();
        let by_rate =
            rate.is_some_and(|r| last.len() >= minimum && failures as f64 >= r * last.len() as f64);
        let by_streak = consecutive.is_some_and(|n| in_a_row >= n);
        if by_rate || by_streak {
            return Some(i);
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Windows from 1 to 300 calls: from 16 calls up, successes after the window first fills are
    /// batched per thread (see `window.rs`), so this also checks that batching never changes a
    /// decision.
    #[test]
    fn count_window_trips_exactly_when_the_model_does(
        window in prop_oneof![1usize..20, 16usize..300],
        minimum_fraction in 0.0f64..1.0,
        rate in prop::option::of(0.05f64..=1.0),
        consecutive in prop::option::of(1u32..6),
        runs in prop::collection::vec((1usize..40, prop::bool::weighted(0.4)), 1..40),
    ) {
        // Runs of successes and failures: the failure rate wanders across the threshold, so when
        // the circuit opens depends on exactly which calls the window holds.
        let outcomes: Vec<bool> = runs
            .iter()
            .flat_map(|&(len, failed)| std::iter::repeat_n(failed, len))
            .collect();
        let minimum = 1 + ((window - 1) as f64 * minimum_fraction) as usize;
        let mut builder = CircuitBreakerLayer::builder().window(window as u32).minimum_calls(minimum as u32);
        if let Some(r) = rate { builder = builder.failure_rate(r); }
        if let Some(n) = consecutive { builder = builder.consecutive_failures(n); }
        let layer = builder.build().unwrap();
        let handle = layer.handle();
        let upstream = Upstream::default();
        let mut svc = layer.layer(upstream.service());
        let expected = model_opens_at(&outcomes, window, minimum, rate, consecutive);
        let mut opened_at = None;
        futures::executor::block_on(async {
            for (i, &failed) in outcomes.iter().enumerate() {
                upstream.fail(failed);
                let _ = call(&mut svc).await;
                if handle.state() == CircuitState::Open {
                    opened_at = Some(i);
                    break;
                }
            }
        });
        prop_assert_eq!(opened_at, expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The time window against a log of (time, failed): its counts are the calls whose time slice
    /// is one of the last `buckets` slices.
    #[test]
    fn time_window_trips_exactly_when_the_model_does(
        buckets in 1u32..12,
        slice_ms in 1u64..500,
        minimum in 1u32..8,
        rate in 0.05f64..=1.0,
        calls in prop::collection::vec((0u64..700, prop::bool::weighted(0.35)), 1..80),
    ) {
        let width = slice_ms * 1_000_000;
        let span = Duration::from_nanos(width * u64::from(buckets));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
                let layer = CircuitBreakerLayer::builder()
                    .failure_rate(rate)
                    .time_window(span, buckets)
                    .minimum_calls(minimum)
                    .build()
                    .unwrap();
                let handle = layer.handle();
                let upstream = Upstream::default();
                let mut svc = layer.layer(upstream.service());
                let start = tokio::time::Instant::now();
                let mut log: Vec<(u64, bool)> = Vec::new();
                let mut model_open = false;
                for (gap_ms, failed) in calls {
                    tokio::time::advance(Duration::from_millis(gap_ms)).await;
                    let t = start.elapsed().as_nanos() as u64;
                    upstream.fail(failed);
                    let _ = call(&mut svc).await;
                    log.push((t, failed));
                    // On paused time the breaker's clock epoch (taken when the layer was built) is
                    // `start`, so the model's slices are the breaker's.
                    let current = t / width;
                    let in_span: Vec<bool> = log
                        .iter()
                        .filter(|(at, _)| at / width + u64::from(buckets) > current)
                        .map(|(_, f)| *f)
                        .collect();
                    let failures = in_span.iter().filter(|f| **f).count() as f64;
                    if in_span.len() as u32 >= minimum && failures >= rate * in_span.len() as f64 {
                        model_open = true;
                    }
                    prop_assert_eq!(handle.state() == CircuitState::Open, model_open, "at {} ns", t);
                    if model_open {
                        break;
                    }
                }
                Ok::<(), TestCaseError>(())
        })?;
    }
}
