//! The size of each layer's response future over a small inner future. A future is moved at
//! least once per request (into the caller's state, often again into a task), so a layer whose
//! future grows makes every call dearer: the `instructions` bench once counted 58 instructions of
//! a retry's call in `memcpy` of a future too large to move cheaply (#21). Each bound below is the
//! size at the time it was written (64-bit targets, rustc 1.95); a change that grows a future
//! fails here, to be weighed with
//! `INSTRUCTIONS_ONLY=1 cargo bench --bench instructions --all-features` (BENCHMARKS.md) and the
//! bound moved on purpose, or not at all.
#![cfg(target_pointer_width = "64")]

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use tower::{Service, ServiceBuilder, service_fn};
use tower_layer::Layer;
use tower_rampart::backend::RedisBackend;
use tower_rampart::cache::CacheLayer;
use tower_rampart::circuit_breaker::CircuitBreakerLayer;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};
use tower_rampart::retry::RetryLayer;

/// The size of the future `svc` returns for a request of type `R`.
fn future_size<S: Service<R>, R>(_: &S) -> usize {
    std::mem::size_of::<S::Future>()
}

fn bare_u64()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> + Clone
{
    service_fn(|n: u64| ready(Ok::<_, Infallible>(n)))
}

fn bare_http() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = Ready<Result<Response<Body>, Infallible>>,
> + Clone {
    service_fn(|_: Request<Body>| ready(Ok::<_, Infallible>(Response::new(Body::empty()))))
}

/// Asserts each `(name, size, bound)` is within its bound, listing them all when one is not.
fn within(rows: &[(&str, usize, usize)]) {
    let report: Vec<String> = rows
        .iter()
        .map(|(name, size, bound)| format!("{name}: {size} bytes (bound {bound})"))
        .collect();
    println!("{}", report.join("\n"));
    for (name, size, bound) in rows {
        assert!(size <= bound, "{name} grew:\n{}", report.join("\n"));
    }
}

#[test]
fn the_layers_futures_over_a_plain_service_stay_small() {
    let inner = future_size::<_, u64>(&bare_u64());
    let rate_limit = RateLimitLayer::builder()
        .quota(Quota::per_second(10))
        .build()
        .unwrap()
        .layer(bare_u64());
    let breaker = CircuitBreakerLayer::builder()
        .build()
        .unwrap()
        .layer(bare_u64());
    let retry = RetryLayer::builder().build().unwrap().layer(bare_u64());
    let cache = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|n: &u64| Some(*n)))
        .build()
        .unwrap()
        .layer(bare_u64());
    let stack = ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .quota(Quota::per_second(10))
                .build()
                .unwrap(),
        )
        .layer(CircuitBreakerLayer::builder().build().unwrap())
        .layer(RetryLayer::builder().build().unwrap())
        .service(bare_u64());
    within(&[
        ("inner", inner, 16),
        ("rate limit", future_size::<_, u64>(&rate_limit), 96),
        ("circuit breaker", future_size::<_, u64>(&breaker), 56),
        ("retry", future_size::<_, u64>(&retry), 136),
        // 128 until a lookup that waits for its store carried a request's `Cache-Control`
        // bounds (boxed: 8 bytes); `u64/rampart_cache_hit` +465 -> +466, the Redis hit within
        // its runs' spread (BENCHMARKS.md).
        ("cache", future_size::<_, u64>(&cache), 136),
        ("stack", future_size::<_, u64>(&stack), 248),
    ]);
}

#[tokio::test]
async fn the_layers_futures_over_an_http_service_stay_small() {
    let inner = future_size::<_, Request<Body>>(&bare_http());
    let rate_limit = RateLimitLayer::builder()
        .quota(Quota::per_second(10))
        .http()
        .build()
        .unwrap()
        .layer(bare_http());
    let cache = CacheLayer::http(Duration::from_secs(60)).layer(bare_http());
    // Never connected: only the type matters.
    let redis = RedisBackend::connect_lazy("redis://127.0.0.1:1").unwrap();
    let redis_cache = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .backend(redis)
        .build()
        .unwrap()
        .layer(bare_http());
    within(&[
        ("inner", inner, 128),
        (
            "rate limit",
            future_size::<_, Request<Body>>(&rate_limit),
            208,
        ),
        // Both 8 bytes more since a lookup that waits for its store carries a request's
        // `Cache-Control` bounds (boxed); the Redis hit row stayed within its runs' spread.
        (
            "cache in memory",
            future_size::<_, Request<Body>>(&cache),
            360,
        ),
        (
            "cache on Redis",
            future_size::<_, Request<Body>>(&redis_cache),
            376,
        ),
    ]);
}
