//! A flaky upstream service, for trying `proxy_service` against.
//!
//! Run with
//!
//! ```sh
//! EXTERNAL_FAIL_RATE=0.5 cargo run --example mock_upstream
//! curl -s -XPOST localhost:5001/external-api/process -H 'content-type: application/json' -d '{"x":1}'
//! curl -s localhost:5001/stats
//! ```
//!
//! Configuration: `BIND`, `PORT` (5001), `EXTERNAL_FAIL_RATE` (0.0 to 1.0, default 0.2),
//! `EXTERNAL_LATENCY_MS` (50), `EXTERNAL_UNAVAILABLE_SHARE` (the share of failures answered 503 with
//! `Retry-After` instead of 500, default 0.25), `EXTERNAL_RETRY_AFTER_SECONDS` (1), `EXTERNAL_SEED` (a number makes the failures repeatable),
//! `LOG_FORMAT`, and the server's limits: `HEADER_READ_TIMEOUT_SECS` (10), `IDLE_TIMEOUT_SECS` (60), `MAX_CONNECTIONS`
//! (1024), `SHUTDOWN_GRACE_SECS` (10).

#[path = "../common/serve.rs"]
mod serve;
#[path = "../common/setup.rs"]
#[allow(dead_code, reason = "shared by every example; each uses part of it")]
mod setup;
mod upstream;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("mock_upstream: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = upstream::UpstreamConfig::from_lookup(|k| std::env::var(k).ok())?;
    setup::init_logging(config.json_logs);
    let addr = config.addr;
    let (router, _handle) = upstream::router(config);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr} (set BIND/PORT): {e}"))?;
    tracing::info!(addr = %listener.local_addr()?, "mock_upstream listening");
    let limits = setup::ServerLimits::from_env(&|k| std::env::var(k).ok())?;
    serve::serve(listener, router, limits, setup::shutdown_signal()).await;
    Ok(())
}
