//! Observability: with the `metrics` feature, retries by reason, exhausted budgets and the causes
//! of giving up, labelled by the layer's name; and a `tracing` event per retry.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::Layer;
use tower_rampart::retry::{Budget, RetryLayer};

use crate::{MS, Scripted, call};

#[test]
fn retries_budget_and_give_ups_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            // 10 retries in the budget: five requests retry twice, the sixth finds it spent.
            let layer = RetryLayer::builder()
                .name("payments")
                .max_attempts(3)
                .fixed_backoff(10 * MS)
                .budget(
                    Budget::new(0.0)
                        .min_per_second(1)
                        .period(Duration::from_secs(10)),
                )
                .build()
                .unwrap();
            let upstream = Scripted::failing();
            let mut svc = layer.layer(upstream.service());
            for i in 0..6 {
                call(&mut svc, i).await.unwrap_err();
            }

            let web = RetryLayer::builder()
                .name("web")
                .fixed_backoff(10 * MS)
                .no_budget()
                .http()
                .build()
                .unwrap();
            let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let c = calls.clone();
            let mut svc = web.layer(tower::service_fn(
                move |_req: http::Request<axum::body::Body>| {
                    let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut res = http::Response::new(Full::new(Bytes::new()));
                    // Calls 0 (POST), 1 (streaming PUT) and 2 (GET) are 503s; 3 (the GET's retry) is fine.
                    if n < 3 {
                        *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    std::future::ready(Ok::<_, std::convert::Infallible>(res))
                },
            ));
            let post = http::Request::post("/")
                .body(axum::body::Body::from("{}"))
                .unwrap();
            let put = http::Request::put("/")
                .body(axum::body::Body::from_stream(futures::stream::iter([
                    Ok::<_, std::io::Error>(Bytes::from_static(b"x")),
                ])))
                .unwrap();
            let get = http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap();
            for req in [post, put, get] {
                call(&mut svc, req).await.unwrap();
            }
        });
    });
    let mut seen: HashMap<String, u64> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let mut labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        if let DebugValue::Counter(n) = value {
            seen.insert(format!("{} {}", key.key().name(), labels.join(",")), n);
        }
    }
    let expected = [
        (
            "rampart_retry_attempts_total name=payments,reason=error",
            10,
        ),
        ("rampart_retry_budget_exhausted_total name=payments", 1),
        (
            "rampart_retry_gave_up_total cause=attempts,name=payments",
            5,
        ),
        ("rampart_retry_gave_up_total cause=budget,name=payments", 1),
        ("rampart_retry_attempts_total name=web,reason=503", 1),
        (
            "rampart_retry_gave_up_total cause=not_idempotent,name=web",
            1,
        ),
        (
            "rampart_retry_gave_up_total cause=not_cloneable,name=web",
            1,
        ),
    ];
    for (name, n) in expected {
        assert_eq!(seen.get(name), Some(&n), "{name} in {seen:#?}");
    }
    assert_eq!(seen.len(), expected.len(), "{seen:#?}");
}

/// A `tracing` event for every retry, with the attempt, the delay and the reason; and one when a
/// request ends without the retry it was worth.
///
/// The subscriber is the process's global default, not a scoped one: a callsite's interest is
/// cached process-wide, and a test on another thread (with no subscriber) hitting the same callsite
/// at the same moment could leave a scoped subscriber without some events. Other tests' events
/// reach the buffer too; only this retrier's lines are read.
#[test]
fn every_retry_is_a_tracing_event_with_attempt_delay_and_reason() {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let out = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .without_time()
        .with_writer(move || out.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber)
        .expect("no other test in this binary sets a global subscriber");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let layer = RetryLayer::builder()
            .name("ledger")
            .max_attempts(3)
            .exponential_backoff(100 * MS, 2.0, Duration::from_secs(1))
            .jitter(tower_rampart::retry::Jitter::None)
            .no_budget()
            .build()
            .unwrap();
        let mut svc = layer.layer(Scripted::failing().service());
        call(&mut svc, 1).await.unwrap_err();
    });
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("retrier=\"ledger\""))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains("retrying retrier=\"ledger\" attempt=1 delay=100ms reason=error"),
        "{text}"
    );
    assert!(
        lines[1].contains("retrying retrier=\"ledger\" attempt=2 delay=200ms reason=error"),
        "{text}"
    );
    assert!(
        lines[2].contains("not retrying; returning the last result retrier=\"ledger\" attempts=3 reason=error cause=\"attempts\""),
        "{text}"
    );
}

/// `rampart_retry_delay_seconds`: one sample per retry scheduled, its delay in seconds (#19).
#[test]
fn retry_delays_are_recorded_in_seconds() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let layer = RetryLayer::builder()
                .name("delays")
                .max_attempts(3)
                .exponential_backoff(100 * MS, 2.0, Duration::from_secs(5))
                .jitter(tower_rampart::retry::Jitter::None)
                .no_budget()
                .build()
                .unwrap();
            let upstream = Scripted::failing();
            let mut svc = layer.layer(upstream.service());
            call(&mut svc, 1).await.unwrap_err();
        });
    });
    let histograms: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, unit, _, value)| match value {
            DebugValue::Histogram(samples) => Some((key, unit, samples)),
            _ => None,
        })
        .collect();
    assert_eq!(histograms.len(), 1, "{histograms:?}");
    let (key, _, samples) = &histograms[0];
    assert_eq!(key.key().name(), "rampart_retry_delay_seconds");
    let labels: Vec<_> = key
        .key()
        .labels()
        .map(|l| (l.key().to_owned(), l.value().to_owned()))
        .collect();
    assert_eq!(labels, [("name".to_owned(), "delays".to_owned())]);
    let samples: Vec<f64> = samples.iter().map(|s| s.into_inner()).collect();
    assert_eq!(samples, [0.1, 0.2]);
}
