//! `/external` and `/api/external`: a call to the flaky dependency through its circuit-broken
//! client, with each reference service's fallback answer; and `/api/circuit-breaker/status`.

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tower::ServiceExt;
use tower_rampart::circuit_breaker::CircuitState;
use tower_rampart::circuit_breaker::error::CircuitOpen;

use crate::app::{AppState, iso};
use crate::errors::ApiError;

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
                "reason": if open.is_some() { "circuit open" } else { "external service failure" },
                "circuit_open": open.is_some(),
                "retry_after_seconds": open.and_then(|o| o.retry_after()).map(|d| d.as_secs_f64()),
            }))
        }
    }
}

/// `GET /api/external`: the same call, answered as the second reference service answers it: 200
/// with the value, 503 when the call itself failed while the circuit was closed, 200 with a
/// fallback while the circuit is open or when the half-open probe this call made failed.
pub(crate) async fn api_external(State(state): State<AppState>) -> Response {
    let now = iso(state.now());
    // Half-open before the call: if it is let through, it is the probe.
    let probing = state.breaker.state() == CircuitState::HalfOpen;
    match state.external.clone().oneshot(()).await {
        Ok(value) => Json(json!({
            "status": "success",
            "source": "external_service",
            "data": {
                "source": "external_service",
                "metric_type": "external_metric",
                "sample_value": value,
                "timestamp": now,
            },
            "timestamp": now,
        }))
        .into_response(),
        Err(e) if probing || e.is::<CircuitOpen>() => Json(json!({
            "status": "fallback",
            "source": "circuit_breaker_fallback",
            "message": "External service unavailable, using fallback",
            "timestamp": now,
        }))
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "external call failed; answering 503");
            ApiError::unavailable("External service temporarily unavailable").into_response()
        }
    }
}

/// `GET /api/circuit-breaker/status`: the circuit's state and counts. `failure_count` is the
/// failures in a row, `success_count` the successes in the breaker's window (the reference
/// service's two counters).
pub(crate) async fn status(State(state): State<AppState>) -> Json<Value> {
    let s = state.breaker.snapshot();
    Json(json!({
        "name": s.name(),
        "state": s.state(),
        "failure_count": s.consecutive_failures(),
        "success_count": s.calls() - s.failures(),
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
