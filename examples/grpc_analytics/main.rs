//! The analytics service over gRPC (tonic): the RPCs of `analytics_api` with the same storage,
//! per-client limits answering `RESOURCE_EXHAUSTED` with retry information, a circuit-broken call
//! to a flaky dependency, `grpc.health.v1` and server reflection (v1 and v1alpha).
//!
//! Run with
//!
//! ```sh
//! cargo run --example grpc_analytics
//! ```
//!
//! then, for example (with grpcurl, which finds the API through reflection):
//!
//! ```sh
//! grpcurl -plaintext localhost:50051 list
//! grpcurl -plaintext -d '{"metric":{"timestamp":"2026-02-21T12:00:00Z","value":85.5,"type":"cpu_usage"}}' \
//!     localhost:50051 rampart.analytics.v1.AnalyticsService/SubmitMetric
//! grpcurl -plaintext -d '{"type":"cpu_usage"}' localhost:50051 rampart.analytics.v1.AnalyticsService/GetSummary
//! grpcurl -plaintext localhost:50051 grpc.health.v1.Health/Check
//! cargo run --example grpc_analytics_client     # a client that retries through RetryLayer
//! ```
//!
//! Configuration: the variables of `analytics_api` (see its `.env.example`), `PORT` defaulting to
//! 50051. `REDIS_URL` keeps the data in Redis, shared with `analytics_api` instances on it.

// Shared with analytics_api, which uses all of them; this service uses most.
#[path = "../analytics_api/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../common/deadline.rs"]
#[allow(dead_code)]
mod deadline;
#[path = "../analytics_api/dependency.rs"]
#[allow(dead_code)]
mod dependency;
mod server;
#[path = "../common/setup.rs"]
#[allow(dead_code, reason = "shared by every example; each uses part of it")]
mod setup;
#[path = "../analytics_api/storage/mod.rs"]
#[allow(dead_code)]
mod storage;
#[path = "../analytics_api/timestamp.rs"]
#[allow(
    dead_code,
    reason = "this service takes protobuf timestamps: only the range"
)]
mod timestamp;

/// The code generated from `proto/analytics.proto` (checked in; a test regenerates and compares it).
#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod pb {
    include!("generated/rampart.analytics.v1.rs");

    /// The encoded file descriptor set, for server reflection.
    pub const DESCRIPTOR: &[u8] = include_bytes!("generated/analytics_descriptor.bin");
}

use std::sync::Arc;

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("grpc_analytics: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let config = config::Config::from_env_on(50051)?;
    setup::init_logging(config.json_logs);
    for (name, instead) in &config.not_read {
        tracing::warn!(
            variable = name,
            "{name} is set but not read by this service; set {instead} instead"
        );
    }
    let storage = match &config.redis_url {
        None => storage::Storage::memory_keeping(config.max_stored_metrics),
        Some(url) => storage::Storage::Redis(
            storage::RedisStorage::open(url, config.redis_timeout)?
                .keeping(config.max_stored_metrics),
        ),
    };
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|e| format!("cannot listen on {} (set BIND/PORT): {e}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "grpc_analytics listening");
    server::serve(
        &config,
        Arc::new(storage),
        listener,
        setup::shutdown_signal(),
    )
    .await?;
    tracing::info!("grpc_analytics stopped");
    Ok(())
}
