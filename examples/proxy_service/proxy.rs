//! The proxy: its configuration, its outbound client stack (circuit breaker around retries around a
//! hyper client) and its routes, with a per-client rate limit in front. `main.rs` serves it; the
//! tests run it against `mock_upstream` over loopback.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitHandle};
use tower_rampart::http::AsHttp;
use tower_rampart::key::ClientIp;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};
use tower_rampart::rejection::{AsError, RejectionKind};
use tower_rampart::retry::error::{AttemptTimedOut, LastError};
use tower_rampart::retry::{Attempts, Budget, Jitter, RetryLayer};

use crate::jitter::AddedJitter;
use crate::setup::{EnvError, caused_by, json_logs, listen_addr, parse, positive};

/// The proxy's configuration, from the environment.
#[derive(Clone, Debug)]
pub(crate) struct ProxyConfig {
    /// `BIND` and `PORT` (default 8000, as the reference).
    pub(crate) addr: SocketAddr,
    /// `EXTERNAL_SERVICE_URL` (default `http://localhost:5001/external-api/process`).
    pub(crate) upstream: http::Uri,
    /// `RETRY_MAX_ATTEMPTS` (3, the first included), `RETRY_INITIAL_DELAY_MS` (100),
    /// `RETRY_BACKOFF_MULTIPLIER` (2.0), `RETRY_MAX_DELAY_MS` (5000): the delay before retry `n` is
    /// `initial × multiplier^(n−1)`, at most the maximum, plus a random 0–50% of it (reference
    /// 004's schedule: 100–150 ms, then 200–300 ms; see [`crate::jitter`]).
    pub(crate) retry_attempts: u32,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_multiplier: f64,
    pub(crate) retry_max_delay: Duration,
    /// `RETRY_BUDGET_PERCENT` (100): retries may add at most this share of the recent requests
    /// (plus 10 per second), so an outage cannot multiply the upstream's load beyond it.
    pub(crate) retry_budget_percent: f64,
    /// `EXTERNAL_TIMEOUT_MS` (10000, the reference's fixed 10 s): how long one attempt may take.
    pub(crate) attempt_timeout: Duration,
    /// `CB_FAILURE_THRESHOLD` (5) failed requests in a row open the circuit for
    /// `CB_RESET_TIMEOUT_SECONDS` (30).
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_reset: Duration,
    /// `RATE_LIMIT_MAX_REQUESTS` (10) per `RATE_LIMIT_WINDOW_SECONDS` (60) per client.
    pub(crate) rate_limit: u32,
    pub(crate) rate_window: Duration,
    /// `TRUSTED_PROXIES`: CIDRs whose `X-Forwarded-For` is believed (default none).
    pub(crate) trusted_proxies: Vec<String>,
    /// `MAX_BODY_BYTES` (default 1 MiB).
    pub(crate) max_body_bytes: usize,
    /// `REQUEST_TIMEOUT_SECONDS` (30): the most one request may take, body and upstream calls
    /// included (408 past it; longer than the retries' own deadline, which answers 500 first).
    pub(crate) request_timeout: Duration,
    /// `BODY_READ_TIMEOUT_SECONDS` (10): the longest wait for the next piece of a request body.
    pub(crate) body_timeout: Duration,
    /// `LOG_FORMAT=json` for JSON logs.
    pub(crate) json_logs: bool,
}

