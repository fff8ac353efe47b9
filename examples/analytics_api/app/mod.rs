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
use tower_http::trace::TraceLayer;
use tower_rampart::cache::{CacheHandle, CacheLayer};
use tower_rampart::circuit_breaker::CircuitHandle;
use tower_rampart::http::AsHttp;
use tower_rampart::key::{ClientIp, key_fn};
use tower_rampart::rate_limit::{Limit, Quota, RateLimitLayer};
use tower_rampart::rejection::RejectionKind;

use crate::config::Config;
use crate::dashboard::{self, Dataset};
use crate::deadline::{Commit, DeadlineLayer};
use crate::dependency::{self, ExternalClient, FailureRate};
use crate::errors::{self, ApiError, FieldError};
use crate::external;
use crate::input::{self, FromBody};
use crate::storage::{
    EventRecord, Metric, Storage, StorageError, UNKNOWN_PLATFORM, store_metric, summary_prefix,
    valid_metric_type,
};
use crate::tiers::{Client, Tiers};
use crate::{docs, telemetry};

mod handlers;
mod observe;

pub(crate) use handlers::iso;
use handlers::{
    event_stats, health, list_metrics, metric_summary, root, submit_event, submit_metric,
    summary_key, validate_json,
};
use observe::*;

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

/// The whole application, with its layers, for `config` and the API-key `tiers`, keeping data in
/// `storage`; and its state (for tests and benches, which steer the simulated dependency and read
/// the circuit).
///
/// With a remote store it starts a task that writes counted rejections once a second; it ends
/// when the app is dropped.
pub(crate) fn build(
    config: &Config,
    tiers: &Tiers,
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
    // The refusal is the one error shape (`errors.rs`), its message the reference's for the
    // route: `Too many requests` for metric submission and events (reference 000; 001 said `Rate
    // limit exceeded`), `rate limit exceeded` under `/api/v1` (003).
    let per_client = |name: &'static str, on_success: bool, refused: &'static str| {
        RateLimitLayer::builder()
            .name(name)
            .headers_on_success(on_success)
            .rejection(AsHttp::new().json_body(|r| {
                let (status, message) = match r.kind() {
                    RejectionKind::RateLimited => {
                        (StatusCode::TOO_MANY_REQUESTS, refused.to_owned())
                    }
                    RejectionKind::BackendUnavailable => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Rate limiting is unavailable; try again shortly".to_owned(),
                    ),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, r.to_string()),
                };
                errors::body(status, &message, &[]).to_string()
            }))
            .backend(backend.clone())
    };
    let client_ip = ClientIp::new().trusted_proxies(&config.trusted_proxies);
    // Metric submission: a known API key (`X-API-Key`, listed in `API_KEYS`) is limited per key at
    // its tier's quota (`TIER_QUOTAS`); anyone else per client IP at the default quota, exactly as
    // without tiers (`tiers.rs`).
    let mut metrics_limit = per_client("metrics", true, "Too many requests")
        .quota(Quota::with_period(
            config.metrics_limit,
            config.metrics_window,
        ))
        .key(tiers.extractor(client_ip.clone()));
    if tiers.key_count() > 0 {
        // Each tier one limit named after it: its answers say `RateLimit-Policy: "pro";q=..`.
        for tier in tiers.tiers() {
            metrics_limit = metrics_limit.tier(tier.name, [Limit::new(tier.name, tier.quota)]);
        }
        let resolver = tiers.clone();
        metrics_limit = metrics_limit.tier_of(move |client: &Client| resolver.tier_of(client));
    }
    // `RATE_LIMIT_SHADOW=1`: every limit decides and counts as usual, and admits.
    let metrics_limit = metrics_limit.shadow(tiers.shadow()).build()?;
    let events_limit = per_client("events", false, "Too many requests")
        .quota(Quota::per_minute(config.events_per_minute))
        .key(client_ip.clone())
        .shadow(tiers.shadow())
        .build()?;
    let api_v1_limit = per_client("api_v1", true, "rate limit exceeded")
        .quota(Quota::per_minute(config.api_v1_per_minute))
        .key(client_ip)
        .shadow(tiers.shadow())
        .build()?;

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
                // The router's 404 and 405, the body limit's 413 and the deadline's 408 in the one
                // error shape.
                .map_response(errors::json_errors)
                .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
                // The request timeout, which no longer cuts off a write once begun: a 408 means
                // nothing was stored (see `deadline`).
                .layer(DeadlineLayer::new(config.request_timeout, timed_out)),
        );
    Ok((router, state))
}

/// The deadline's answer: an empty 408, which `errors::json_errors` gives the one error shape.
fn timed_out() -> Response {
    StatusCode::REQUEST_TIMEOUT.into_response()
}

/// Marks the request committed to its write, when it runs under the deadline (the bench's bare
/// router has none).
fn begin_write(commit: &Option<Extension<Commit>>) {
    if let Some(Extension(commit)) = commit {
        commit.begin();
    }
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
