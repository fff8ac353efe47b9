//! Hooks: every request's answer (hit, miss, coalesced, stale, stale-if-error) and every failed
//! fill reach `.on_event` hooks; a panicking hook does not change the answer (#19). And the fill
//! time histogram, on tokio's paused clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::Layer;
use tower_rampart::cache::{CacheEvent, CacheLayer};
use tower_rampart::hooks::Event;
use tower_rampart::key::key_fn;

use crate::{Upstream, call};

#[tokio::test(start_paused = true)]
async fn every_answer_and_failed_fill_reaches_the_hooks() {
    let seen: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let log = Arc::clone(&seen);
    let up = Upstream::default();
    let layer = CacheLayer::builder()
        .name("summaries")
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(60))
        .key(key_fn(|r: &String| Some(r.clone())))
        .on_event(|_: &CacheEvent| panic!("a broken hook"))
        .on_event(move |e: &CacheEvent| {
            assert_eq!(e.layer_name(), "summaries");
            log.lock().unwrap().push(e.kind());
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(up.service());
    let first = call(&mut svc, "a").await.unwrap();
    assert_eq!(call(&mut svc, "a").await.unwrap(), first, "a hit");
    tokio::time::advance(Duration::from_secs(11)).await;
    up.fail(true);
    // Expired; the upstream fails; the stale entry is served.
    assert_eq!(call(&mut svc, "a").await.unwrap(), first);
    // No entry and a failing upstream: the error goes through.
    call(&mut svc, "b").await.unwrap_err();
    assert_eq!(
        *seen.lock().unwrap(),
        [
            "miss",
            "hit",
            "miss",
            "fill_failed",
            "stale_if_error",
            "miss",
            "fill_failed"
        ]
    );
}

#[test]
fn fill_time_is_recorded_in_seconds() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let up = Upstream::default();
            up.delay(250);
            let layer = CacheLayer::builder()
                .name("slow")
                .ttl(Duration::from_secs(10))
                .key(key_fn(|r: &String| Some(r.clone())))
                .build()
                .unwrap();
            let mut svc = layer.layer(up.service());
            call(&mut svc, "a").await.unwrap(); // a fill: 250 ms
            call(&mut svc, "a").await.unwrap(); // a hit: no fill
            up.delay(40);
            up.fail(true);
            call(&mut svc, "b").await.unwrap_err(); // a failed fill: 40 ms
        });
    });
    let fills: Vec<f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "rampart_cache_fill_duration_seconds")
        .flat_map(|(key, _, _, value)| {
            let labels: Vec<_> = key.key().labels().map(|l| (l.key(), l.value())).collect();
            assert_eq!(labels, [("name", "slow")]);
            match value {
                DebugValue::Histogram(samples) => samples.into_iter().map(|s| s.into_inner()),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    assert_eq!(fills, [0.25, 0.04]);
}
