//! The analytics service: metric submission with per-client limits, summaries, event ingestion and
//! stats, built by stacking tower-rampart layers on an axum router.
//!
//! Run with
//!
//! ```sh
//! cargo run --example analytics_api
//! ```
//!
//! then, for example:
//!
//! ```sh
//! curl -s localhost:8000/health
//! curl -s -XPOST localhost:8000/api/metrics -H 'content-type: application/json' \
//!      -d '{"timestamp":"2026-02-21T12:00:00Z","value":85.5,"type":"cpu_usage"}'
//! curl -s 'localhost:8000/api/metrics/summary?type=cpu_usage'
//! ```
//!
//! Configuration (environment): `BIND`, `PORT` (8000), `RATE_LIMIT_REQUESTS` (10) per
//! `RATE_LIMIT_WINDOW_SECONDS` (60) metric submissions per client, `RATE_LIMIT` (1500) events per
//! minute per client, `TRUSTED_PROXIES` (CIDRs whose `X-Forwarded-For` is believed),
//! `MAX_BODY_BYTES`, `REQUEST_TIMEOUT_SECONDS`, `LOG_FORMAT=json`, `RUST_LOG`.
//!
//! This release keeps its data in memory. The Redis backend (`REDIS_URL`) arrives with the crate's
//! Redis support; until then a set `REDIS_URL` stops start-up rather than being ignored.

mod app;
mod config;

use std::net::SocketAddr;
use std::sync::Arc;

use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("analytics_api: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = config::Config::from_env()?;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,tower_http=info,tower_rampart=info"));
    if config.json_logs {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    if config.redis_url.is_some() {
        return Err(
            "REDIS_URL is set, but this version stores data in memory only; \
                    unset REDIS_URL to run (Redis storage comes with the Redis backend)"
                .into(),
        );
    }
    let state = app::AppState {
        storage: Arc::new(app::Storage::default()),
    };
    let router = app::router(&config, state)?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {} (set BIND/PORT): {e}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "analytics_api listening");
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;
    tracing::info!("analytics_api stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM; in-flight requests are then drained by axum.
async fn shutdown_signal() {
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
