//! The analytics service: routes, validation, storage. `main.rs` serves it; the tests build it
//! in-process and drive it over loopback HTTP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::HeaderName;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tower::ServiceBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use tower_rampart::cache::{CacheHandle, CacheLayer};
use tower_rampart::circuit_breaker::CircuitHandle;
use tower_rampart::http::AsHttp;
use tower_rampart::key::{ClientIp, key_fn};
use tower_rampart::rate_limit::{Quota, RateLimitLayer};
use tower_rampart::rejection::RejectionKind;

use crate::config::Config;
use crate::dashboard::{self, Dataset};
use crate::dependency::{self, ExternalClient, FailureRate};
use crate::errors::{self, ApiError, FieldError};
use crate::external;
use crate::input::{self, FromBody};
use crate::storage::{
    EventRecord, Metric, Storage, StorageError, UNKNOWN_PLATFORM, valid_metric_type,
};
use crate::{docs, telemetry};

/// A submitted event, checked on the way in (`input.rs`).
#[derive(Clone, Debug)]
pub(crate) struct Event {
    pub(crate) user_id: u64,
    pub(crate) event_type: String,
    #[allow(dead_code, reason = "validated; the service counts by arrival time")]
    pub(crate) timestamp: DateTime<Utc>,
    /// `payload.platform`, if the payload names one.
    pub(crate) platform: Option<String>,
}

/// The cache answers with its own body type; the router wants axum's.
fn into_axum<B>(res: http::Response<B>) -> Response
where
    http::Response<B>: IntoResponse,
{
    res.into_response()
}

/// Where the app takes the time of day from (tests move it by hand).
pub(crate) type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// The wall clock.
pub(crate) fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

impl From<StorageError> for ApiError {
    /// The cause is logged, not answered: a client learns nothing of how the service is deployed.
    fn from(e: StorageError) -> Self {
        if let Some(bound) = e.public() {
            return Self::unavailable(bound.to_owned());
        }
        tracing::warn!(error = %e, "storage failed; answering 503");
        Self::unavailable(STORAGE_UNAVAILABLE)
    }
}

/// What a client is told when the storage fails.
pub(crate) const STORAGE_UNAVAILABLE: &str = "storage unavailable; try again shortly";

/// Rejections (4xx answers) counted on the request path and written to a remote store once a
/// second, so a flood of refused requests does not cost a store round trip each.
#[derive(Debug, Default)]
pub(crate) struct RejectionCounter {
    pending: AtomicU64,
}

/// Shared application state: one `Arc`, so that extracting it (handlers, middleware) costs one
/// reference count per request, not a clone of each part.
#[derive(Clone)]
pub(crate) struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

/// What [`AppState`] holds.
pub(crate) struct AppInner {
    pub(crate) storage: Arc<Storage>,
    pub(crate) clock: Clock,
    pub(crate) dataset: Dataset,
    pub(crate) external: ExternalClient,
    pub(crate) external_failure_rate: FailureRate,
    pub(crate) breaker: CircuitHandle,
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_reset: Duration,
    pub(crate) rejections: Arc<RejectionCounter>,
    /// Drops cached summaries when a metric is stored.
    pub(crate) summaries: CacheHandle,
}

impl AppInner {
    /// The time of day.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    /// Writes the rejections counted here but not yet stored.
    pub(crate) async fn flush_rejections(&self) -> Result<(), StorageError> {
        let n = self.rejections.pending.swap(0, Ordering::AcqRel);
        if n == 0 {
            return Ok(());
        }
        let result = self.storage.record_rejections(n, self.now()).await;
        if result.is_err() {
            // Not lost: counted again with the next flush.
            self.rejections.pending.fetch_add(n, Ordering::AcqRel);
        }
        result
    }
}

