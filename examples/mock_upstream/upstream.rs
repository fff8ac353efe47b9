//! A flaky upstream for `proxy_service`: `POST /external-api/process` answers 200
//! `{"status":"success","received_data":...,"processed_at":<epoch seconds>,"message":"Data
//! processed successfully by external service"}` (reference 004's mock), or fails at
//! `EXTERNAL_FAIL_RATE`, mostly with a 500, sometimes with a 503 and `Retry-After`. `GET /stats`
//! counts what it saw, so tests (and curious users) can check how many attempts a proxy made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::setup::{EnvError, json_logs, listen_addr, parse, rate};

/// The upstream's configuration.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamConfig {
    /// `BIND` and `PORT` (default 5001).
    pub(crate) addr: std::net::SocketAddr,
    /// `EXTERNAL_FAIL_RATE`: the share of requests that fail, 0.0 to 1.0 (default 0.2, as the
    /// reference's mock); the rate at
    /// start, [`UpstreamHandle::set_fail_rate`] changes it.
    pub(crate) fail_rate: f64,
    /// `EXTERNAL_LATENCY_MS`: how long each answer takes (default 50, as the reference's mock).
    pub(crate) latency: Duration,
    /// `EXTERNAL_UNAVAILABLE_SHARE`: the share of failures answered 503 with `Retry-After` rather
    /// than 500 (default 0.25).
    pub(crate) unavailable_share: f64,
    /// `EXTERNAL_RETRY_AFTER_SECONDS`: the `Retry-After` of those 503s (default 1).
    pub(crate) retry_after_secs: u32,
    /// `EXTERNAL_SEED`: makes the sequence of failures repeatable (default: from the clock).
    pub(crate) seed: Option<u64>,
    /// `LOG_FORMAT=json` for JSON logs.
    pub(crate) json_logs: bool,
}

impl UpstreamConfig {
    /// Reads variables through `get`.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        Ok(Self {
            addr: listen_addr(&get, 5001)?,
            fail_rate: rate(&get, "EXTERNAL_FAIL_RATE", 0.2)?,
            latency: Duration::from_millis(parse(
                &get,
                "EXTERNAL_LATENCY_MS",
                50,
                "a whole number of milliseconds",
            )?),
            unavailable_share: rate(&get, "EXTERNAL_UNAVAILABLE_SHARE", 0.25)?,
            retry_after_secs: parse(
                &get,
                "EXTERNAL_RETRY_AFTER_SECONDS",
                1,
                "a whole number of seconds",
            )?,
            seed: match get("EXTERNAL_SEED") {
                None => None,
                Some(_) => Some(parse(&get, "EXTERNAL_SEED", 0, "a whole number")?),
            },
            json_logs: json_logs(&get)?,
        })
    }
}

/// What the upstream has seen.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) requests: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) unavailable: AtomicU64,
}

/// Steers a running upstream: what it has seen, and its failure rate.
#[derive(Clone, Debug)]
pub(crate) struct UpstreamHandle {
    pub(crate) counts: Arc<Counts>,
    fail_rate: Arc<AtomicU64>,
}

impl UpstreamHandle {
    /// Changes the share of requests that fail (0.0 to 1.0).
    #[allow(dead_code, reason = "used by the proxy tests")]
    pub(crate) fn set_fail_rate(&self, rate: f64) {
        assert!((0.0..=1.0).contains(&rate), "a failure rate is from 0 to 1");
        self.fail_rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Requests received so far.
    #[allow(dead_code, reason = "used by the proxy tests")]
    pub(crate) fn requests(&self) -> u64 {
        self.counts.requests.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
struct Upstream {
    config: UpstreamConfig,
    handle: UpstreamHandle,
    dice: Arc<AtomicU64>,
}

impl Upstream {
    /// A number in [0, 1) (splitmix64).
    fn roll(&self) -> f64 {
        let mut z = self
            .dice
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The upstream's routes, and a handle on it.
pub(crate) fn router(config: UpstreamConfig) -> (Router, UpstreamHandle) {
    let seed = config.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let handle = UpstreamHandle {
        counts: Arc::new(Counts::default()),
        fail_rate: Arc::new(AtomicU64::new(config.fail_rate.to_bits())),
    };
    let state = Upstream {
        config,
        handle: handle.clone(),
        dice: Arc::new(AtomicU64::new(seed)),
    };
    let router = Router::new()
        .route("/external-api/process", post(process))
        .route(
            "/health",
            get(|| async { Json(json!({"status": "healthy"})) }),
        )
        .route("/stats", get(stats))
        .with_state(state);
    (router, handle)
}

async fn process(State(up): State<Upstream>, body: axum::body::Bytes) -> Response {
    let counts = &up.handle.counts;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if !up.config.latency.is_zero() {
        tokio::time::sleep(up.config.latency).await;
    }
    let received: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"status": "error", "message": format!("invalid JSON: {e}")})),
            )
                .into_response();
        }
    };
    let fail_rate = f64::from_bits(up.handle.fail_rate.load(Ordering::Relaxed));
    if fail_rate > 0.0 && up.roll() < fail_rate {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        if up.roll() < up.config.unavailable_share {
            counts.unavailable.fetch_add(1, Ordering::Relaxed);
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, up.config.retry_after_secs.to_string())],
                Json(json!({"status": "error", "message": "Simulated external service overload"})),
            )
                .into_response();
        }
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"status": "error", "message": "Simulated external service failure"})),
        )
            .into_response();
    }
    counts.succeeded.fetch_add(1, Ordering::Relaxed);
    // As reference 004's mock: `processed_at` is Python's `time.time()`, seconds since the Unix
    // epoch as a number (with a fraction).
    let processed_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    Json(json!({
        "status": "success",
        "received_data": received,
        "processed_at": processed_at,
        "message": "Data processed successfully by external service",
    }))
    .into_response()
}

async fn stats(State(up): State<Upstream>) -> Json<Value> {
    let c = &up.handle.counts;
    Json(json!({
        "requests": c.requests.load(Ordering::Relaxed),
        "succeeded": c.succeeded.load(Ordering::Relaxed),
        "failed": c.failed.load(Ordering::Relaxed),
        "unavailable": c.unavailable.load(Ordering::Relaxed),
    }))
}
