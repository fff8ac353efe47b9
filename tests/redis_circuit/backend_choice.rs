//! `.backend(..)` on the breaker, as on the other layers (#15): a `Backend` chosen at run time
//! keeps circuits in each replica when it is memory and shares them when it is Redis, with one
//! layer type; the memory backend keeps them in each replica, as no backend does.

use std::time::Duration;

use tower::{Layer, ServiceExt, service_fn};
use tower_rampart::BoxError;
use tower_rampart::backend::{Backend, MemoryBackend};
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};

use crate::common::redis::RedisServer;
use crate::support::{connect, unique_prefix, within};

/// One function, one layer type, whichever backend.
fn breaker(backend: Backend) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name("choice")
        .consecutive_failures(2)
        .wait_duration(Duration::from_secs(60))
        .sync_interval(Duration::from_millis(20))
        .backend(backend)
        .build()
        .unwrap()
}

async fn trip(layer: &CircuitBreakerLayer) {
    let svc = layer.layer(service_fn(|()| async {
        Err::<(), BoxError>("down".into())
    }));
    for _ in 0..2 {
        let _ = svc.clone().oneshot(()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_chosen_at_run_time_keeps_or_shares_circuits() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // Memory: a trip on one replica stays there.
    let (a, b) = (breaker(Backend::memory()), breaker(Backend::memory()));
    trip(&a).await;
    assert_eq!(a.handle().state(), CircuitState::Open);
    assert_eq!(b.handle().state(), CircuitState::Closed);
    assert!(!a.handle().is_shared());

    // The memory backend given directly: the same.
    let c = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .backend(MemoryBackend::new())
        .build()
        .unwrap();
    trip(&c).await;
    assert_eq!(c.handle().state(), CircuitState::Open);
    assert!(!c.handle().is_shared());

    // Redis: the same function and type; a trip on one reaches the other.
    let prefix = unique_prefix("choice");
    let a = breaker(Backend::from(connect(&server.url(), &prefix).await));
    let b = breaker(Backend::from(connect(&server.url(), &prefix).await));
    assert!(a.handle().is_shared());
    within(
        Duration::from_secs(5),
        "both follow the shared circuit",
        || a.handle().is_following_shared() && b.handle().is_following_shared(),
    )
    .await;
    trip(&a).await;
    within(
        Duration::from_secs(5),
        "the trip reaches the other replica",
        || b.handle().state() == CircuitState::Open,
    )
    .await;
}
