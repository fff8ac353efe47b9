//! The analytics service: metric submission with per-client limits and summaries, event ingestion
//! and statistics, dashboard summaries and history, and a circuit-broken call to a flaky
//! dependency, built by stacking tower-rampart layers on an axum router.
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
//! Configuration (environment; see `.env.example`): `BIND`, `PORT` (8000), `RATE_LIMIT_REQUESTS`
//! (10) per `RATE_LIMIT_WINDOW_SECONDS` (60) metric submissions per client, `RATE_LIMIT` (1500)
//! events per minute per client, `API_V1_RATE_LIMIT` (100) per minute per client under `/api/v1`,
//! `CACHE_TTL_SECONDS` (300), `EXTERNAL_SERVICE_FAILURE_RATE` (0.2), `EXTERNAL_SERVICE_LATENCY_MS`
//! (50), `EXTERNAL_SERVICE_TIMEOUT` (5 s, below the request timeout: a slower call fails, inside
//! the breaker), `CIRCUIT_BREAKER_FAILURE_THRESHOLD` (5), `CIRCUIT_BREAKER_RESET_TIMEOUT` (30 s),
//! `TRUSTED_PROXIES` (CIDRs whose `X-Forwarded-For` is believed), `MAX_BODY_BYTES`,
//! `MAX_STORED_METRICS` (1,000,000; past it the oldest metric is forgotten),
//! `REQUEST_TIMEOUT_SECONDS`, `LOG_FORMAT=json`, `RUST_LOG`; and the server's limits (every HTTP
//! example's, `examples/common/serve.rs`): `HEADER_READ_TIMEOUT_SECS` (10), `IDLE_TIMEOUT_SECS` (60), `MAX_CONNECTIONS`
//! (1024), `SHUTDOWN_GRACE_SECS` (10).
//!
//! API-key tiers (`tiers.rs`): `TIER_QUOTAS` (`free=10/60s,pro=1000/60s`) and `API_KEYS`
//! (`key=tier,...`) limit metric submissions whose `X-API-Key` is listed per key at the tier's
//! quota, anything else per client IP as above; `RATE_LIMIT_SHADOW=1` makes every limit admit what
//! it would refuse, counting it (`rampart_rate_limit_shadow_rejected_total`).
//!
//! Data and limits live in memory by default; with `REDIS_URL` (and `REDIS_TIMEOUT_MS`, default
//! 250) they live in Redis, where several instances share them and a restart loses nothing;
//! `RATE_LIMIT_FAILURE_POLICY` (`local`, `open` or `closed`) says what the limits do while Redis is
//! unreachable.

mod app;
mod config;
mod dashboard;
#[path = "../common/deadline.rs"]
mod deadline;
mod dependency;
mod docs;
mod errors;
mod external;
mod input;
#[path = "../common/serve.rs"]
mod serve;
#[path = "../common/setup.rs"]
#[allow(dead_code, reason = "shared by every example; each uses part of it")]
mod setup;
mod storage;
mod telemetry;
mod tiers;
mod timestamp;

use std::sync::Arc;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("analytics_api: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let config = config::Config::from_env()?;
    let tiers = tiers::Tiers::from_env()?;
    setup::init_logging(config.json_logs);
    telemetry::prometheus();
    for (name, instead) in &config.not_read {
        tracing::warn!(
            variable = name,
            "{name} is set but not read by this service; set {instead} instead"
        );
    }
    if !tiers.tiers().is_empty() || tiers.shadow() {
        // Tier names and how many keys, never a key.
        let names: Vec<&str> = tiers.tiers().iter().map(|t| t.name).collect();
        tracing::info!(
            tiers = ?names,
            api_keys = tiers.key_count(),
            shadow = tiers.shadow(),
            "metric submissions limited per API key at their tier's quota"
        );
    }
    let storage = match &config.redis_url {
        None => storage::Storage::memory_keeping(config.max_stored_metrics),
        Some(url) => {
            let redis = storage::RedisStorage::open(url, config.redis_timeout)?
                .keeping(config.max_stored_metrics);
            tracing::info!(
                failure_policy = %config.rate_limit_failure_policy,
                "data and rate limits are shared through Redis"
            );
            storage::Storage::Redis(redis)
        }
    };
    let storage = Arc::new(storage);
    let (router, _state) = app::build(&config, &tiers, storage, app::system_clock())?;
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {} (set BIND/PORT): {e}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "analytics_api listening");
    serve::serve(listener, router, config.server, setup::shutdown_signal()).await;
    tracing::info!("analytics_api stopped");
    Ok(())
}
