//! The `metrics` feature: a state gauge (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled),
//! transitions by target state, refusals and failures, labelled by circuit (per-key circuits by
//! their key only when asked: a client-chosen key made a series per key, kept for good).

use std::collections::HashMap;
use std::task::{Context, Poll, Waker};

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, Service};
use tower_rampart::circuit_breaker::CircuitBreakerLayer;

#[test]
fn transitions_refusals_and_failures_are_measured() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let layer = CircuitBreakerLayer::builder()
            .name("payments")
            .consecutive_failures(2)
            .build()
            .unwrap();
        let mut svc = layer.layer(tower::service_fn(|_: ()| async {
            Err::<(), tower_rampart::BoxError>("down".into())
        }));
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..5 {
            let mut fut = std::pin::pin!(svc.call(()));
            assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
        }
        layer.handle().force_closed();

        // A per-key circuit's metrics carry its key when asked.
        let keyed = CircuitBreakerLayer::builder()
            .name("payments")
            .consecutive_failures(1)
            .key_in_metrics(true)
            .key(tower_rampart::key::key_fn(|host: &&'static str| {
                Some(*host)
            }))
            .build()
            .unwrap();
        let mut svc = keyed.layer(tower::service_fn(|_: &'static str| async {
            Err::<(), tower_rampart::BoxError>("down".into())
        }));
        for _ in 0..2 {
            let mut fut = std::pin::pin!(svc.call("eu.example"));
            assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
        }
    });
    let mut seen: HashMap<String, f64> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        assert!(labels.contains(&"name=payments".to_owned()), "{labels:?}");
        let name = format!("{} {}", key.key().name(), labels.join(","));
        let v = match value {
            DebugValue::Counter(n) => n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => continue,
        };
        seen.insert(name, v);
    }
    assert_eq!(
        seen["rampart_circuit_failures_total name=payments"], 2.0,
        "{seen:?}"
    );
    assert_eq!(seen["rampart_circuit_rejected_total name=payments"], 3.0);
    assert_eq!(
        seen["rampart_circuit_transitions_total name=payments,to=open"],
        1.0
    );
    assert_eq!(
        seen["rampart_circuit_transitions_total name=payments,to=closed"],
        1.0
    );
    assert_eq!(
        seen["rampart_circuit_state name=payments"], 0.0,
        "closed again"
    );
    assert_eq!(
        seen["rampart_circuit_state name=payments,key=eu.example"],
        1.0
    );
    assert_eq!(
        seen["rampart_circuit_rejected_total name=payments,key=eu.example"],
        1.0
    );
}

/// Per-key circuits keyed by what clients choose: 20,000 keys through a layer that holds 100
/// circuits make a fixed number of series (every key's counts add up under the layer's name),
/// where each key used to add three or more, kept by the recorder for good.
#[test]
fn per_key_circuits_make_a_bounded_number_of_series() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let keyed = CircuitBreakerLayer::builder()
            .name("by-client")
            .consecutive_failures(1)
            .max_circuits(100)
            .key(tower_rampart::key::key_fn(|client: &u32| Some(*client)))
            .build()
            .unwrap();
        let mut svc = keyed.layer(tower::service_fn(|_: u32| async {
            Err::<(), tower_rampart::BoxError>("down".into())
        }));
        let mut cx = Context::from_waker(Waker::noop());
        for client in 0..20_000u32 {
            let mut fut = std::pin::pin!(svc.call(client));
            assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
        }
    });
    let snapshot = snapshotter.snapshot().into_vec();
    let circuit: Vec<_> = snapshot
        .iter()
        .filter(|(k, ..)| k.key().name().starts_with("rampart_circuit_"))
        .collect();
    assert!(circuit.len() <= 8, "{} series", circuit.len());
    for (key, _, _, value) in circuit {
        assert!(
            key.key().labels().all(|l| l.key() != "key"),
            "{:?}",
            key.key()
        );
        assert_ne!(key.key().name(), "rampart_circuit_state");
        if key.key().name() == "rampart_circuit_failures_total" {
            assert!(matches!(value, DebugValue::Counter(20_000)), "{value:?}");
        }
    }
}
