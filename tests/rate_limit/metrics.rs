//! The `metrics` feature: refusals are counted as `rampart_rate_limit_rejected_total`, labelled by
//! limiter and reason.

use std::task::{Context, Poll, Waker};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshot};
use tower::{Layer, Service};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};

use crate::support::Counting;

/// A counter's name, labels and value.
type Counted = (String, Vec<(String, String)>, u64);

/// Builds a limiter named `name` on `quota`, keyed by the request (no key for 0), under a local
/// recorder; runs `script` with a function that sends one request through it and says whether it
/// was admitted; and returns what the recorder holds.
fn recorded(
    name: &'static str,
    quota: Quota,
    script: impl FnOnce(&mut dyn FnMut(u32) -> bool),
) -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let layer = RateLimitLayer::builder()
            .name(name)
            .quota(quota)
            .key(key_fn(|n: &u32| (*n > 0).then_some(*n)))
            .build()
            .unwrap();
        let mut svc = layer.layer(Counting::default());
        let mut cx = Context::from_waker(Waker::noop());
        script(&mut |n: u32| {
            assert!(Service::<u32>::poll_ready(&mut svc, &mut cx).is_ready());
            let mut fut = std::pin::pin!(svc.call(n));
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(r) => r.is_ok(),
                Poll::Pending => panic!("the in-memory path is synchronous"),
            }
        });
    });
    snapshotter.snapshot()
}

#[test]
fn refusals_are_counted_by_limiter_and_reason() {
    let snapshot = recorded("uploads", Quota::per_hour(2), |send| {
        assert!(send(1) && send(1));
        assert!(!send(1) && !send(1) && !send(1));
        assert!(!send(0), "no key: refused");
    });
    let counts: Vec<Counted> = snapshot
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                let labels = key
                    .key()
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                Some((key.key().name().to_owned(), labels, n))
            }
            _ => None,
        })
        .collect();
    let find = |reason: &str| {
        counts
            .iter()
            .find(|(name, labels, _)| {
                name == "rampart_rate_limit_rejected_total"
                    && labels.contains(&("name".into(), "uploads".into()))
                    && labels.contains(&("reason".into(), reason.into()))
            })
            .map(|(_, _, n)| *n)
    };
    assert_eq!(find("rate_limited"), Some(3), "{counts:?}");
    assert_eq!(find("key_missing"), Some(1), "{counts:?}");
}

/// Issue #19: admissions are counted too, so a dashboard can show the share refused.
#[test]
fn admissions_are_counted_by_limiter() {
    let snapshot = recorded("search", Quota::per_hour(3), |send| {
        // Three admitted on key 1, one refused; two admitted on key 2.
        assert!(send(1) && send(1) && send(1));
        assert!(!send(1));
        assert!(send(2) && send(2));
        assert!(!send(0), "no key: refused, not admitted");
    });
    let snapshot = snapshot.into_hashmap();
    let admitted: Vec<(Vec<(String, String)>, u64)> = snapshot
        .iter()
        .filter(|(key, _)| key.key().name() == "rampart_rate_limit_admitted_total")
        .map(|(key, (_, _, value))| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            match value {
                DebugValue::Counter(n) => (labels, *n),
                other => panic!("admissions are a counter, not {other:?}"),
            }
        })
        .collect();
    assert_eq!(
        admitted,
        vec![(vec![("name".to_owned(), "search".to_owned())], 5)],
        "one series per limiter, every admission counted"
    );
    // Described with its unit when the layer was built.
    let described = snapshot
        .iter()
        .find(|(key, _)| key.key().name() == "rampart_rate_limit_admitted_total")
        .map(|(_, (unit, description, _))| (*unit, description.clone()))
        .expect("the series exists");
    assert_eq!(described.0, Some(metrics::Unit::Count));
    assert!(described.1.is_some_and(|d| d.contains("admitted")));
}
