//! The `metrics` feature: a state gauge (0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled),
//! transitions by target state, refusals and failures, labelled by circuit.

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

        // A per-key circuit's metrics carry its key too.
        let keyed = CircuitBreakerLayer::builder()
            .name("payments")
            .consecutive_failures(1)
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
