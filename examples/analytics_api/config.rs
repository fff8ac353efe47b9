//! Configuration from the environment. A bad value stops start-up with a message naming the variable.
//! Shared with `examples/grpc_analytics` (included by path).

use std::net::SocketAddr;
use std::time::Duration;

use tower_rampart::backend::FailurePolicy;

use crate::setup::{json_logs, listen_addr, parse, positive, rate};

/// Everything the service reads from its environment.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// `BIND` (default `0.0.0.0`) and `PORT` (default `8000`).
    pub(crate) addr: SocketAddr,
    /// `RATE_LIMIT_REQUESTS` (default 10) metric submissions per `RATE_LIMIT_WINDOW_SECONDS` (60) per client.
    pub(crate) metrics_limit: u32,
    pub(crate) metrics_window: Duration,
    /// `RATE_LIMIT` events per minute per client (default 1500).
    pub(crate) events_per_minute: u32,
    /// `API_V1_RATE_LIMIT` requests per minute per client under `/api/v1` (default 100).
    pub(crate) api_v1_per_minute: u32,
    /// `CACHE_TTL_SECONDS` (default 300): how long cached summaries are served.
    pub(crate) cache_ttl: Duration,
    /// `EXTERNAL_SERVICE_FAILURE_RATE` (0.0 to 1.0, default 0.2) and `EXTERNAL_SERVICE_LATENCY_MS`
    /// (default 50): the simulated dependency behind `/external`.
    pub(crate) external_failure_rate: f64,
    pub(crate) external_latency: Duration,
    /// `EXTERNAL_SERVICE_TIMEOUT` (whole seconds below `REQUEST_TIMEOUT_SECONDS`; default 5, or
    /// nine tenths of a shorter request timeout): a call to
    /// the dependency that takes longer fails (and counts against its circuit), so that a hung
    /// dependency opens the circuit instead of holding every request until its own timeout.
    pub(crate) external_timeout: Duration,
    /// `CIRCUIT_BREAKER_FAILURE_THRESHOLD` failures in a row (default 5) open the circuit for
    /// `CIRCUIT_BREAKER_RESET_TIMEOUT` seconds (default 30).
    pub(crate) breaker_threshold: u32,
    pub(crate) breaker_reset: Duration,
    /// `TRUSTED_PROXIES`: comma-separated CIDRs whose `X-Forwarded-For` is believed (default none).
    pub(crate) trusted_proxies: Vec<String>,
    /// `MAX_BODY_BYTES` (default 64 KiB).
    pub(crate) max_body_bytes: usize,
    /// `MAX_STORED_METRICS` (default 1,000,000): the most metrics kept, in memory or in Redis;
    /// each one stored past it forgets the oldest stored.
    pub(crate) max_stored_metrics: usize,
    /// `REQUEST_TIMEOUT_SECONDS` (default 10).
    pub(crate) request_timeout: Duration,
    /// `LOG_FORMAT=json` for JSON logs (default human-readable).
    pub(crate) json_logs: bool,
    /// `REDIS_URL`; else, as the references name it, `REDIS_HOST` (with `REDIS_PORT`, default
    /// 6379, and `REDIS_DB`, default 0) or `REDIS_ADDR` (`host:port`). None of them: in memory.
    pub(crate) redis_url: Option<String>,
    /// Variables the references read that are set here but not read by this example, each with
    /// the one that does the job here: `main` logs them, so that a deployment carried over from a
    /// reference does not lose a setting silently.
    pub(crate) not_read: Vec<(&'static str, &'static str)>,
    /// `REDIS_TIMEOUT_MS` (default 250): how long any one Redis call may take.
    pub(crate) redis_timeout: Duration,
    /// `RATE_LIMIT_FAILURE_POLICY`: what the limits do while Redis is unreachable, `open` (let
    /// requests through), `closed` (refuse with 503) or `local` (limit in memory; the default).
    pub(crate) rate_limit_failure_policy: FailurePolicy,
    /// `HEADER_READ_TIMEOUT_SECS` (10), `IDLE_TIMEOUT_SECS` (60), `MAX_CONNECTIONS` (1024), `SHUTDOWN_GRACE_SECS` (10): how
    /// the server treats connections.
    pub(crate) server: crate::setup::ServerLimits,
}

/// A variable that could not be used.
pub(crate) type ConfigError = crate::setup::EnvError;