/// The whole application, with its layers, for `config`, keeping data in `storage`; and its state
/// (for tests and benches, which steer the simulated dependency and read the circuit).
///
/// With a remote store it starts a task that writes counted rejections once a second; it ends
/// when the app is dropped.
pub(crate) fn build(
    config: &Config,
    storage: Arc<Storage>,
    clock: Clock,
) -> Result<(Router, AppState), tower_rampart::ConfigError> {
    let (external, breaker, external_failure_rate) = dependency::client(config, storage.backend())?;
    // Summaries are read through a cache, keyed by type and period (so that a write drops exactly
    // its type's entries); the sensor breakdown, static data, by method and URI. With Redis, the
    // caches are shared by every instance, and so are invalidations.
    let backend = storage.backend();
    // With a `Backend`, memory or Redis, each cache has one type either way.
    let summary_cache = CacheLayer::builder()
        .name("summaries")
        .http()
        .key(key_fn(summary_key))
        .ttl(config.cache_ttl)
        .backend(backend.clone())
        .build()?;
    let summaries = summary_cache.handle();
    // The breakdown reads no parameter: one entry, whatever query string a client appends (keyed
    // by method and URI, junk query strings each made an entry of their own in Redis).
    let breakdown_cache = CacheLayer::builder()
        .name("sensors")
        .http()
        .key(key_fn(|req: &Request| {
            Some(format!("type-breakdown:{}", req.method()))
        }))
        .ttl(config.cache_ttl)
        .backend(backend.clone())
        .build()?;
    let state = AppState(Arc::new(AppInner {
        summaries,
        dataset: Dataset::new(clock()),
        storage,
        clock,
        external,
        external_failure_rate,
        breaker,
        breaker_threshold: config.breaker_threshold,
        breaker_reset: config.breaker_reset,
        rejections: Arc::default(),
    }));
    if state.storage.is_remote() {
        let weak = Arc::downgrade(&state.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                // Stop once the app is gone.
                let Some(inner) = weak.upgrade() else { break };
                if let Err(e) = AppState(inner).flush_rejections().await {
                    tracing::warn!(error = %e, "could not store rejection counts; will retry");
                }
            }
        });
    }

    // Per-client limits, in memory or, with Redis, shared by every instance (each limiter named,
    // so that in Redis they keep apart). The backend is a `Backend`: one layer type either way,
    // with no box to allocate when axum clones the route for a request. Refusals
    // always carry `Retry-After` and the `RateLimit` fields; admitted responses carry them where a
    // client paces itself by them (metric submission, the dashboard API), not on event ingestion,
    // whose senders fire and forget at a high rate and would pay for the bytes on every event.
    let backend = state
        .storage
        .backend()
        .map_redis(|redis| redis.failure_policy(config.rate_limit_failure_policy));
    let per_client = |quota: Quota, name: &'static str, on_success: bool| {
        let builder = RateLimitLayer::builder()
            .name(name)
            .quota(quota)
            .key(ClientIp::new().trusted_proxies(&config.trusted_proxies))
            .headers_on_success(on_success)
            // The one error shape (`errors.rs`), `detail` saying what the references say.
            .rejection(AsHttp::new().json_body(|r| {
                let (status, message) = match r.kind() {
                    RejectionKind::RateLimited => (
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too many requests".to_owned(),
                    ),
                    RejectionKind::BackendUnavailable => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Rate limiting is unavailable; try again shortly".to_owned(),
                    ),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, r.to_string()),
                };
                errors::body(status, &message, &[]).to_string()
            }))
            .backend(backend.clone());
        builder.build()
    };
    let metrics_limit = per_client(
        Quota::with_period(config.metrics_limit, config.metrics_window),
        "metrics",
        true,
    )?;
    let events_limit = per_client(Quota::per_minute(config.events_per_minute), "events", false)?;
    let api_v1_limit = per_client(Quota::per_minute(config.api_v1_per_minute), "api_v1", true)?;

    // Validation runs before the limiters, so an invalid body (or one that is not JSON) never
    // spends quota; both wrap the POST handlers only, so other methods get their 405 untouched.
    let metrics = Router::new().route(
        "/api/metrics",
        post(submit_metric).route_layer(
            ServiceBuilder::new()
                .layer(middleware::from_fn(validate_json::<Metric>))
                .layer(metrics_limit),
        ),
    );
    // One limiter (its state shared by its clones) for `/event` and `/stats`.
    let events = Router::new()
        .route(
            "/event",
            post(submit_event).route_layer(
                ServiceBuilder::new()
                    .layer(middleware::from_fn(validate_json::<Event>))
                    .layer(events_limit.clone()),
            ),
        )
        .route(
            "/stats/{event_type}",
            get(event_stats).route_layer(events_limit),
        );
    // The limit wraps each GET handler (a method router's `route_layer`), so a request with
    // another method gets its 405 without spending quota.
    let api_v1 = Router::new()
        .route(
            "/api/v1/metrics/summary",
            get(dashboard::summary).route_layer(api_v1_limit.clone()),
        )
        .route(
            "/api/v1/metrics/history",
            get(dashboard::history).route_layer(api_v1_limit.clone()),
        )
        .route(
            "/api/v1/sensors/type-breakdown",
            get(dashboard::type_breakdown).route_layer(
                ServiceBuilder::new()
                    .layer(api_v1_limit.clone())
                    .map_response(into_axum)
                    .layer(breakdown_cache),
            ),
        )
        .route(
            "/api/v1/modules",
            get(dashboard::modules).route_layer(api_v1_limit),
        );

    let request_id = HeaderName::from_static("x-request-id");
    let router = Router::new()
        .route("/", get(root))
        .route("/health", get(health))
        .route("/api/metrics/list", get(list_metrics))
        .route(
            "/api/metrics/summary",
            get(metric_summary).route_layer(
                ServiceBuilder::new()
                    .map_response(into_axum)
                    .layer(summary_cache),
            ),
        )
        .route("/external", get(external::external))
        .route("/api/external", get(external::api_external))
        .route("/api/circuit-breaker/status", get(external::status))
        .route("/metrics", get(telemetry::render))
        .route("/openapi.json", get(docs::openapi))
        .route("/docs", get(docs::page))
        .merge(metrics)
        .merge(events)
        .merge(api_v1)
        .with_state(state.clone())
        // One layer call for the whole stack: axum wraps (and clones, per request) each route once
        // per `layer` call, so one call for all of them keeps that cost to one.
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), RandomRequestId))
                .layer(TraceLayer::new_for_http())
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(ObserveLayer {
                    state: state.clone(),
                })
                // The router's 404 and 405, the body limit's 413 and the timeout's 408 in the one
                // error shape.
                .map_response(errors::json_errors)
                .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    config.request_timeout,
                )),
        );
    Ok((router, state))
}