impl ProxyConfig {
    /// Reads variables through `get`.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let upstream: http::Uri = parse(
            &get,
            "EXTERNAL_SERVICE_URL",
            http::Uri::from_static("http://localhost:5001/external-api/process"),
            "an http:// URL",
        )?;
        if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
            return Err(EnvError {
                var: "EXTERNAL_SERVICE_URL",
                value: upstream.to_string(),
                expected: "an http:// URL with a host",
            });
        }
        let retry_multiplier: f64 = parse(
            &get,
            "RETRY_BACKOFF_MULTIPLIER",
            2.0,
            "a number from 1.0 to 10.0",
        )?;
        if !(1.0..=10.0).contains(&retry_multiplier) {
            return Err(EnvError {
                var: "RETRY_BACKOFF_MULTIPLIER",
                value: retry_multiplier.to_string(),
                expected: "a number from 1.0 to 10.0",
            });
        }
        let attempts = positive(&get, "RETRY_MAX_ATTEMPTS", 3)?;
        if attempts > 10 {
            return Err(EnvError {
                var: "RETRY_MAX_ATTEMPTS",
                value: attempts.to_string(),
                expected: "a whole number from 1 to 10",
            });
        }
        let retry_budget_percent: f64 = parse(
            &get,
            "RETRY_BUDGET_PERCENT",
            100.0,
            "a number from 0 to 1000",
        )?;
        if !(0.0..=1000.0).contains(&retry_budget_percent) {
            return Err(EnvError {
                var: "RETRY_BUDGET_PERCENT",
                value: retry_budget_percent.to_string(),
                expected: "a number from 0 to 1000",
            });
        }
        let ms = |var, default| -> Result<Duration, EnvError> {
            Ok(Duration::from_millis(u64::from(positive(
                &get, var, default,
            )?)))
        };
        let retry_initial = ms("RETRY_INITIAL_DELAY_MS", 100)?;
        let retry_max_delay = ms("RETRY_MAX_DELAY_MS", 5000)?;
        if retry_initial > retry_max_delay {
            return Err(EnvError {
                var: "RETRY_INITIAL_DELAY_MS",
                value: retry_initial.as_millis().to_string(),
                expected: "a delay no longer than RETRY_MAX_DELAY_MS",
            });
        }
        Ok(Self {
            addr: listen_addr(&get, 8000)?,
            upstream,
            retry_attempts: attempts,
            retry_initial,
            retry_multiplier,
            retry_budget_percent,
            retry_max_delay,
            attempt_timeout: ms("EXTERNAL_TIMEOUT_MS", 10_000)?,
            breaker_threshold: positive(&get, "CB_FAILURE_THRESHOLD", 5)?,
            breaker_reset: Duration::from_secs(u64::from(positive(
                &get,
                "CB_RESET_TIMEOUT_SECONDS",
                30,
            )?)),
            rate_limit: positive(&get, "RATE_LIMIT_MAX_REQUESTS", 10)?,
            rate_window: Duration::from_secs(u64::from(positive(
                &get,
                "RATE_LIMIT_WINDOW_SECONDS",
                60,
            )?)),
            trusted_proxies: crate::setup::trusted_proxies(&get)?,
            max_body_bytes: positive(&get, "MAX_BODY_BYTES", 1024 * 1024)? as usize,
            request_timeout: Duration::from_secs(u64::from(positive(
                &get,
                "REQUEST_TIMEOUT_SECONDS",
                30,
            )?)),
            body_timeout: Duration::from_secs(u64::from(positive(
                &get,
                "BODY_READ_TIMEOUT_SECONDS",
                10,
            )?)),
            json_logs: json_logs(&get)?,
        })
    }
}

/// The outbound client: one upstream call, with its retries and circuit.
pub(crate) type UpstreamClient =
    BoxCloneSyncService<http::Request<Full<Bytes>>, http::Response<Bytes>, BoxError>;

/// The most of an upstream answer's body the proxy reads (past it the attempt fails: the answer
/// is not the small JSON this proxy relays, and buffering it would be memory a client chose).
pub(crate) const MAX_UPSTREAM_BODY_BYTES: usize = 1024 * 1024;

/// The upstream's answer body went past [`MAX_UPSTREAM_BODY_BYTES`].
#[derive(Debug)]
struct UpstreamBodyTooLarge;

impl std::fmt::Display for UpstreamBodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "its answer is larger than {MAX_UPSTREAM_BODY_BYTES} bytes"
        )
    }
}

impl std::error::Error for UpstreamBodyTooLarge {}

/// The retries' verdicts: HTTP's (the statuses worth another attempt, transport errors, the
/// upstream's `Retry-After`), but an answer too large to relay is a failure not retried: it would
/// be as large again.
#[derive(Clone, Debug)]
struct ProxyClassifier(tower_rampart::classify::HttpClassifier);

impl tower_rampart::classify::Classify<http::Response<Bytes>, BoxError> for ProxyClassifier {
    fn classify(
        &self,
        result: &Result<http::Response<Bytes>, BoxError>,
    ) -> tower_rampart::classify::Verdict {
        match result {
            Err(e) if e.is::<UpstreamBodyTooLarge>() => {
                tower_rampart::classify::Verdict::failure(tower_rampart::classify::Reason::Error)
            }
            _ => tower_rampart::classify::Classify::classify(&self.0, result),
        }
    }

    fn record_attempts(&self, response: &mut http::Response<Bytes>, attempts: u32) {
        tower_rampart::classify::Classify::<_, BoxError>::record_attempts(
            &self.0, response, attempts,
        );
    }
}

