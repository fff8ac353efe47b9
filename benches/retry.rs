//! Retry overhead on the path every request takes (a successful first attempt), measured against a
//! bare service in the same run; and the three layers stacked.
//!
//! - `retry`: the bare `u64` echo service; tower's `Retry` with a trivial policy (clone the request,
//!   never retry a success); ours with the defaults (3 attempts, exponential backoff, a budget: one
//!   atomic deposit per request); ours without a budget; and, on `http::Request<()>` answered with a
//!   JSON `200`, ours in HTTP mode (an idempotency check, a copy of the request, the `Attempts`
//!   extension) against the same bare HTTP service.
//! - `retry/stacked`: rate limit (global GCRA, in memory), circuit breaker (closed), retry, in that
//!   order from the outside, against the bare service. The rate limiter reads the clock once per
//!   request (about 25 ns here, see the `clock` group); the `manual_clock` row gives it a
//!   `ManualClock` to show what the stack costs without that read.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;

use bytes::Bytes;
use criterion::Criterion;
use http::{Request, Response};
use tower::{Layer, Service, ServiceBuilder, service_fn};
use tower_rampart::backend::MemoryBackend;
use tower_rampart::circuit_breaker::CircuitBreakerLayer;
use tower_rampart::clock::ManualClock;
use tower_rampart::rate_limit::RateLimitLayer;
use tower_rampart::retry::RetryLayer;

use crate::support::{HUGE, bare_u64, call_now, noop_cx, refused, rl_cb_retry_u64};

/// The value of a successful call; anything else stops the run.
#[inline]
fn ok<T, E>(res: Result<T, E>) -> T {
    match res {
        Ok(v) => v,
        Err(_) => refused(),
    }
}

/// tower's retry policy at its simplest: copy the request, never retry.
#[derive(Clone, Copy)]
struct Trivial;

impl<Req: Clone, Res, E> tower::retry::Policy<Req, Res, E> for Trivial {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Ready<()>> {
        result.is_err().then(|| ready(()))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// An HTTP service answering `200` with a JSON content type.
fn bare_http() -> impl Service<
    Request<()>,
    Response = Response<Bytes>,
    Error = Infallible,
    Future = Ready<Result<Response<Bytes>, Infallible>>,
> + Clone
+ Send
+ 'static {
    service_fn(|_req: Request<()>| {
        let mut res = Response::new(Bytes::from_static(b"{}"));
        res.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        ready(Ok::<_, Infallible>(res))
    })
}

/// A GET with a few headers, as a client would send upstream.
fn http_request() -> Request<()> {
    Request::get("http://upstream.internal/api/metrics?type=cpu_usage")
        .header("accept", "application/json")
        .header("user-agent", "proxy/1.0")
        .header("x-request-id", "6f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8")
        .body(())
        .expect("valid request")
}

/// `retry`: a successful first attempt.
pub(crate) fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("retry");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = tower::retry::RetryLayer::new(Trivial).layer(bare_u64());
    g.bench_function("tower_retry_trivial_policy", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = RetryLayer::builder()
        .build()
        .expect("valid configuration")
        .layer(bare_u64());
    g.bench_function("rampart_retry", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = RetryLayer::builder()
        .no_budget()
        .build()
        .expect("valid configuration")
        .layer(bare_u64());
    g.bench_function("rampart_retry_no_budget", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let req = http_request();
    let mut svc = bare_http();
    g.bench_function("http_bare", |b| {
        b.iter_batched(
            || req.clone(),
            |req| ok(call_now(&mut svc, &mut cx, req)),
            criterion::BatchSize::SmallInput,
        );
    });

    let mut svc = RetryLayer::builder()
        .http()
        .build()
        .expect("valid configuration")
        .layer(bare_http());
    g.bench_function("http_rampart_retry", |b| {
        b.iter_batched(
            || req.clone(),
            |req| ok(call_now(&mut svc, &mut cx, req)),
            criterion::BatchSize::SmallInput,
        );
    });

    g.finish();
}

/// `retry/stacked`: rate limit, circuit breaker and retry, in memory, happy path.
pub(crate) fn stacked(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let _guard = rt.enter();
    let mut cx = noop_cx();
    let mut g = c.benchmark_group("retry/stacked");

    let mut svc = bare_u64();
    g.bench_function("bare", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    // Rate limit, circuit breaker, retry, from the outside in; below, the same with the limiter
    // on a manual clock.
    let mut svc = rl_cb_retry_u64();
    g.bench_function("rate_limit_breaker_retry", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    let mut svc = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .quota(HUGE)
                .backend(MemoryBackend::new().clock(ManualClock::new()))
                .build()
                .expect("valid quota"),
        )
        .layer(
            CircuitBreakerLayer::builder()
                .build()
                .expect("valid configuration"),
        )
        .layer(RetryLayer::builder().build().expect("valid configuration"))
        .service(bare_u64());
    g.bench_function("rate_limit_breaker_retry_manual_clock", |b| {
        b.iter(|| ok(call_now(&mut svc, &mut cx, black_box(7))));
    });

    g.finish();
}
