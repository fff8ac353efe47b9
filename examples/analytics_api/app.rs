//! The analytics service: routes, validation, storage. `main.rs` serves it; the tests build it
//! in-process and drive it over loopback HTTP.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderName;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_rampart::http::{AsHttp, ClientIp};
use tower_rampart::rate_limit::{Quota, RateLimitLayer};
use tower_rampart::rejection::RejectionKind;

use crate::config::Config;

/// At most this many metrics are kept in memory; beyond it writes are refused (503), not dropped.
pub(crate) const MAX_METRICS: usize = 1_000_000;

/// A submitted measurement.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metric {
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) value: f64,
    #[serde(rename = "type")]
    pub(crate) metric_type: String,
}

/// A submitted event. All fields are checked on the way in; only `event_type` is used so far.
#[derive(Clone, Debug, Deserialize)]
#[allow(
    dead_code,
    reason = "user_id, timestamp and payload are validated, not yet aggregated"
)]
pub(crate) struct Event {
    pub(crate) user_id: u64,
    pub(crate) event_type: String,
    pub(crate) timestamp: i64,
    #[serde(default)]
    pub(crate) payload: Option<serde_json::Map<String, Value>>,
}

/// In-memory storage. Writes that would exceed [`MAX_METRICS`] are refused, never dropped.
#[derive(Debug, Default)]
pub(crate) struct Storage {
    metrics: RwLock<HashMap<String, Vec<Metric>>>,
    metric_count: std::sync::atomic::AtomicUsize,
    event_counts: RwLock<HashMap<String, u64>>,
}

impl Storage {
    fn add_metric(&self, m: Metric) -> Result<(), ApiError> {
        use std::sync::atomic::Ordering;
        if self.metric_count.fetch_add(1, Ordering::AcqRel) >= MAX_METRICS {
            self.metric_count.fetch_sub(1, Ordering::AcqRel);
            return Err(ApiError::unavailable(
                "metric storage is full; try again later",
            ));
        }
        let mut map = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        map.entry(m.metric_type.clone()).or_default().push(m);
        Ok(())
    }

    fn metrics_of(&self, metric_type: &str) -> Vec<Metric> {
        let map = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        map.get(metric_type).cloned().unwrap_or_default()
    }

    fn add_event(&self, e: &Event) {
        let mut map = self.event_counts.write().unwrap_or_else(|p| p.into_inner());
        *map.entry(e.event_type.clone()).or_default() += 1;
    }

    fn event_count(&self, event_type: &str) -> u64 {
        let map = self.event_counts.read().unwrap_or_else(|p| p.into_inner());
        map.get(event_type).copied().unwrap_or(0)
    }
}

/// An error answered as `{"detail": ...}` with a status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    detail: String,
}

impl ApiError {
    fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
        }
    }
    fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    fn unprocessable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, detail)
    }
    fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "detail": self.detail }))).into_response()
    }
}

/// Shared application state.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) storage: Arc<Storage>,
}

/// The whole application, with its layers, for `config`.
pub(crate) fn router(
    config: &Config,
    state: AppState,
) -> Result<Router, tower_rampart::ConfigError> {
    let per_client = |quota: Quota, name: &'static str| {
        RateLimitLayer::builder()
            .name(name)
            .quota(quota)
            .key(ClientIp::new().trusted_proxies(&config.trusted_proxies))
            .rejection(AsHttp::new().json_body(|r| match r.kind() {
                RejectionKind::RateLimited => r#"{"detail":"Too many requests"}"#.to_owned(),
                _ => json!({ "detail": r.to_string() }).to_string(),
            }))
            .build()
    };
    let metrics_limit = per_client(
        Quota::with_period(config.metrics_limit, config.metrics_window),
        "metrics",
    )?;
    let events_limit = per_client(Quota::per_minute(config.events_per_minute), "events")?;

    // Validation runs before the limiter, so an invalid body never spends quota.
    let metrics = Router::new()
        .route("/api/metrics", post(submit_metric))
        .route_layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(validate_json::<Metric>))
                .layer(metrics_limit),
        );
    let events = Router::new()
        .route("/event", post(submit_event))
        .route("/stats/{event_type}", get(event_stats))
        .route_layer(events_limit);

    let request_id = HeaderName::from_static("x-request-id");
    Ok(Router::new()
        .route("/health", get(health))
        .route("/api/metrics/list", get(list_metrics))
        .route("/api/metrics/summary", get(metric_summary))
        .merge(metrics)
        .merge(events)
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    config.request_timeout,
                )),
        ))
}

