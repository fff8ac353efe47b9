//! A resilient proxy: `POST /api/proxy/data` forwards JSON to a flaky upstream through a tower
//! client stack (a circuit breaker around retries with backoff and jitter around a hyper client),
//! with a per-client rate limit in front.
//!
//! Run the flaky upstream, then the proxy:
//!
//! ```sh
//! EXTERNAL_FAIL_RATE=0.5 cargo run --example mock_upstream &
//! cargo run --example proxy_service
//! curl -s -XPOST localhost:8000/api/proxy/data -H 'content-type: application/json' -d '{"order":42}'
//! curl -s localhost:8000/api/circuit-breaker/status
//! ```
//!
//! Answers, as reference 004's: 200
//! `{"status":"success","external_response":{...},"proxy_notes":"..."}`; 429 when the client is
//! over its limit; 503 while the circuit is open; 500
//! `{"status":"error","message":"An unexpected error occurred.","circuit_state":"CLOSED"}` (the
//! circuit's state after counting the failure) when the upstream still fails after the retries,
//! times out or cannot be reached (the `x-upstream-attempts` and `x-upstream-failure` headers say
//! how); 400/415 for a body that is not JSON.
//!
//! Retries wait `RETRY_INITIAL_DELAY_MS × RETRY_BACKOFF_MULTIPLIER^(n−1)`, at most
//! `RETRY_MAX_DELAY_MS`, plus a random 0–50% of it; the circuit opens after
//! `CB_FAILURE_THRESHOLD` failed requests in a row and, after `CB_RESET_TIMEOUT_SECONDS`, closes
//! again once two probe requests succeed.
//!
//! Configuration: `BIND`, `PORT` (8000), `EXTERNAL_SERVICE_URL`
//! (`http://localhost:5001/external-api/process`), `RETRY_MAX_ATTEMPTS` (3),
//! `RETRY_INITIAL_DELAY_MS` (100), `RETRY_BACKOFF_MULTIPLIER` (2.0), `RETRY_MAX_DELAY_MS` (5000),
//! `RETRY_BUDGET_PERCENT` (100),
//! `EXTERNAL_TIMEOUT_MS` (10000, per attempt), `CB_FAILURE_THRESHOLD` (5), `CB_RESET_TIMEOUT_SECONDS`
//! (30), `RATE_LIMIT_MAX_REQUESTS` (10) per `RATE_LIMIT_WINDOW_SECONDS` (60), `TRUSTED_PROXIES`,
//! `MAX_BODY_BYTES`, `REQUEST_TIMEOUT_SECONDS` (30), `BODY_READ_TIMEOUT_SECONDS` (10),
//! `HEADER_READ_TIMEOUT_SECS` (10), `IDLE_TIMEOUT_SECS` (60), `MAX_CONNECTIONS` (1024), `SHUTDOWN_GRACE_SECS` (10),
//! `LOG_FORMAT`, `RUST_LOG`.

mod jitter;
mod proxy;
#[path = "../common/serve.rs"]
mod serve;
#[path = "../common/setup.rs"]
#[allow(dead_code, reason = "shared by every example; each uses part of it")]
mod setup;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("proxy_service: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = proxy::ProxyConfig::from_lookup(|k| std::env::var(k).ok())?;
    setup::init_logging(config.json_logs);
    let (router, _breaker) = proxy::router(&config)?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {} (set BIND/PORT): {e}", config.addr))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        upstream = %config.upstream,
        "proxy_service listening"
    );
    let limits = setup::ServerLimits::from_env(&|k| std::env::var(k).ok())?;
    limits.check_body_bound(config.max_body_bytes)?;
    serve::serve(listener, router, limits, setup::shutdown_signal()).await;
    tracing::info!("proxy_service stopped");
    Ok(())
}
