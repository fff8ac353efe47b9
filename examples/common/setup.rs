//! What every example does the same way: reading its environment (a bad value stops start-up
//! with a message naming the variable), `BIND`/`PORT`, logging, and waiting for Ctrl-C or SIGTERM.
//! Included by path (`#[path = "../common/setup.rs"] mod setup;`).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// A variable that could not be used.
#[derive(Debug)]
pub(crate) struct EnvError {
    pub(crate) var: &'static str,
    pub(crate) value: String,
    pub(crate) expected: &'static str,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid {}={:?}: expected {}",
            self.var, self.value, self.expected
        )
    }
}

impl std::error::Error for EnvError {}

/// `var` parsed as a `T`, or `default` when unset.
pub(crate) fn parse<T: FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: T,
    expected: &'static str,
) -> Result<T, EnvError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| EnvError {
            var,
            value: v,
            expected,
        }),
    }
}

/// `var` as a whole number of at least 1, or `default` when unset.
pub(crate) fn positive(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: u32,
) -> Result<u32, EnvError> {
    const EXPECTED: &str = "a whole number from 1 to 4294967295";
    let n: u32 = parse(get, var, default, EXPECTED)?;
    if n == 0 {
        return Err(EnvError {
            var,
            value: "0".into(),
            expected: EXPECTED,
        });
    }
    Ok(n)
}

/// `var` as a number from 0.0 to 1.0, or `default` when unset.
pub(crate) fn rate(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    default: f64,
) -> Result<f64, EnvError> {
    const EXPECTED: &str = "a number from 0.0 to 1.0";
    let r: f64 = parse(get, var, default, EXPECTED)?;
    if !(0.0..=1.0).contains(&r) {
        return Err(EnvError {
            var,
            value: r.to_string(),
            expected: EXPECTED,
        });
    }
    Ok(r)
}

/// `BIND` (default `0.0.0.0`) and `PORT` (default `default_port`).
pub(crate) fn listen_addr(
    get: &impl Fn(&str) -> Option<String>,
    default_port: u16,
) -> Result<SocketAddr, EnvError> {
    let bind: IpAddr = parse(get, "BIND", IpAddr::from([0, 0, 0, 0]), "an IP address")?;
    let port: u16 = parse(get, "PORT", default_port, "a port number (0-65535)")?;
    Ok(SocketAddr::new(bind, port))
}

/// How the examples' servers treat connections (`examples/common/serve.rs` for HTTP, and the gRPC
/// example's own): a header read timeout, caps on open connections (in all and per client), on
/// HTTP/2 streams and on buffered request bodies, and a grace period for shutdown.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServerLimits {
    /// A connection's first request must have arrived (its whole head) this long after it was
    /// accepted, and every later request head within this long of its first byte.
    pub(crate) header_read_timeout: Duration,
    /// An HTTP/2 connection with no request in flight (nor a response still being sent) for this
    /// long is closed (HTTP/1's idle connections go at the header read timeout: hyper's).
    pub(crate) idle_timeout: Duration,
    pub(crate) max_connections: usize,
    /// Connections one client address (an IPv6 one by its /64) may hold open at once: past it, a
    /// new one is closed at once. One client cannot take every place under `max_connections`.
    /// Behind a reverse proxy every connection comes from the proxy: raise it to
    /// `max_connections` there.
    pub(crate) max_connections_per_ip: usize,
    /// Requests an HTTP/2 connection may have in flight at once.
    pub(crate) max_streams_per_connection: u32,
    /// Request body bytes the server holds at once, across every request still reading its body
    /// (HTTP servers; the gRPC example bounds its messages instead): past it, a body's next bytes
    /// fail its read (the apps answer `503`), so that clients sending bodies slowly cannot make
    /// the server buffer `max_connections` x streams x `MAX_BODY_BYTES`.
    pub(crate) max_buffered_body_bytes: usize,
    pub(crate) shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1_024,
            max_connections_per_ip: 256,
            max_streams_per_connection: 32,
            max_buffered_body_bytes: 64 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerLimits {
    /// `HEADER_READ_TIMEOUT_SECS`, `IDLE_TIMEOUT_SECS`, `MAX_CONNECTIONS`,
    /// `MAX_CONNECTIONS_PER_IP`, `MAX_STREAMS_PER_CONNECTION`, `MAX_BUFFERED_BODY_BYTES` and
    /// `SHUTDOWN_GRACE_SECS`, each a whole number of at least 1.
    pub(crate) fn from_env(get: &impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let d = Self::default();
        let secs = |var, default: Duration| {
            positive(get, var, default.as_secs() as u32).map(|s| Duration::from_secs(s.into()))
        };
        Ok(Self {
            header_read_timeout: secs("HEADER_READ_TIMEOUT_SECS", d.header_read_timeout)?,
            idle_timeout: secs("IDLE_TIMEOUT_SECS", d.idle_timeout)?,
            max_connections: positive(get, "MAX_CONNECTIONS", d.max_connections as u32)? as usize,
            max_connections_per_ip: positive(
                get,
                "MAX_CONNECTIONS_PER_IP",
                d.max_connections_per_ip as u32,
            )? as usize,
            max_streams_per_connection: positive(
                get,
                "MAX_STREAMS_PER_CONNECTION",
                d.max_streams_per_connection,
            )?,
            max_buffered_body_bytes: positive(
                get,
                "MAX_BUFFERED_BODY_BYTES",
                d.max_buffered_body_bytes as u32,
            )? as usize,
            shutdown_grace: secs("SHUTDOWN_GRACE_SECS", d.shutdown_grace)?,
        })
    }
}

