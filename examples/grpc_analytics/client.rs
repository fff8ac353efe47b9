//! A client of `grpc_analytics` that retries through tower-rampart's `RetryLayer`, honouring the
//! server's `RESOURCE_EXHAUSTED` pushback: submit more metrics than the server's per-client limit
//! allows, and watch the over-limit ones wait for their turn instead of failing.
//!
//! ```sh
//! RATE_LIMIT_REQUESTS=5 RATE_LIMIT_WINDOW_SECONDS=10 cargo run --example grpc_analytics &
//! cargo run --example grpc_analytics_client
//! ```
//!
//! Configuration: `GRPC_URL` (`http://127.0.0.1:50051`), `METRICS` (how many to send, 8),
//! `RETRY_MAX_ATTEMPTS` (5), `RETRY_MAX_DELAY_MS` (15000: the longest pushback honoured),
//! `LOG_FORMAT`, `RUST_LOG`.

#[allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
mod pb {
    include!("generated/rampart.analytics.v1.rs");
}
mod retrying;
#[path = "../common/setup.rs"]
#[allow(dead_code, reason = "shared by every example; each uses part of it")]
mod setup;

use std::time::{Duration, Instant};

use setup::{json_logs, parse, positive};

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("grpc_analytics_client: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let get = |k: &str| std::env::var(k).ok();
    let url: String = parse(&get, "GRPC_URL", "http://127.0.0.1:50051".into(), "a URL")?;
    let count = positive(&get, "METRICS", 8)?;
    let attempts = positive(&get, "RETRY_MAX_ATTEMPTS", 5)?;
    let max_delay = Duration::from_millis(u64::from(positive(&get, "RETRY_MAX_DELAY_MS", 15_000)?));
    setup::init_logging(json_logs(&get)?);
    let channel = tonic::transport::Channel::from_shared(url.clone())
        .map_err(|e| format!("invalid GRPC_URL={url:?}: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    let submit = retrying::submit_metric(channel, attempts, max_delay, max_delay * attempts)?;
    for i in 0..count {
        let started = Instant::now();
        let metric = pb::Metric {
            timestamp: Some(prost_types::Timestamp {
                seconds: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_secs() as i64,
                nanos: 0,
            }),
            value: 40.0 + f64::from(i),
            r#type: "cpu_usage".into(),
        };
        match retrying::send(&submit, metric).await {
            Ok(res) => println!(
                "metric {i}: {} ({} attempt{}, {:.1} s)",
                res.get_ref().message,
                retrying::attempts(&res),
                if retrying::attempts(&res) == 1 {
                    ""
                } else {
                    "s"
                },
                started.elapsed().as_secs_f64()
            ),
            Err(status) => println!(
                "metric {i}: gave up: {:?} {}",
                status.code(),
                status.message()
            ),
        }
    }
    Ok(())
}
