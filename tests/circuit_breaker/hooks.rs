//! Hooks on the crate-level pattern: `.on_event` sees every change of state as
//! `CircuitEvent::StateChanged`, beside `.on_state_change` hooks; a panicking hook neither stops
//! the change nor the other hooks (#19).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Layer;
use tower_rampart::circuit_breaker::{
    CircuitBreakerLayer, CircuitEvent, CircuitState, TransitionReason,
};
use tower_rampart::hooks::Event;

use crate::{Upstream, call};

#[tokio::test(start_paused = true)]
async fn on_event_sees_every_change_and_a_panicking_hook_breaks_nothing() {
    let events: Arc<Mutex<Vec<CircuitEvent>>> = Arc::default();
    let changes: Arc<Mutex<Vec<CircuitState>>> = Arc::default();
    let (log, also) = (Arc::clone(&events), Arc::clone(&changes));
    let layer = CircuitBreakerLayer::builder()
        .name("external")
        .consecutive_failures(2)
        .wait_duration(Duration::from_secs(5))
        .on_event(|_: &CircuitEvent| panic!("a broken hook"))
        .on_event(move |e: &CircuitEvent| log.lock().unwrap().push(e.clone()))
        .on_state_change(move |t| also.lock().unwrap().push(t.to()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let upstream = Upstream::default();
    let mut svc = layer.layer(upstream.service());

    upstream.fail(true);
    call(&mut svc).await.unwrap_err();
    call(&mut svc).await.unwrap_err();
    assert_eq!(
        handle.state(),
        CircuitState::Open,
        "the panic stopped no change"
    );
    tokio::time::advance(Duration::from_secs(5)).await;
    upstream.fail(false);
    call(&mut svc).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Closed);

    let events = events.lock().unwrap();
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            assert_eq!((e.layer_name(), e.kind()), ("external", "state_changed"));
            let CircuitEvent::StateChanged(t) = e else {
                panic!("{e:?}");
            };
            (t.from(), t.to(), t.reason())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                CircuitState::Closed,
                CircuitState::Open,
                TransitionReason::ConsecutiveFailures
            ),
            (
                CircuitState::Open,
                CircuitState::HalfOpen,
                TransitionReason::WaitElapsed
            ),
            (
                CircuitState::HalfOpen,
                CircuitState::Closed,
                TransitionReason::ProbesSucceeded
            ),
        ]
    );
    assert_eq!(
        *changes.lock().unwrap(),
        [
            CircuitState::Open,
            CircuitState::HalfOpen,
            CircuitState::Closed
        ]
    );
}
