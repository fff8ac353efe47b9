//! Exact delay sequences on paused time, for each kind of jitter, from a seeded generator: the
//! upstream is called at exactly the times the formulas give.

use std::time::Duration;

use tokio::time::Instant;
use tower::Layer;
use tower_rampart::retry::error::LastError;
use tower_rampart::retry::{Backoff, Jitter, RetryLayer};

use crate::{MS, Scripted, call};

const INITIAL: u64 = 100_000_000; // 100 ms, in ns
const CAP: u64 = 1_000_000_000; // 1 s

/// The delays the formulas of AWS's "Exponential Backoff And Jitter" give for `jitter`, drawn from
/// fastrand's generator seeded with `seed`, computed here independently of the crate.
fn expected(jitter: Jitter, seed: u64, retries: usize) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut previous = INITIAL;
    (1..=retries)
        .map(|retry| {
            let base = (INITIAL << (retry - 1)).min(CAP);
            let ns = match jitter {
                Jitter::None => base,
                Jitter::Full => rng.u64(0..=base),
                Jitter::Equal => base / 2 + rng.u64(0..=base - base / 2),
                Jitter::Decorrelated => {
                    let d = rng.u64(INITIAL..=(previous * 3).max(INITIAL)).min(CAP);
                    previous = d;
                    d
                }
            };
            Duration::from_nanos(ns)
        })
        .collect()
}

/// `delays` as tokio's timer sleeps them: rounded up to whole milliseconds.
fn to_timer(delays: &[Duration]) -> Vec<Duration> {
    delays
        .iter()
        .map(|d| Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64))
        .collect()
}

/// The gaps between the upstream's calls.
fn gaps(times: &[Duration]) -> Vec<Duration> {
    times.windows(2).map(|w| w[1] - w[0]).collect()
}

#[tokio::test(start_paused = true)]
async fn every_jitter_kind_gives_the_exact_seeded_sequence() {
    for jitter in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        let layer = RetryLayer::builder()
            .max_attempts(7)
            .exponential_backoff(100 * MS, 2.0, 1000 * MS)
            .jitter(jitter)
            .seed(42)
            .no_budget()
            .build()
            .unwrap();
        let upstream = Scripted::failing();
        let mut svc = layer.layer(upstream.service());
        let start = Instant::now();
        let err = call(&mut svc, 1).await.unwrap_err();
        assert_eq!(err.downcast_ref::<LastError>().unwrap().attempts(), 7);
        // The crate's delays are the formulas', to the nanosecond.
        let backoff = Backoff::exponential(100 * MS, 2.0, 1000 * MS).jitter(jitter);
        let from_iter: Vec<_> = backoff.delays_seeded(42).take(6).collect();
        assert_eq!(from_iter, expected(jitter, 42, 6), "{jitter:?}");
        // The layer waits exactly those, as tokio's timer can: rounded up to its millisecond.
        let got = gaps(&upstream.call_times(start));
        assert_eq!(got, to_timer(&from_iter), "{jitter:?}");
        if jitter == Jitter::None {
            assert_eq!(got, [100, 200, 400, 800, 1000, 1000].map(|n| n * MS));
        }

        // The next request to be retried draws from seed + 1.
        let second = Scripted::failing();
        let mut svc = layer.layer(second.service());
        let start = Instant::now();
        call(&mut svc, 2).await.unwrap_err();
        assert_eq!(
            gaps(&second.call_times(start)),
            to_timer(&expected(jitter, 43, 6)),
            "{jitter:?}, second request"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fixed_backoff_waits_the_same_before_every_retry() {
    let layer = RetryLayer::builder()
        .max_attempts(4)
        .fixed_backoff(250 * MS)
        .no_budget()
        .build()
        .unwrap();
    let upstream = Scripted::new(|n| n < 3);
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    assert_eq!(call(&mut svc, 9).await.unwrap(), 9);
    assert_eq!(
        upstream.call_times(start),
        [0, 250, 500, 750].map(|n| n * MS)
    );
}

#[tokio::test(start_paused = true)]
async fn a_success_or_a_permanent_failure_ends_at_once() {
    let layer = RetryLayer::builder().max_attempts(5).build().unwrap();
    let upstream = Scripted::new(|_| false);
    let mut svc = layer.layer(upstream.service());
    let start = Instant::now();
    assert_eq!(call(&mut svc, 3).await.unwrap(), 3);
    assert_eq!(upstream.calls(), 1);
    assert_eq!(Instant::now() - start, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn one_attempt_means_no_retries_and_no_copies() {
    #[derive(Debug)]
    struct NotClone;
    let layer = RetryLayer::builder().max_attempts(1).build().unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let mut svc = layer.layer(tower::service_fn(move |r: u32| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move { Err::<NotClone, _>(std::io::Error::other(format!("no {r}"))) }
    }));
    let err = call(&mut svc, 5).await.unwrap_err();
    assert_eq!(err.to_string(), "no 5 (after 1 attempt)");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
}
