//! The `metrics` feature: hits, misses, stale answers, coalesced waits, evictions and the bytes
//! gauge, labelled by cache.

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::Layer;
use tower_rampart::cache::CacheLayer;
use tower_rampart::key::key_fn;

use crate::{Upstream, call};

#[test]
fn hits_misses_stale_evictions_and_bytes_are_measured() {
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
            let layer = CacheLayer::builder()
                .name("summaries")
                .ttl(Duration::from_secs(10))
                .stale_while_revalidate(Duration::from_secs(10))
                .max_bytes(4 * 1024)
                .key(key_fn(|r: &String| Some(r.clone())))
                .weigher(|s: &String| s.len() + 24)
                .build()
                .unwrap();
            let mut svc = layer.layer(up.service());
            call(&mut svc, "a").await.unwrap(); // miss
            call(&mut svc, "a").await.unwrap(); // hit
            call(&mut svc, "a").await.unwrap(); // hit
            tokio::time::advance(Duration::from_secs(11)).await;
            call(&mut svc, "a").await.unwrap(); // stale (+ a background refresh)
            tokio::task::yield_now().await;
            // About 240 bytes an entry: 100 keys overflow 4 KiB.
            for i in 0..100 {
                call(&mut svc, &format!("k{i}")).await.unwrap();
            }
            layer.store().sync();
            assert!(
                layer.store().bytes() <= 4 * 1024,
                "{}",
                layer.store().bytes()
            );
        });
    });
    let mut seen: HashMap<String, f64> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        assert!(labels.contains(&"name=summaries".to_owned()), "{labels:?}");
        let name = format!("{} {}", key.key().name(), labels.join(","));
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => continue,
        };
        seen.insert(name, v);
    }
    assert_eq!(
        seen["rampart_cache_hits_total name=summaries"], 2.0,
        "{seen:?}"
    );
    assert_eq!(
        seen["rampart_cache_misses_total name=summaries"], 101.0,
        "{seen:?}"
    );
    assert_eq!(
        seen["rampart_cache_stale_total name=summaries"], 1.0,
        "{seen:?}"
    );
    assert!(
        seen["rampart_cache_evictions_total name=summaries,reason=size"] > 0.0,
        "{seen:?}"
    );
    let bytes = seen["rampart_cache_bytes name=summaries"];
    assert!(bytes > 0.0 && bytes <= 4096.0, "{seen:?}");
}