/// The client stack, outermost first: the circuit breaker (an open circuit refuses before any
/// attempt; a request whose attempts are all spent is one failure; once the wait is over, two
/// probes must succeed to close it, as reference 004's `success_threshold` of 2), the retries
/// (reference 004's backoff and jitter, per-attempt timeout, a budget, the upstream's
/// `Retry-After` honoured), the hyper client
/// reading the whole answer (at most [`MAX_UPSTREAM_BODY_BYTES`]) within the attempt: an answer
/// whose body stalls or breaks off is a failed attempt like one whose head does.
pub(crate) fn upstream_client(
    config: &ProxyConfig,
) -> Result<(UpstreamClient, CircuitHandle), tower_rampart::ConfigError> {
    let breaker = CircuitBreakerLayer::builder()
        .name("external")
        .consecutive_failures(config.breaker_threshold)
        .wait_duration(config.breaker_reset)
        // Half-open, two probes are let through, and both must succeed to close the circuit (one
        // failure reopens it).
        .half_open_probes(HALF_OPEN_SUCCESSES)
        .classify(tower_rampart::classify::HttpClassifier::new())
        .build()?;
    let handle = breaker.handle();
    // The attempts and waits at their longest (a wait is at most 1.5 times the maximum delay),
    // but within 90% of the request's own timeout (a 408 would say the client was slow), so the
    // retries give up in time to answer the reference's 500. The timeout runs from the request's
    // arrival and this deadline from the body's: a body that took more than the other 10% to
    // arrive can still end in a 408.
    let deadline = (config.attempt_timeout * config.retry_attempts
        + config.retry_max_delay.mul_f64(1.5) * config.retry_attempts.saturating_sub(1))
    .min(config.request_timeout.mul_f64(0.9));
    // The standard policy without jitter: `AddedJitter` adds the reference's on top.
    let standard = RetryLayer::builder()
        .name("external")
        .max_attempts(config.retry_attempts)
        .exponential_backoff(
            config.retry_initial,
            config.retry_multiplier,
            config.retry_max_delay,
        )
        .jitter(Jitter::None)
        .budget(Budget::new(config.retry_budget_percent).min_per_second(10))
        .attempt_timeout(config.attempt_timeout)
        .deadline(deadline)
        .http()
        // The upstream's 500s are failures worth another attempt too.
        .classify(ProxyClassifier(
            tower_rampart::classify::HttpClassifier::new().retry_statuses(
                [500, 502, 503, 504, 429].map(|s| http::StatusCode::from_u16(s).unwrap()),
            ),
        ))
        .build()?;
    // Timeouts and the client's errors come back as errors carrying the attempt count.
    let retry = RetryLayer::custom(AddedJitter::new(standard))
        .name("external")
        .rejection(AsError)
        .build()?;
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build_http();
    let whole_answers = tower::service_fn(move |req: http::Request<Full<Bytes>>| {
        let client = client.clone();
        async move {
            let res = client.request(req).await?;
            let (parts, body) = res.into_parts();
            let body = http_body_util::Limited::new(body, MAX_UPSTREAM_BODY_BYTES)
                .collect()
                .await
                .map_err(|e| -> BoxError {
                    if e.is::<http_body_util::LengthLimitError>() {
                        Box::new(UpstreamBodyTooLarge)
                    } else {
                        e
                    }
                })?
                .to_bytes();
            Ok::<_, BoxError>(http::Response::from_parts(parts, body))
        }
    });
    let stack = ServiceBuilder::new()
        .layer(breaker)
        .layer(retry)
        .service(whole_answers);
    Ok((BoxCloneSyncService::new(stack), handle))
}

/// Half-open successes that close the circuit (reference 004's `success_threshold`).
pub(crate) const HALF_OPEN_SUCCESSES: u32 = 2;

/// Shared state of the routes.
#[derive(Clone)]
pub(crate) struct Proxy {
    pub(crate) upstream: http::Uri,
    pub(crate) client: UpstreamClient,
    pub(crate) breaker: CircuitHandle,
}

/// An error answer: `{"status":"error","message":...}`.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({ "status": "error", "message": message.into() })),
    )
        .into_response()
}

/// Whether `headers` say the body is JSON (`application/json` or `application/<x>+json`).
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| {
            m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
        })
}

