//! The routes' handlers, and the JSON check in front of the POST routes.

use super::*;

/// Checks a JSON body before anything else sees the request: 415 unless its `Content-Type` says
/// JSON, 413 past `MAX_BODY_BYTES`, 422 for a body that is not JSON or whose fields are wrong (every
/// problem listed, each naming its field, as FastAPI answers both). The checked value goes on as an
/// extension; the rate limiter after this counts valid requests only.
pub(super) async fn validate_json<T>(req: Request, next: Next) -> Response
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
            } else if crate::setup::caused_by::<crate::setup::BodyBudgetExceeded>(&*inner) {
                // The server holds MAX_BUFFERED_BODY_BYTES of bodies already: nothing was read
                // into the app, nothing stored; the client tries again shortly.
                let mut res = ApiError::unavailable(
                    "Service Unavailable: too many request bodies in flight; try again shortly",
                )
                .into_response();
                res.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                res
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
pub(super) async fn root() -> Json<Value> {
    Json(json!({
        "name": "Resilient Analytics API",
        "version": "1.0.0",
        "docs": "/docs",
    }))
}

/// `GET /health`: 200 `healthy` when every configured dependency answers, 503 `degraded`
/// otherwise (so that a load balancer takes the instance out while it cannot store anything).
pub(super) async fn health(State(state): State<AppState>) -> Response {
    let redis = state.storage.connected().await;
    let status = if redis == Some(false) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let body = json!({
        "status": if status == StatusCode::OK { "healthy" } else { "degraded" },
        // A bool, as reference 001's clients read it: `false` with no Redis to connect to (the
        // data is in memory, and the instance healthy).
        "redis_connected": redis.unwrap_or(false),
        "timestamp": state.now().to_rfc3339(),
    });
    (status, Json(body)).into_response()
}

/// A time as the second reference service writes it (`2026-02-21T12:00:00.000000+00:00`).
pub(crate) fn iso(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
}

pub(super) async fn submit_metric(
    State(state): State<AppState>,
    commit: Option<Extension<Commit>>,
    Extension(metric): Extension<Metric>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // From here the answer is the write's (201 stored, 503 not), whatever the request timeout;
    // the write and the invalidation it calls for run to their end even if the client goes.
    begin_write(&commit);
    crate::deadline::to_the_end(store_metric(
        Arc::clone(&state.storage),
        state.summaries.clone(),
        metric.clone(),
    ))
    .await?;
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
pub(super) struct MetricQuery {
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
pub(super) fn query<T: DeserializeOwned>(
    q: Result<Query<T>, axum::extract::rejection::QueryRejection>,
) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::field(FieldError::new("query_parsing", &["query"], e.body_text())))
}

/// The most metrics one page may hold.
const MAX_PAGE: usize = 1000;

/// A listed metric, as the second reference service lists them.
pub(super) fn listed(m: &Metric) -> Value {
    json!({ "id": null, "timestamp": m.timestamp, "value": m.value, "type": m.metric_type })
}

/// `GET /api/metrics/list?type=T&limit=N&offset=K`: a bare array of `{"id","timestamp","value",
/// "type"}`, with the number of metrics there are in `x-total-count`. Without `offset`, the newest
/// `limit` (100 by default, at most 1000); with it, `limit` from that position, oldest first.
/// Without `type`, the newest `limit` submitted, of any type (in submission order; the work is
/// `limit`'s, however many types there are).
pub(super) async fn list_metrics(
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
            state.storage.newest_metrics(limit).await?
        }
    };
    let body: Vec<Value> = page.iter().map(listed).collect();
    Ok(([("x-total-count", total.to_string())], Json(body)).into_response())
}

/// `GET /api/metrics/summary?type=T&period=all|daily|hourly` (or `metric_type=T`): both reference
/// services' key families at once (`average`, `min`, `max`, `latest` and `average_value`,
/// `min_value`, `max_value`, `latest_value`), zeros when there is nothing to summarise.
pub(super) async fn metric_summary(
    State(state): State<AppState>,
    q: Result<Query<MetricQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
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
    // A type with no metrics is not cached (`no-store`): any string is a valid type, and every
    // one a client made up would otherwise be an entry (in Redis, kept for the TTL, with no
    // bound but Redis's memory). Its summary costs one lookup to compute.
    let store = if s.count == 0 {
        Some([(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        )])
    } else {
        None
    };
    let body = Json(json!({
        "type": metric_type,
        "period": period,
        "count": s.count,
        // Reference 000 writes an empty summary's average as the integer 0.
        "average": if s.count == 0 { json!(0) } else { json!(s.average) },
        "min": s.min,
        "max": s.max,
        "latest": s.latest,
        "average_value": s.average,
        "min_value": s.min,
        "max_value": s.max,
        "latest_value": s.latest,
    }));
    Ok((store, body).into_response())
}

pub(super) async fn submit_event(
    State(state): State<AppState>,
    commit: Option<Extension<Commit>>,
    Extension(event): Extension<Event>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let record = EventRecord {
        user_id: event.user_id,
        event_type: event.event_type,
        platform: event
            .platform
            .unwrap_or_else(|| UNKNOWN_PLATFORM.to_owned()),
    };
    begin_write(&commit);
    let (storage, now) = (Arc::clone(&state.storage), state.now());
    crate::deadline::to_the_end(async move { storage.record_event(&record, now).await }).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "status": "received" }))))
}

pub(super) async fn event_stats(
    State(state): State<AppState>,
    Path(event_type): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let count = state.storage.event_count(&event_type).await?;
    Ok(Json(json!({ "event_type": event_type, "count": count })))
}

/// The cache key of a summary request: `summary:<type>:<period>:<method>` (the same for `type=` and
/// `metric_type=`, and for `period=all` and no period), or none for a request the handler will
/// refuse (it then goes straight through).
pub(super) fn summary_key(req: &Request) -> Option<String> {
    let Query(q) = Query::<MetricQuery>::try_from_uri(req.uri()).ok()?;
    let metric_type = q.metric_type().ok()?;
    if !valid_metric_type(metric_type) {
        return None;
    }
    let period = q.period.as_deref().unwrap_or("all");
    matches!(period, "all" | "daily" | "hourly")
        .then(|| format!("{}{period}:{}", summary_prefix(metric_type), req.method()))
}
