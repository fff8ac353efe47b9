//! `/external`: a call to the flaky dependency through its circuit-broken client, with the
//! reference service's fallback answer; and `/api/circuit-breaker/status`.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_rampart::circuit_breaker::error::CircuitOpen;

use crate::app::AppState;

/// `GET /external`: the dependency's value, or the fallback when it failed or its circuit is open.
pub(crate) async fn external(State(state): State<AppState>) -> Json<Value> {
    match state.external.clone().oneshot(()).await {
        Ok(value) => Json(json!({ "external": "ok", "value": value })),
        Err(e) => {
            let open = e.downcast_ref::<CircuitOpen>();
            if open.is_none() {
                tracing::warn!(error = %e, "external call failed; answering the fallback");
            }
            Json(json!({
                "fallback": true,
                "reason": "external service failure",
                "circuit_open": open.is_some(),
                "retry_after_seconds": open.and_then(|o| o.retry_after()).map(|d| d.as_secs_f64()),
            }))
        }
    }
}

/// `GET /api/circuit-breaker/status`: the circuit's state and counts.
pub(crate) async fn status(State(state): State<AppState>) -> Json<Value> {
    let s = state.breaker.snapshot();
    Json(json!({
        "name": s.name(),
        "state": s.state(),
        "calls": s.calls(),
        "failures": s.failures(),
        "failure_rate": s.failure_rate(),
        "consecutive_failures": s.consecutive_failures(),
        "rejected": s.rejected(),
        "in_state_for_seconds": s.in_state_for().as_secs_f64(),
        "next_attempt_in_seconds": s.next_attempt_in().map(|d| d.as_secs_f64()),
        "failure_threshold": state.breaker_threshold,
        "reset_timeout_seconds": state.breaker_reset.as_secs(),
        "simulated_failure_rate": state.external_failure_rate.get(),
    }))
}