/// Reads and checks the body before the rate limiter sees the request, so a request that cannot
/// be forwarded spends no quota: 415 unless it says it is JSON, 413 past `MAX_BODY_BYTES`, 408 when
/// it stops arriving, 400 when it is not JSON. The JSON goes on as an extension.
async fn validate_json(req: axum::extract::Request, next: Next) -> Response {
    if !is_json(req.headers()) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected a JSON body, with `Content-Type: application/json`.",
        );
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => {
            let inner = e.into_inner();
            return if inner.is::<http_body_util::LengthLimitError>() {
                error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "The request body is over MAX_BODY_BYTES.",
                )
            } else if caused_by::<crate::setup::BodyBudgetExceeded>(&*inner) {
                // The server holds MAX_BUFFERED_BODY_BYTES of bodies already: nothing forwarded,
                // no quota spent; the client tries again shortly.
                let mut res = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Too many request bodies in flight; try again shortly.",
                );
                res.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                res
            } else if caused_by::<tower_http::timeout::TimeoutError>(&*inner) {
                // The body stopped arriving (`BODY_READ_TIMEOUT_SECONDS`): 408, as a whole request
                // that takes too long gets.
                error(
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body was not received in time",
                )
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("Could not read the request body: {inner}"),
                )
            };
        }
    };
    match serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        Ok(_) => {
            // Checked, and forwarded as it came: parsed and written again, keys would be
            // reordered, duplicates merged and integers past 2^53 rounded.
            parts.extensions.insert(JsonBody(bytes));
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::empty(),
            ))
            .await
        }
        Err(e) => error(
            StatusCode::BAD_REQUEST,
            format!("The request body is not valid JSON: {e}"),
        ),
    }
}

/// Gives an error answer that is not JSON (the router's empty 404 and 405, the body limit's
/// plain-text 413, the timeout's empty 408) the proxy's error shape.
fn json_errors<B>(res: http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let status = res.status();
    if status.as_u16() < 400 || is_json(res.headers()) {
        return res.map(axum::body::Body::new);
    }
    let (mut parts, _) = res.into_parts();
    let mut answer = error(status, status.canonical_reason().unwrap_or("Error"));
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.headers.extend(answer.headers_mut().drain());
    Response::from_parts(parts, std::mem::take(answer.body_mut()))
}

/// The proxy's routes and layers for `config`.
pub(crate) fn router(
    config: &ProxyConfig,
) -> Result<(Router, CircuitHandle), tower_rampart::ConfigError> {
    let (client, breaker) = upstream_client(config)?;
    let state = Proxy {
        upstream: config.upstream.clone(),
        client,
        breaker: breaker.clone(),
    };
    let limit = RateLimitLayer::builder()
        .name("proxy")
        .quota(Quota::with_period(config.rate_limit, config.rate_window))
        .key(ClientIp::new().trusted_proxies(&config.trusted_proxies))
        .rejection(AsHttp::new().json_body(|r| {
            match r.kind() {
                RejectionKind::RateLimited => {
                    r#"{"status":"error","message":"Rate limit exceeded. Please try again later."}"#
                        .to_owned()
                }
                _ => json!({ "status": "error", "message": r.to_string() }).to_string(),
            }
        }))
        .build()?;
    let router = Router::new()
        // The body is checked before the limiter: a request that cannot be forwarded spends no
        // quota.
        .route(
            "/api/proxy/data",
            post(proxy_data).route_layer(
                ServiceBuilder::new()
                    .layer(axum::middleware::from_fn(validate_json))
                    .layer(limit),
            ),
        )
        .route("/health", get(health))
        .route("/api/health", get(health))
        .route("/api/circuit-breaker/status", get(status))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(TraceLayer::new_for_http())
                .map_response(json_errors)
                .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
                // A slow client holds the proxy for at most these: no piece of its body may take
                // longer than the body timeout, nor the whole request longer than the request
                // timeout.
                .layer(TimeoutLayer::with_status_code(
                    StatusCode::REQUEST_TIMEOUT,
                    config.request_timeout,
                ))
                .layer(RequestBodyTimeoutLayer::new(config.body_timeout)),
        );
    Ok((router, breaker))
}

/// A request body checked to be JSON, as the client sent it.
#[derive(Clone)]
struct JsonBody(Bytes);