/// The two routes the HTTP bench drives (`POST /event`, `GET /api/metrics/summary`) with the same
/// handlers and state and no layer at all: the baseline the full stack is measured against.
#[allow(dead_code, reason = "used by the HTTP bench")]
pub(crate) fn bare_router(state: AppState) -> Router {
    Router::new()
        .route(
            "/event",
            post(submit_event).route_layer(middleware::from_fn(validate_json::<Event>)),
        )
        .route("/api/metrics/summary", get(metric_summary))
        .with_state(state)
}

/// Request ids in the form of a random (version 4) UUID, drawn from a per-thread generator rather
/// than the operating system's (which costs a system call per request); ids, not secrets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let hi = (fastrand::u64(..) & !0xf000) | 0x4000; // version 4
        let lo = (fastrand::u64(..) & !(0xc << 60)) | (0x8 << 60); // variant 1
        Some(RequestId::new(uuid_text(hi, lo)))
    }
}

/// `hi` and `lo` as a UUID's text (`8-4-4-4-12` lowercase hex digits), written straight into the
/// header value: one allocation, no formatter.
fn uuid_text(hi: u64, lo: u64) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Where the 32 digits go among the 36 bytes (the other four are the dashes).
    const AT: [usize; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28,
        29, 30, 31, 32, 33, 34, 35,
    ];
    let mut text = [b'-'; 36];
    for i in 0..16 {
        let shift = 60 - 4 * i;
        text[AT[i]] = HEX[((hi >> shift) & 0xf) as usize];
        text[AT[16 + i]] = HEX[((lo >> shift) & 0xf) as usize];
    }
    http::HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
}

/// The cache key of a summary request: `summary:<type>:<period>:<method>` (the same for `type=` and
/// `metric_type=`, and for `period=all` and no period), or none for a request the handler will
/// refuse (it then goes straight through).
fn summary_key(req: &Request) -> Option<String> {
    let Query(q) = Query::<MetricQuery>::try_from_uri(req.uri()).ok()?;
    let metric_type = q.metric_type().ok()?;
    if !valid_metric_type(metric_type) {
        return None;
    }
    let period = q.period.as_deref().unwrap_or("all");
    matches!(period, "all" | "daily" | "hourly")
        .then(|| format!("{}{period}:{}", summary_prefix(metric_type), req.method()))
}

/// The beginning of every cache key of `metric_type`'s summaries.
fn summary_prefix(metric_type: &str) -> String {
    format!("summary:{metric_type}:")
}