/// `TRUSTED_PROXIES`: comma-separated CIDRs or IP addresses (default none); a bad one is refused
/// naming the variable.
pub(crate) fn trusted_proxies(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<String>, EnvError> {
    let Some(value) = get("TRUSTED_PROXIES") else {
        return Ok(Vec::new());
    };
    let list: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if list
        .iter()
        .any(|e| e.parse::<ipnet::IpNet>().is_err() && e.parse::<IpAddr>().is_err())
    {
        return Err(EnvError {
            var: "TRUSTED_PROXIES",
            value,
            expected: "comma-separated CIDRs (\"10.0.0.0/8\") or IP addresses",
        });
    }
    Ok(list)
}

/// `LOG_FORMAT`: `text` (default) or `json`; true for JSON.
pub(crate) fn json_logs(get: &impl Fn(&str) -> Option<String>) -> Result<bool, EnvError> {
    match get("LOG_FORMAT").as_deref() {
        None | Some("text") => Ok(false),
        Some("json") => Ok(true),
        Some(other) => Err(EnvError {
            var: "LOG_FORMAT",
            value: other.into(),
            expected: "`text` or `json`",
        }),
    }
}

/// Logs to stdout (one line per event, for a container runtime or a log shipper to collect),
/// filtered by `RUST_LOG` (default `info`), as text or JSON.
#[allow(
    dead_code,
    reason = "the tests include this file without starting a program"
)]
pub(crate) fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info,tower_rampart=info"));
    if json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
}

/// Resolves on Ctrl-C or SIGTERM.
#[allow(
    dead_code,
    reason = "the tests include this file without starting a program"
)]
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down: draining in-flight requests");
}

/// A client's share of the request body budget: at most this fraction of
/// `MAX_BUFFERED_BODY_BYTES` held by one client address, so that one client sending bodies slowly
/// (32 HTTP/2 streams on each of its connections) cannot hold it all and have every other
/// client's bodies refused.
#[allow(dead_code)] // HTTP servers only
pub(crate) const CLIENT_SHARES: usize = 8;

impl ServerLimits {
    /// Refuses a body bound no client's share of the body budget could take (`MAX_BODY_BYTES`
    /// above `MAX_BUFFERED_BODY_BYTES` / 8): every body that large would be refused with 503.
    #[allow(dead_code)] // HTTP servers only
    pub(crate) fn check_body_bound(&self, max_body_bytes: usize) -> Result<(), EnvError> {
        if self.max_buffered_body_bytes / CLIENT_SHARES < max_body_bytes {
            return Err(EnvError {
                var: "MAX_BUFFERED_BODY_BYTES",
                value: self.max_buffered_body_bytes.to_string(),
                expected: "at least 8 x MAX_BODY_BYTES (each client may hold an eighth of it)",
            });
        }
        Ok(())
    }
}

/// The error a request body's read fails with when the server holds `MAX_BUFFERED_BODY_BYTES`
/// of request bodies already: the request should be answered `503` with a `Retry-After`.
///
/// Made by `examples/common/serve.rs`'s request bodies; here, where every app's handlers (and the
/// benches and tests that include them) can name it.
#[derive(Debug)]
// Not every binary that includes this file serves HTTP or reads bodies itself.
#[allow(dead_code)]
pub(crate) struct BodyBudgetExceeded;

impl std::fmt::Display for BodyBudgetExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server holds too many request bodies at once")
    }
}

impl std::error::Error for BodyBudgetExceeded {}

/// Whether `error` (a body read's or a call's error) is a `T`, or was caused by one.
// Not every binary that includes this file looks into errors.
#[allow(dead_code)]
pub(crate) fn caused_by<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<T>() {
            return true;
        }
        cause = e.source();
    }
    false
}
