//! The `analytics_api` example over real loopback HTTP: the full layer stack against the same
//! handlers with no layers, in the same run, on `POST /event` and a summary read.
//!
//! Run with `cargo bench --bench http_stack` (`HTTP_BENCH_SECONDS`, default 5 per row, and
//! `HTTP_BENCH_CONNECTIONS`, default 64). The server and the load generator share the process and
//! the machine's cores, as the two routers do alike, and the two routers are measured in
//! alternating half-second slices, so that whatever else runs on the machine weighs on both alike.
//! Compare rows with each other, not with other machines. Prints requests/s, p50 and p99 latency and
//! processor time per request for each row, and the full stack's share of the bare router's
//! throughput, and the same comparison by processor time (steadier when other programs compete for
//! the cores).
//!
//! `HTTP_BENCH_IN_PROCESS=<router>:<route>:<n>` (`full` or `bare`, `event` or `summary`) instead
//! calls that router `n` times in-process, with no network, and exits: run it under
//! `valgrind --tool=callgrind` with two values of `n` and divide the difference in instructions by
//! the difference in `n` for the instructions per request, a measure the machine's load does not
//! move. (The Prometheus recorder calibrates its clock once at start, for a time rather than a
//! number of instructions; leave `once_cell` and `clock_gettime` out of the difference.)

#[path = "../examples/analytics_api/app/mod.rs"]
#[allow(dead_code)]
mod app;
#[path = "../examples/analytics_api/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../examples/analytics_api/dashboard.rs"]
#[allow(dead_code)]
mod dashboard;
#[path = "../examples/common/deadline.rs"]
#[allow(dead_code)]
mod deadline;
#[path = "../examples/analytics_api/dependency.rs"]
#[allow(dead_code)]
mod dependency;
#[path = "../examples/analytics_api/docs.rs"]
#[allow(dead_code)]
mod docs;
#[path = "../examples/analytics_api/errors.rs"]
#[allow(dead_code)]
mod errors;
#[path = "../examples/analytics_api/external.rs"]
#[allow(dead_code)]
mod external;
#[path = "../examples/analytics_api/input.rs"]
#[allow(dead_code)]
mod input;
#[path = "../examples/common/setup.rs"]
#[allow(dead_code)]
mod setup;
#[path = "../examples/analytics_api/storage/mod.rs"]
#[allow(dead_code)]
mod storage;
#[path = "../examples/analytics_api/telemetry.rs"]
#[allow(dead_code)]
mod telemetry;
#[path = "../examples/analytics_api/tiers.rs"]
#[allow(dead_code)]
mod tiers;
#[path = "../examples/analytics_api/timestamp.rs"]
// Its unit tests are the test suite's; here they compile to nothing.
#[allow(dead_code, unused_imports)]
mod timestamp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// At most this many requests per row, whatever the duration.
const MAX_REQUESTS: usize = 5_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one row measured.
struct Row {
    requests: usize,
    elapsed: Duration,
    /// Processor time the whole process (server and load generator) spent, in clock ticks.
    cpu_ticks: u64,
    p50: Duration,
    p99: Duration,
}

/// Processor time this process has used so far (user and system), in clock ticks
/// (`/proc/self/stat`; 0 where there is no such file). Less sensitive to other processes on the
/// machine than wall time: a slice's requests cost the same processor time however long they waited.
fn cpu_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

impl Row {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// Seconds of processor time per request (server and load generator together).
    fn cpu_per_request(&self) -> f64 {
        self.cpu_ticks as f64 / TICKS_PER_SECOND / self.requests as f64
    }
}

/// The example's configuration with limits no run can reach, so every layer runs and none refuses.
fn config() -> config::Config {
    let vars: HashMap<&str, &str> = [
        ("RATE_LIMIT_REQUESTS", "4294967295"),
        ("RATE_LIMIT", "4294967295"),
        ("API_V1_RATE_LIMIT", "4294967295"),
        ("MAX_BODY_BYTES", "65536"),
    ]
    .into_iter()
    .collect();
    config::Config::from_lookup(|k| vars.get(k).map(|v| v.to_string())).expect("valid bench config")
}

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Drives `make(i)` requests at `addr` from `connections` concurrent clients for `duration`;
/// returns the latencies and the wall time.
async fn slice(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    make: fn(usize) -> http::Request<Full<Bytes>>,
) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|c| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = c;
                while start.elapsed() < duration && latencies.len() < MAX_REQUESTS / connections {
                    let mut req = make(i);
                    let uri = format!("http://{addr}{}", req.uri());
                    *req.uri_mut() = uri.parse().unwrap();
                    let sent = Instant::now();
                    let res = client.request(req).await.expect("the server answers");
                    let status = res.status();
                    res.into_body().collect().await.expect("a whole body");
                    assert!(
                        status.is_success(),
                        "the bench sent a request that failed: {status}"
                    );
                    latencies.push(sent.elapsed());
                    i += connections;
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    (all, start.elapsed())
}

