//! Resilience middleware for [Tower](https://docs.rs/tower): rate limiting, circuit breaking,
//! retries and response caching, in memory or shared by every replica through Redis.
//!
//! - **Drop-in for axum and tonic.** In HTTP or gRPC [rejection mode](rejection) a layer answers
//!   refusals itself (429 with `Retry-After` and `RateLimit` fields, or `RESOURCE_EXHAUSTED`) and
//!   keeps the inner service's error type, so `Router::layer` takes it with no `HandleErrorLayer`.
//! - **Exact.** GCRA decisions are one atomic compare-and-swap; clones of a layer share one limiter;
//!   a circuit breaker's half-open state admits exactly its number of probes, however many callers
//!   race for them.
//! - **Bounded.** The in-memory backend drops idle keys by itself and holds at most a configured
//!   number of keys, whatever a flood of distinct clients does.
//! - **Shared, and honest when Redis is down.** With the [Redis backend](backend::redis) every
//!   replica counts against one limit, one round trip per decision on Redis's own clock; a
//!   [failure policy](backend::redis::FailurePolicy) says what happens when Redis is slow or gone,
//!   and no request waits longer than the backend's timeout.
//! - **One vocabulary.** Every keyed layer (rate limit, per-key circuits, cache) takes the same
//!   [key extractors](key) with the same `.key(k)`: [`GlobalKey`](key::GlobalKey),
//!   [`key_fn`](key::key_fn), and (feature `http`) `PeerIp`, `ClientIp`, `HeaderKey`,
//!   `UpstreamHost`.
//! - **Testable.** All time comes from [`tokio::time`], so tests run on paused time.
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, routing::post};
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! let app: Router = Router::new()
//!     .route("/api/metrics", post(|| async { "stored" }))
//!     .layer(RateLimitLayer::per_ip(Quota::per_minute(10)));
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await
//! # let _ = app.into_make_service_with_connect_info::<SocketAddr>();
//! ```
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `rate-limit` | yes | [`rate_limit`] |
//! | `circuit-breaker` | yes | [`circuit_breaker`] |
//! | `retry` | yes | [`retry`] |
//! | `cache` | yes | [`cache`]: a read-through response cache (in memory: bounded by bytes, CLOCK eviction) |
//! | `memory` | yes | the in-memory backend, [`backend::memory`] |
//! | `redis` | | the Redis backend, [`backend::redis`]: limits shared by every replica, with a failure policy |
//! | `redis-cluster` | | `redis`, plus Redis Cluster through the `redis` crate's async cluster client |
//! | `http` | | HTTP key extractors ([`key`]), the HTTP and gRPC rejection modes ([`http`], [`grpc`]), the HTTP and gRPC [classifiers](classify) and the cache's HTTP mode |
//! | `axum` | | `http`, plus reading axum's `ConnectInfo` |
//! | `tonic` | | `http`, plus tonic's peer address, `From<RateLimited>` / `From<CircuitOpen>` for `tonic::Status`, and classifying tonic's results |
//! | `metrics` | | `rampart_*` counters and gauges through the [`metrics`](https://docs.rs/metrics) facade |
//! | `serde` | | `Deserialize`/`Serialize` for configuration types, and a whole-layer configuration type per layer, read from files ([`config`]) |
//! | `full` | | all of the above |
//!
//! # Minimum supported Rust version
//!
//! Rust 1.88, raised only with a minor release and never to a version younger than six months.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;
#[cfg_attr(
    not(any(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "cache",
        feature = "memory"
    )),
    allow(dead_code)
)]
mod hash;
#[cfg_attr(
    not(any(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "retry",
        feature = "cache"
    )),
    allow(dead_code)
)]
mod name;

pub mod backend;
#[cfg(any(
    all(feature = "cache", feature = "http"),
    all(feature = "retry", any(feature = "axum", feature = "tonic"))
))]
mod body;
pub mod classify;
pub mod clock;
#[cfg(feature = "serde")]
#[cfg_attr(
    not(any(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "retry",
        feature = "cache"
    )),
    allow(dead_code)
)]
pub mod config;
pub mod error;
#[cfg_attr(
    not(any(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "retry",
        feature = "cache"
    )),
    allow(dead_code)
)]
pub mod hooks;
pub mod key;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod rejection;
#[cfg(any(
    feature = "rate-limit",
    feature = "retry",
    feature = "cache",
    all(feature = "circuit-breaker", feature = "redis")
))]
mod throttle;

#[cfg(feature = "cache")]
pub mod cache;
#[cfg(feature = "circuit-breaker")]
pub mod circuit_breaker;
#[cfg(feature = "rate-limit")]
pub mod rate_limit;
#[cfg(feature = "retry")]
pub mod retry;

#[cfg(feature = "http")]
pub mod grpc;
#[cfg(feature = "http")]
pub mod http;

pub use crate::error::{BoxError, ConfigError};

// Every Rust block of README.md compiles (and the ones that need no server run) with the doc
// tests: what the README shows is what a user can paste.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