/// Reads the body as JSON `T`; answers 400 for malformed JSON and 422 naming the field for a
/// well-formed body with wrong or missing fields. The parsed value goes on as an extension.
async fn validate_json<T>(req: Request, next: Next) -> Response
where
    T: DeserializeOwned + Validate + Clone + Send + Sync + 'static,
{
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            // RequestBodyLimitLayer caps the body; past it, reading fails with LengthLimitError.
            let inner = e.into_inner();
            return if inner.is::<http_body_util::LengthLimitError>() {
                ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")
                    .into_response()
            } else {
                ApiError::bad_request(format!("could not read the request body: {inner}"))
                    .into_response()
            };
        }
    };
    let de = &mut serde_json::Deserializer::from_slice(&bytes);
    let value: T = match serde_path_to_error::deserialize(de) {
        Ok(v) => v,
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let err = if !inner.is_data() {
                ApiError::bad_request(format!("malformed JSON: {inner}"))
            } else if path == "." {
                // Missing or unknown fields are reported at the top level, and name the field.
                ApiError::unprocessable(format!("invalid body: {inner}"))
            } else {
                ApiError::unprocessable(format!("invalid field `{path}`: {inner}"))
            };
            return err.into_response();
        }
    };
    if let Err(e) = value.validate() {
        return e.into_response();
    }
    parts.extensions.insert(value);
    next.run(Request::from_parts(parts, Body::empty())).await
}

/// Checks beyond what the types say.
pub(crate) trait Validate {
    fn validate(&self) -> Result<(), ApiError>;
}

impl Validate for Metric {
    fn validate(&self) -> Result<(), ApiError> {
        if !self.value.is_finite() {
            return Err(ApiError::unprocessable(
                "invalid field `value`: must be a finite number",
            ));
        }
        let t = &self.metric_type;
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(ApiError::unprocessable(
                "invalid field `type`: 1 to 64 characters of letters, digits and _.-",
            ));
        }
        Ok(())
    }
}

async fn health() -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "redis_connected": null,
        "timestamp": Utc::now().to_rfc3339(),
    }))
}

async fn submit_metric(
    State(state): State<AppState>,
    Extension(metric): Extension<Metric>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.storage.add_metric(metric.clone())?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "message": "Metric stored successfully", "metric": metric })),
    ))
}

#[derive(Debug, Deserialize)]
struct MetricQuery {
    #[serde(rename = "type")]
    metric_type: Option<String>,
    #[serde(rename = "metric_type")]
    metric_type_alias: Option<String>,
    period: Option<String>,
    limit: Option<usize>,
    offset: Option<usize>,
}

impl MetricQuery {
    fn metric_type(&self) -> Result<&str, ApiError> {
        self.metric_type
            .as_deref()
            .or(self.metric_type_alias.as_deref())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::bad_request("missing query parameter `type` (or `metric_type`)")
            })
    }
}

fn query<T: DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))
}

async fn list_metrics(
    State(state): State<AppState>,
    q: Result<Query<MetricQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let metric_type = q.metric_type()?;
    let all = state.storage.metrics_of(metric_type);
    let limit = q.limit.unwrap_or(100).min(1000);
    let offset = q.offset.unwrap_or(0);
    let page: Vec<&Metric> = all.iter().skip(offset).take(limit).collect();
    Ok(Json(json!({
        "type": metric_type,
        "total": all.len(),
        "limit": limit,
        "offset": offset,
        "metrics": page,
    })))
}

async fn metric_summary(
    State(state): State<AppState>,
    q: Result<Query<MetricQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let metric_type = q.metric_type()?;
    let since = match q.period.as_deref().unwrap_or("all") {
        "all" => None,
        "daily" => Some(Utc::now() - ChronoDuration::days(1)),
        "hourly" => Some(Utc::now() - ChronoDuration::hours(1)),
        other => {
            return Err(ApiError::bad_request(format!(
                "invalid query parameter `period`: {other:?} is not one of all, daily, hourly"
            )));
        }
    };
    let metrics: Vec<Metric> = state
        .storage
        .metrics_of(metric_type)
        .into_iter()
        .filter(|m| since.is_none_or(|s| m.timestamp >= s))
        .collect();
    let count = metrics.len();
    let (sum, min, max) = metrics
        .iter()
        .fold((0.0, f64::INFINITY, f64::NEG_INFINITY), |(s, lo, hi), m| {
            (s + m.value, lo.min(m.value), hi.max(m.value))
        });
    let latest = metrics.iter().max_by_key(|m| m.timestamp).map(|m| m.value);
    Ok(Json(json!({
        "type": metric_type,
        "period": q.period.as_deref().unwrap_or("all"),
        "count": count,
        "average": if count == 0 { 0.0 } else { sum / count as f64 },
        "min": if count == 0 { 0.0 } else { min },
        "max": if count == 0 { 0.0 } else { max },
        "latest": latest.unwrap_or(0.0),
    })))
}

async fn submit_event(
    State(state): State<AppState>,
    body: Result<Json<Event>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(event) = body.map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    if event.event_type.is_empty() || event.event_type.len() > 64 {
        return Err(ApiError::unprocessable(
            "invalid field `event_type`: 1 to 64 characters",
        ));
    }
    state.storage.add_event(&event);
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "received" }))))
}

async fn event_stats(State(state): State<AppState>, Path(event_type): Path<String>) -> Json<Value> {
    let count = state.storage.event_count(&event_type);
    Json(json!({ "event_type": event_type, "count": count }))
}