impl Config {
    /// Reads the process environment (`PORT` defaulting to 8000).
    #[allow(
        dead_code,
        reason = "grpc_analytics, sharing this file, has another default port"
    )]
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_env_on(8000)
    }

    /// Reads the process environment, `PORT` defaulting to `default_port`.
    pub(crate) fn from_env_on(default_port: u16) -> Result<Self, ConfigError> {
        Self::from_lookup_on(|k| std::env::var(k).ok(), default_port)
    }

    /// Reads variables through `get` (tests pass a map), `PORT` defaulting to 8000.
    #[allow(dead_code, reason = "used by the tests")]
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_lookup_on(get, 8000)
    }

    /// Reads variables through `get`, `PORT` defaulting to `default_port`.
    pub(crate) fn from_lookup_on(
        get: impl Fn(&str) -> Option<String>,
        default_port: u16,
    ) -> Result<Self, ConfigError> {
        let addr = listen_addr(&get, default_port)?;
        let metrics_limit = positive(&get, "RATE_LIMIT_REQUESTS", 10)?;
        let window = positive(&get, "RATE_LIMIT_WINDOW_SECONDS", 60)?;
        let events_per_minute = positive(&get, "RATE_LIMIT", 1500)?;
        let api_v1_per_minute = positive(&get, "API_V1_RATE_LIMIT", 100)?;
        let cache_ttl = positive(&get, "CACHE_TTL_SECONDS", 300)?;
        let external_failure_rate = rate(&get, "EXTERNAL_SERVICE_FAILURE_RATE", 0.2)?;
        let external_latency_ms: u64 = parse(
            &get,
            "EXTERNAL_SERVICE_LATENCY_MS",
            50,
            "a whole number of milliseconds",
        )?;
        let breaker_threshold = positive(&get, "CIRCUIT_BREAKER_FAILURE_THRESHOLD", 5)?;
        let breaker_reset = positive(&get, "CIRCUIT_BREAKER_RESET_TIMEOUT", 30)?;
        let redis_timeout_ms = positive(&get, "REDIS_TIMEOUT_MS", 250)?;
        let rate_limit_failure_policy = parse(
            &get,
            "RATE_LIMIT_FAILURE_POLICY",
            FailurePolicy::Local,
            "`open`, `closed` or `local`",
        )?;
        let trusted_proxies = crate::setup::trusted_proxies(&get)?;
        let max_body_bytes = positive(&get, "MAX_BODY_BYTES", 64 * 1024)? as usize;
        let max_stored_metrics = positive(
            &get,
            "MAX_STORED_METRICS",
            crate::storage::MAX_METRICS as u32,
        )? as usize;
        let timeout = positive(&get, "REQUEST_TIMEOUT_SECONDS", 10)?;
        let request_timeout = Duration::from_secs(u64::from(timeout));
        // Unset: 5 s, or nine tenths of a shorter request timeout (so that the fallback is
        // answered before the request times out).
        let external_timeout = if get("EXTERNAL_SERVICE_TIMEOUT").is_some() {
            let secs = positive(&get, "EXTERNAL_SERVICE_TIMEOUT", 5)?;
            if secs >= timeout {
                return Err(ConfigError {
                    var: "EXTERNAL_SERVICE_TIMEOUT",
                    value: secs.to_string(),
                    expected: "a whole number of seconds below REQUEST_TIMEOUT_SECONDS",
                });
            }
            Duration::from_secs(u64::from(secs))
        } else {
            Duration::from_secs(5).min(request_timeout * 9 / 10)
        };
        let json_logs = json_logs(&get)?;
        let server = crate::setup::ServerLimits::from_env(&get)?;
        server.check_body_bound(max_body_bytes)?;
        Ok(Self {
            addr,
            metrics_limit,
            metrics_window: Duration::from_secs(u64::from(window)),
            events_per_minute,
            api_v1_per_minute,
            cache_ttl: Duration::from_secs(u64::from(cache_ttl)),
            external_failure_rate,
            external_latency: Duration::from_millis(external_latency_ms),
            external_timeout,
            breaker_threshold,
            breaker_reset: Duration::from_secs(u64::from(breaker_reset)),
            trusted_proxies,
            max_body_bytes,
            max_stored_metrics,
            request_timeout: Duration::from_secs(u64::from(timeout)),
            json_logs,
            redis_url: redis_url(&get)?,
            not_read: NOT_READ
                .iter()
                .copied()
                .filter(|(name, _)| get(name).is_some())
                .collect(),
            redis_timeout: Duration::from_millis(u64::from(redis_timeout_ms)),
            rate_limit_failure_policy,
            server,
        })
    }
}

/// The references' variables this example does not read, and what to set instead.
const NOT_READ: [(&str, &str); 10] = [
    ("CB_FAILURE_THRESHOLD", "CIRCUIT_BREAKER_FAILURE_THRESHOLD"),
    ("CB_RESET_TIMEOUT", "CIRCUIT_BREAKER_RESET_TIMEOUT"),
    ("RATE_WINDOW", "RATE_LIMIT_WINDOW_SECONDS"),
    ("CACHE_TTL", "CACHE_TTL_SECONDS"),
    ("APP_REDIS_ADDR", "REDIS_URL"),
    ("APP_HTTP_PORT", "PORT"),
    ("APP_HOST", "BIND"),
    ("APP_PORT", "PORT"),
    ("LOG_LEVEL", "RUST_LOG"),
    (
        "APP_MYSQL_DSN",
        "REDIS_URL (this service keeps its data in memory or Redis)",
    ),
];

/// `REDIS_URL`, or the URL the references' `REDIS_HOST` / `REDIS_PORT` / `REDIS_DB` (reference
/// 000 and 001) or `REDIS_ADDR` (003, `host:port`) describe; `None` when none is set.
fn redis_url(get: &impl Fn(&str) -> Option<String>) -> Result<Option<String>, ConfigError> {
    let set = |var| get(var).filter(|s: &String| !s.trim().is_empty());
    if let Some(url) = set("REDIS_URL") {
        return Ok(Some(url));
    }
    if let Some(host) = set("REDIS_HOST") {
        let port: u16 = parse(get, "REDIS_PORT", 6379, "a port number (0-65535)")?;
        let db: u32 = parse(get, "REDIS_DB", 0, "a database number")?;
        if host.contains(['/', '@', ' ']) {
            return Err(ConfigError {
                var: "REDIS_HOST",
                value: host,
                expected: "a host name or address (or set REDIS_URL)",
            });
        }
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]") // an IPv6 address
        } else {
            host
        };
        return Ok(Some(format!("redis://{host}:{port}/{db}")));
    }
    if let Some(addr) = set("REDIS_ADDR") {
        if addr.contains(['/', '@', ' ']) || !addr.contains(':') {
            return Err(ConfigError {
                var: "REDIS_ADDR",
                value: addr,
                expected: "host:port (or set REDIS_URL)",
            });
        }
        return Ok(Some(format!("redis://{addr}")));
    }
    Ok(None)
}
