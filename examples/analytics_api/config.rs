//! Configuration from the environment. A bad value stops start-up with a message naming the variable.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

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
    /// `TRUSTED_PROXIES`: comma-separated CIDRs whose `X-Forwarded-For` is believed (default none).
    pub(crate) trusted_proxies: Vec<String>,
    /// `MAX_BODY_BYTES` (default 64 KiB).
    pub(crate) max_body_bytes: usize,
    /// `REQUEST_TIMEOUT_SECONDS` (default 10).
    pub(crate) request_timeout: Duration,
    /// `LOG_FORMAT=json` for JSON logs (default human-readable).
    pub(crate) json_logs: bool,
    /// `REDIS_URL`, if set.
    pub(crate) redis_url: Option<String>,
}

/// A variable that could not be used.
#[derive(Debug)]
pub(crate) struct ConfigError {
    var: &'static str,
    value: String,
    expected: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment.
    pub(crate) fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads variables through `get` (tests pass a map).
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let bind: IpAddr = parse(&get, "BIND", "0.0.0.0".parse().unwrap(), "an IP address")?;
        let port: u16 = parse(&get, "PORT", 8000, "a port number (0-65535)")?;
        let metrics_limit = positive(&get, "RATE_LIMIT_REQUESTS", 10)?;
        let window = positive(&get, "RATE_LIMIT_WINDOW_SECONDS", 60)?;
        let events_per_minute = positive(&get, "RATE_LIMIT", 1500)?;
        let trusted_proxies = get("TRUSTED_PROXIES")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let max_body_bytes = positive(&get, "MAX_BODY_BYTES", 64 * 1024)? as usize;
        let timeout = positive(&get, "REQUEST_TIMEOUT_SECONDS", 10)?;
        let json_logs = match get("LOG_FORMAT").as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError {
                    var: "LOG_FORMAT",
                    value: other.into(),
                    expected: "`text` or `json`",
                });
            }
        };
        Ok(Self {
            addr: SocketAddr::new(bind, port),
            metrics_limit,
            metrics_window: Duration::from_secs(u64::from(window)),
            events_per_minute,
            trusted_proxies,
            max_body_bytes,
            request_timeout: Duration::from_secs(u64::from(timeout)),
            json_logs,
            redis_url: get("REDIS_URL").filter(|s| !s.is_empty()),
        })
    }
}

fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| ConfigError {
            var,
            value: v,
            expected,
        }),
    }
}

fn positive(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u32,
) -> Result<u32, ConfigError> {
    let n: u32 = parse(get, var, default, "a whole number from 1 to 4294967295")?;
    if n == 0 {
        return Err(ConfigError {
            var,
            value: "0".into(),
            expected: "a whole number from 1 to 4294967295",
        });
    }
    Ok(n)
}
