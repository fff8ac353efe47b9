//! `GET /metrics`: Prometheus text with every `rampart_*` metric the layers record and the HTTP
//! metrics recorded here (`http_requests_total`, `http_request_duration_seconds`), by route template
//! so that paths with ids cannot grow the label set.

use std::collections::{HashMap, HashSet};
use std::sync::{LazyLock, OnceLock, RwLock};
use std::time::Instant;

use axum::extract::MatchedPath;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// How often the recorder's upkeep drains histogram samples into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The process's Prometheus recorder, installed on first use. If another recorder is already
/// installed (a host application's), metrics go there and `/metrics` renders only what this one saw.
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ])
            .expect("the bucket list is not empty")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only its own");
        }
        // The recorder's histograms keep every sample until its upkeep drains them into their
        // buckets: without it, memory grows with traffic unless /metrics is scraped. Run it every
        // 5 s, on a thread of its own (it may be installed outside any runtime).
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("prometheus-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the metrics upkeep; memory grows until /metrics is scraped");
        }
        handle
    })
}

/// `GET /metrics`.
pub(crate) async fn render() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// The counter and histogram of one (method, route template, status).
type Handles = (metrics::Counter, metrics::Histogram);

/// Handles registered once per label set: recording a request then allocates nothing (a label set
/// built per request would allocate its strings and its key).
static HANDLES: LazyLock<RwLock<HashMap<LabelSet, Handles>>> = LazyLock::new(Default::default);

/// Method, route template, status.
type LabelSet = (&'static str, &'static str, u16);

/// Route templates, kept once each (the router has a fixed, small set).
static ROUTES: LazyLock<RwLock<HashSet<&'static str>>> = LazyLock::new(Default::default);

fn intern_route(route: &str) -> &'static str {
    if let Some(r) = ROUTES.read().unwrap_or_else(|p| p.into_inner()).get(route) {
        return r;
    }
    let mut routes = ROUTES.write().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = routes.get(route) {
        return r;
    }
    let r: &'static str = Box::leak(route.to_owned().into_boxed_str());
    routes.insert(r);
    r
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "OTHER",
    }
}

fn handles(method: &'static str, route: &'static str, status: StatusCode) -> Handles {
    let key = (method, route, status.as_u16());
    if let Some(h) = HANDLES.read().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return h.clone();
    }
    let labels = [
        metrics::Label::from_static_parts("method", method),
        metrics::Label::from_static_parts("route", route),
        metrics::Label::new("status", status.as_str().to_owned()),
    ];
    let h = (
        metrics::counter!("http_requests_total", labels.iter()),
        metrics::histogram!("http_request_duration_seconds", labels.iter()),
    );
    HANDLES
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, h.clone());
    h
}

/// The HTTP metrics of one request in flight: made from the request, finished with the status.
pub(crate) struct RequestTimer {
    start: Instant,
    method: &'static str,
    route: &'static str,
}

impl RequestTimer {
    /// Starts timing `req` (its route template must be known: run inside the router).
    pub(crate) fn start<B>(req: &http::Request<B>) -> Self {
        Self {
            start: Instant::now(),
            method: method_label(req.method()),
            route: req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", |p| intern_route(p.as_str())),
        }
    }

    /// Counts the request and records its duration, by method, route template and `status`.
    pub(crate) fn finish(self, status: StatusCode) {
        let (count, duration) = handles(self.method, self.route, status);
        count.increment(1);
        duration.record(self.start.elapsed().as_secs_f64());
    }
}