/// Measures the two routers on one route, in alternating half-second slices (so both meet the
/// same load from anything else running on the machine), `duration` each in total.
async fn compare(
    bare: SocketAddr,
    full: SocketAddr,
    connections: usize,
    duration: Duration,
    make: fn(usize) -> http::Request<Full<Bytes>>,
) -> (Row, Row) {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2 * connections)
        .build_http::<Full<Bytes>>();
    // Warm up: connections, caches, allocator.
    for addr in [bare, full] {
        slice(&client, addr, connections, Duration::from_millis(500), make).await;
    }
    let step = Duration::from_millis(500);
    let rounds = (duration.as_millis() / step.as_millis()).max(1) as usize;
    let mut acc = [
        (Vec::new(), Duration::ZERO, 0),
        (Vec::new(), Duration::ZERO, 0),
    ];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let addr = [bare, full][which];
            let ticks = cpu_ticks();
            let (lat, elapsed) = slice(&client, addr, connections, step, make).await;
            acc[which].0.extend(lat);
            acc[which].1 += elapsed;
            acc[which].2 += cpu_ticks() - ticks;
        }
    }
    let [b, f] = acc.map(|(mut latencies, elapsed, cpu_ticks)| {
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        Row {
            requests: latencies.len(),
            elapsed,
            cpu_ticks,
            p50: at(0.50),
            p99: at(0.99),
        }
    });
    (b, f)
}

fn post_event(i: usize) -> http::Request<Full<Bytes>> {
    let body = format!(
        r#"{{"user_id":{},"event_type":"page_view","timestamp":1690000000,"payload":{{"platform":"{}"}}}}"#,
        i % 10_000,
        ["ios", "android", "web"][i % 3]
    );
    http::Request::post("/event")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

fn get_summary(_: usize) -> http::Request<Full<Bytes>> {
    http::Request::get("/api/metrics/summary?type=cpu_usage")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Calls a router in-process as `HTTP_BENCH_IN_PROCESS` says (see the module's documentation).
async fn in_process(spec: &str, full: Router, bare: Router) {
    use tower::ServiceExt;
    let usage = "HTTP_BENCH_IN_PROCESS=<full|bare>:<event|summary>:<number of requests>";
    let mut parts = spec.split(':');
    let (Some(router), Some(route), Some(Ok(n)), None) = (
        parts.next(),
        parts.next(),
        parts.next().map(str::parse::<usize>),
        parts.next(),
    ) else {
        panic!("{usage}, not {spec:?}");
    };
    let router = match router {
        "full" => full,
        "bare" => bare,
        _ => panic!("{usage}, not {spec:?}"),
    };
    let make = match route {
        "event" => post_event as fn(usize) -> _,
        "summary" => get_summary,
        _ => panic!("{usage}, not {spec:?}"),
    };
    let peer: SocketAddr = "192.0.2.7:40000".parse().expect("an address");
    for i in 0..n {
        let mut req = make(i);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let res = router.clone().oneshot(req).await.expect("infallible");
        assert!(res.status().is_success(), "{}", res.status());
        res.into_body().collect().await.expect("a whole body");
    }
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs this too, briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = if quick {
        1
    } else {
        env_or("HTTP_BENCH_SECONDS", 5)
    };
    let connections = env_or("HTTP_BENCH_CONNECTIONS", 64) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        // As the example's main does: the Prometheus recorder the HTTP metrics go to.
        telemetry::prometheus();
        let config = config();
        let storage = Arc::new(storage::Storage::default());
        let tiers = tiers::Tiers::default();
        let (full, state) = app::build(&config, &tiers, Arc::clone(&storage), app::system_clock())
            .expect("the example builds");
        let bare = app::bare_router(state);
        for i in 0..1000 {
            let m = storage::Metric {
                timestamp: chrono::Utc::now(),
                value: f64::from(i),
                metric_type: "cpu_usage".into(),
            };
            storage.add_metric(&m).await.unwrap();
        }
        if let Ok(spec) = std::env::var("HTTP_BENCH_IN_PROCESS") {
            in_process(&spec, full, bare).await;
            return;
        }
        let full = serve(full).await;
        let bare = serve(bare).await;
        let duration = Duration::from_secs(seconds);
        println!(
            "http_stack: {connections} connections, {seconds} s per row{}",
            if quick {
                " (quick check; run with `cargo bench --bench http_stack`)"
            } else {
                ""
            }
        );
        println!(
            "| route | router | requests/s | p50 | p99 | CPU per request | full / bare (throughput) | bare / full (CPU) |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        for (name, make) in [
            ("POST /event", post_event as fn(usize) -> _),
            ("GET /api/metrics/summary", get_summary),
        ] {
            let (b, f) = compare(bare, full, connections, duration, make).await;
            for (router, row) in [("bare", &b), ("full stack", &f)] {
                let (throughput, cpu) = if router == "bare" {
                    (String::new(), String::new())
                } else {
                    (
                        format!("{:.0}%", 100.0 * f.per_second() / b.per_second()),
                        format!("{:.0}%", 100.0 * b.cpu_per_request() / f.cpu_per_request()),
                    )
                };
                println!(
                    "| `{name}` | {router} | {:.0} | {:.0} µs | {:.0} µs | {:.1} µs | {throughput} | {cpu} |",
                    row.per_second(),
                    row.p50.as_secs_f64() * 1e6,
                    row.p99.as_secs_f64() * 1e6,
                    row.cpu_per_request() * 1e6,
                );
            }
        }
    });
}