/// `POST /api/proxy/data`: forwards the JSON body upstream, unchanged, and wraps its answer.
async fn proxy_data(
    State(proxy): State<Proxy>,
    headers: http::HeaderMap,
    Extension(JsonBody(bytes)): Extension<JsonBody>,
) -> Response {
    // One key for every attempt of this request, so the upstream can recognise a repeat; the
    // header also marks the POST as safe to retry.
    let key = headers
        .get("idempotency-key")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_str(&uuid_v4()).expect("a uuid is a header value"));
    let req = http::Request::post(proxy.upstream.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(Full::new(bytes))
        .expect("a valid request");
    match proxy.client.oneshot(req).await {
        Ok(res) => {
            let attempts = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
            let status = res.status();
            // Read whole within the attempt (see `upstream_client`).
            let body = res.into_body();
            let external: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            if status.is_success() {
                (
                    StatusCode::OK,
                    [("x-upstream-attempts", attempts.to_string())],
                    Json(json!({
                        "status": "success",
                        "external_response": external,
                        "proxy_notes": notes(&proxy.breaker),
                    })),
                )
                    .into_response()
            } else {
                let failure = format!("status={}", status.as_u16());
                tracing::warn!(attempts, %failure, "the external service call failed");
                retries_exhausted(&proxy.breaker, attempts, &failure)
            }
        }
        Err(e) => failure(&proxy.breaker, &e),
    }
}

/// `proxy_notes`, as reference 004 writes it: `Circuit breaker state: CLOSED` (the state after
/// this call is counted). How many attempts it took is in `x-upstream-attempts`.
fn notes(breaker: &CircuitHandle) -> String {
    match json!(breaker.state()) {
        Value::String(state) => format!("Circuit breaker state: {state}"),
        other => format!("Circuit breaker state: {other}"),
    }
}

/// Reference 004's answer when the upstream call failed, however it failed (a failure status
/// after the retries, attempts timed out, no connection, an answer too large to relay): 500
/// `{"status":"error","message":"An unexpected error occurred.","circuit_state":S}`, `S` the
/// circuit's state once this failure is counted (`CLOSED`, or `OPEN` when it was the one that
/// opened the circuit, ...). The body is exactly the reference's; what went wrong is in the log
/// and in two headers: `x-upstream-attempts` (the attempts made) and `x-upstream-failure`
/// (`status=<code>`, `timeout`, `too-large` or `unreachable`).
fn retries_exhausted(breaker: &CircuitHandle, attempts: u32, failure: &str) -> Response {
    let mut res = (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({
            "status": "error",
            "message": "An unexpected error occurred.",
            "circuit_state": breaker.state(),
        })),
    )
        .into_response();
    let headers = res.headers_mut();
    headers.insert("x-upstream-attempts", attempts.into());
    if let Ok(failure) = HeaderValue::from_str(failure) {
        headers.insert("x-upstream-failure", failure);
    }
    res
}

/// The answer to a request that got no response from the upstream: 503 while the circuit is open,
/// otherwise [`retries_exhausted`].
fn failure(breaker: &CircuitHandle, e: &BoxError) -> Response {
    if let Some(open) = e.downcast_ref::<CircuitOpen>() {
        let mut res = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "External service is currently unavailable (Circuit Open).",
        );
        if let Some(after) = open.retry_after() {
            res.headers_mut().insert(
                http::header::RETRY_AFTER,
                (after.as_secs() + u64::from(after.subsec_nanos() > 0))
                    .max(1)
                    .into(),
            );
        }
        return res;
    }
    let attempts = tower_rampart::retry::error::attempts(e.as_ref()).unwrap_or(1);
    let failure = if caused_by::<UpstreamBodyTooLarge>(e.as_ref()) {
        "too-large"
    } else if e.is::<AttemptTimedOut>() {
        "timeout"
    } else {
        "unreachable"
    };
    let cause = e
        .downcast_ref::<LastError>()
        .map_or_else(|| e.to_string(), |l| l.get_ref().to_string());
    tracing::warn!(attempts, failure, %cause, "the external service call failed");
    retries_exhausted(breaker, attempts, failure)
}

/// `GET /health`, `GET /api/health`.
async fn health(State(proxy): State<Proxy>) -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "circuit_breaker_state": proxy.breaker.state(),
    }))
}

/// `GET /api/circuit-breaker/status`.
async fn status(State(proxy): State<Proxy>) -> Json<Value> {
    Json(serde_json::to_value(proxy.breaker.snapshot()).expect("a snapshot serialises"))
}

/// A random (version 4) UUID, from the process's random source.
fn uuid_v4() -> String {
    let mut bytes = [0u8; 16];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes()[..chunk.len()]);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