/// Records the HTTP metrics of every request, and counts every 4xx answer (the limiters' 429s, the
/// body limit's 413 and the timeout's 408 included: they are inside this layer) for the dashboard's
/// `apiRejectedCount`. Hand-written rather than `middleware::from_fn`, which boxes the inner
/// service and the future on every request: this sits on every route.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    state: AppState,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        ObserveFuture {
            timer: Some(telemetry::RequestTimer::start(&req)),
            inner: self.inner.call(req),
            state: self.state.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Observe`].
    pub(crate) struct ObserveFuture<F> {
        #[pin]
        inner: F,
        timer: Option<telemetry::RequestTimer>,
        state: AppState,
    }
}

impl<F, RB, E> std::future::Future for ObserveFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<RB>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(res) = &result {
            if let Some(timer) = this.timer.take() {
                timer.finish(res.status());
            }
            if res.status().is_client_error() {
                let state = &*this.state;
                // In memory the count is written now; a remote store gets it within a second.
                if !state.storage.record_rejection_now(state.now()) {
                    state.rejections.pending.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::task::Poll::Ready(result)
    }
}

/// Checks a JSON body before anything else sees the request: 415 unless its `Content-Type` says
/// JSON, 413 past `MAX_BODY_BYTES`, 422 for a body that is not JSON or whose fields are wrong (every
/// problem listed, each naming its field, as FastAPI answers both). The checked value goes on as an
/// extension; the rate limiter after this counts valid requests only.
async fn validate_json<T>(req: Request, next: Next) -> Response
where
    T: FromBody + Clone + Send + Sync + 'static,
{
    if let Err(e) = errors::require_json(&req) {
        return e.into_response();
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            // RequestBodyLimitLayer caps the body; past it, reading fails with LengthLimitError.
            let inner = e.into_inner();
            return if inner.is::<http_body_util::LengthLimitError>() {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "Payload Too Large: the body is over MAX_BODY_BYTES",
                )
                .into_response()
            } else {
                ApiError::bad_request(format!("could not read the request body: {inner}"))
                    .into_response()
            };
        }
    };
    let json: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::field(FieldError::new(
                "json_invalid",
                &["body"],
                format!("JSON decode error: {e}"),
            ))
            .into_response();
        }
    };
    match T::from_body(&json) {
        Ok(value) => {
            parts.extensions.insert(value);
            next.run(Request::from_parts(parts, Body::empty())).await
        }
        Err(errors) => ApiError::validation(errors).into_response(),
    }
}

/// `GET /`: what the service is and where its documentation is.
async fn root() -> Json<Value> {
    Json(json!({
        "name": "Resilient Analytics API",
        "version": "1.0.0",
        "docs": "/docs",
    }))
}

/// `GET /health`: 200 `healthy` when every configured dependency answers, 503 `degraded`
/// otherwise (so that a load balancer takes the instance out while it cannot store anything).
async fn health(State(state): State<AppState>) -> Response {
    let redis = state.storage.connected().await;
    let status = if redis == Some(false) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": if status == StatusCode::OK { "healthy" } else { "degraded" },
        "redis_connected": redis,
        "timestamp": state.now().to_rfc3339(),
    });
    (status, Json(body)).into_response()
}

/// A time as the second reference service writes it (`2026-02-21T12:00:00.000000+00:00`).
pub(crate) fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

async fn submit_metric(
    State(state): State<AppState>,
    Extension(metric): Extension<Metric>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    state.storage.add_metric(&metric).await?;
    // The next summary of this type is computed afresh, whatever its TTL.
    if let Err(e) = state
        .summaries
        .invalidate_prefix(summary_prefix(&metric.metric_type))
        .await
    {
        tracing::warn!(error = %e, "could not drop cached summaries; they expire with their TTL");
    }
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "message": "Metric stored successfully",
            "timestamp": iso(state.now()),
            "type": metric.metric_type,
            "metric": metric,
        })),
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
    /// The type asked for (`type=`, or `metric_type=`), if any; 422 if it breaks the type rule.
    fn metric_type_opt(&self) -> Result<Option<&str>, ApiError> {
        let Some(t) = self
            .metric_type
            .as_deref()
            .or(self.metric_type_alias.as_deref())
        else {
            return Ok(None);
        };
        input::type_field(&["query", "type"], &Value::from(t))
            .map_err(ApiError::field)
            .map(|_| Some(t))
    }

    /// The type asked for; 422 when there is none.
    fn metric_type(&self) -> Result<&str, ApiError> {
        self.metric_type_opt()?.ok_or_else(|| {
            ApiError::field(FieldError::new(
                "missing",
                &["query", "type"],
                "Field required (as `type`, or `metric_type`)",
            ))
        })
    }
}

/// The query parameters, or 422 naming the one that is not what it must be.
fn query<T: DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::field(FieldError::new("query_parsing", &["query"], e.body_text())))
}

/// The most metrics one page may hold.
const MAX_PAGE: usize = 1000;
/// The most metric types an all-types list looks at.
const MAX_LISTED_TYPES: usize = 1000;

/// A listed metric, as the second reference service lists them.
fn listed(m: &Metric) -> Value {
    json!({ "id": null, "timestamp": m.timestamp, "value": m.value, "type": m.metric_type })
}

/// `GET /api/metrics/list?type=T&limit=N&offset=K`: a bare array of `{"id","timestamp","value",
/// "type"}`, with the number of metrics there are in `x-total-count`. Without `offset`, the newest
/// `limit` (100 by default, at most 1000); with it, `limit` from that position, oldest first.
/// Without `type`, the newest `limit` of every type.
async fn list_metrics(
    State(state): State<AppState>,
    q: Result<Query<MetricQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    let limit = q.limit.unwrap_or(100).min(MAX_PAGE);
    let newest = async |t: &str| -> Result<(u64, Vec<Metric>), ApiError> {
        let (total, _) = state.storage.metrics_page(t, 0, 0).await?;
        let start = match q.offset {
            // Past the end, the page is empty (and an offset past what Redis takes, 2^63, is
            // not sent to it: it answered an error, and this a 503).
            Some(o) => o.min(usize::try_from(total).unwrap_or(usize::MAX)),
            None => usize::try_from(total)
                .unwrap_or(usize::MAX)
                .saturating_sub(limit),
        };
        let (_, page) = state.storage.metrics_page(t, start, limit).await?;
        Ok((total, page))
    };
    let (total, page) = match q.metric_type_opt()? {
        Some(t) => newest(t).await?,
        None => {
            if q.offset.is_some() {
                return Err(ApiError::field(FieldError::new(
                    "missing",
                    &["query", "type"],
                    "`offset` pages through one type: give `type` with it",
                )));
            }
            let mut total = 0;
            let mut all = Vec::new();
            for t in state
                .storage
                .metric_types()
                .await?
                .iter()
                .take(MAX_LISTED_TYPES)
            {
                let (n, page) = newest(t).await?;
                total += n;
                all.extend(page);
            }
            all.sort_by_key(|m| m.timestamp);
            let skip = all.len().saturating_sub(limit);
            (total, all.split_off(skip))
        }
    };
    let body: Vec<Value> = page.iter().map(listed).collect();
    Ok(([("x-total-count", total.to_string())], Json(body)).into_response())
}

/// `GET /api/metrics/summary?type=T&period=all|daily|hourly` (or `metric_type=T`): both reference
/// services' key families at once (`average`, `min`, `max`, `latest` and `average_value`,
/// `min_value`, `max_value`, `latest_value`), zeros when there is nothing to summarise.
async fn metric_summary(
    State(state): State<AppState>,
    q: Result<Query<MetricQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let metric_type = q.metric_type()?;
    let period = q.period.as_deref().unwrap_or("all");
    let now = state.now();
    let since = match period {
        "all" => None,
        "daily" => Some(now - ChronoDuration::days(1)),
        "hourly" => Some(now - ChronoDuration::hours(1)),
        _ => {
            return Err(ApiError::bad_request(
                "Invalid period. Must be one of: all, daily, hourly",
            ));
        }
    };
    let s = state.storage.summary(metric_type, since).await?;
    Ok(Json(json!({
        "type": metric_type,
        "period": period,
        "count": s.count,
        "average": s.average,
        "min": s.min,
        "max": s.max,
        "latest": s.latest,
        "average_value": s.average,
        "min_value": s.min,
        "max_value": s.max,
        "latest_value": s.latest,
    })))
}

async fn submit_event(
    State(state): State<AppState>,
    Extension(event): Extension<Event>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = EventRecord {
        user_id: event.user_id,
        event_type: event.event_type,
        platform: event
            .platform
            .unwrap_or_else(|| UNKNOWN_PLATFORM.to_owned()),
    };
    state.storage.record_event(&record, state.now()).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "received" }))))
}

async fn event_stats(
    State(state): State<AppState>,
    Path(event_type): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let count = state.storage.event_count(&event_type).await?;
    Ok(Json(json!({ "event_type": event_type, "count": count })))
}
