//! Retries: send a request again when it failed in a way another attempt can fix, with backoff
//! and jitter, within a budget, a deadline and a number of attempts.
//!
//! - **What is retried** is decided by a [classifier](crate::classify), the same the circuit
//!   breaker uses: by default any error of the inner service; for HTTP (`.http()`) errors and
//!   `502`, `503`, `504`, `429`; for gRPC (`.grpc()`) errors and `UNAVAILABLE`,
//!   `RESOURCE_EXHAUSTED`; or a closure. Retry tries again on its
//!   [transient](crate::classify::Verdict::Transient) and
//!   [throttled](crate::classify::Verdict::Throttled) verdicts, and on a
//!   [refusal](crate::classify::Verdict::Refused) of this crate's layers below it only when the
//!   layer will admit within the retry's longest delay (a rate limit's quota; never an open
//!   circuit).
//! - **Which requests** may be sent again is decided by a [request copier](request): the first
//!   attempt consumes the request, so a copy is made first. For HTTP only idempotent methods
//!   (GET, HEAD, OPTIONS, PUT, DELETE, TRACE) and requests with an `Idempotency-Key` are retried
//!   unless told otherwise. A request that cannot be copied (a body still streaming in) is **sent
//!   once**, never dropped; a body whose content is already in memory (a unary gRPC call through
//!   a tonic `Channel`, with `.grpc()`) is copied.
//! - **When**: [backoff] fixed or exponential, capped, with no, full, equal or decorrelated
//!   jitter. A server's `Retry-After` (seconds or HTTP date) or gRPC pushback
//!   (`grpc-retry-pushback-ms`, `google.rpc.RetryInfo`) is honoured: never retried sooner, and
//!   a wait longer than the maximum delay, or a negative pushback, means "do not retry".
//! - **How much**: at most `max_attempts` attempts, the first included; optionally a per-attempt
//!   timeout and an overall deadline, which bounds everything: attempts, waits, and the wait for
//!   the inner service to be ready before a retry (no attempt starts after it); and a [budget]
//!   shared by every clone of the layer, so that retries add at most a percentage of the recent
//!   requests (20% plus 10 per second by default), and an outage cannot multiply the load on the
//!   upstream.
//!
//! # What the caller gets
//!
//! | the request | default mode (`BoxError`) | HTTP / gRPC mode |
//! |---|---|---|
//! | succeeds, at any attempt | the response, with an [`Attempts`] extension (HTTP and gRPC classifiers) | the same |
//! | fails in a way not worth retrying | that response, or the error in a [`LastError`](error::LastError) | the response, or the inner error unchanged |
//! | runs out of attempts, budget or deadline (also while waiting for the inner service to be ready) | the **last** response, or the last error in a [`LastError`](error::LastError) | the last response, or the inner error unchanged |
//! | last attempt timed out | [`AttemptTimedOut`](error::AttemptTimedOut) | a `504` / `DEADLINE_EXCEEDED` response |
//! | the inner service fails to get ready for a retry | its error in a [`LastError`](error::LastError) | its error unchanged |
//!
//! The number of attempts is on every final response that can carry it (the [`Attempts`]
//! extension, set by the HTTP and gRPC classifiers; an `x-retry-attempts` header with
//! `.attempts_header(true)`), and, **in the default mode**, on every final error
//! ([`error::attempts`] reads it from the [`LastError`](error::LastError) or
//! [`AttemptTimedOut`](error::AttemptTimedOut)). In the HTTP and gRPC modes the inner error type
//! is kept, so that the layer fits in stacks that need it (axum's `Router::layer`, tonic): an
//! inner error reaches the caller unchanged, **without** an attempt count (only a final timeout,
//! which becomes a response there, carries one). Keep the default mode (`.http().rejection(AsError)`)
//! where errors need their count.
//!
//! # Failed responses
//!
//! A failed response that is retried is dropped unread when the next attempt starts (at once,
//! unless the request has a deadline: it is then kept through the wait, to be returned if the
//! deadline comes first). The layer does not read its body: it cannot know the body type in
//! general, reading would take time out of the wait (or add to it) on an upstream already in
//! trouble, and a kept response must stay whole. hyper's client drains, when a response is
//! dropped, what of its body has already arrived, so after a small error body (what a `503` or a
//! `429` usually carries) the connection goes back to the pool; a large one that has not all
//! arrived closes it (HTTP/1.1) or resets the stream (HTTP/2). To keep connections after large
//! error bodies, read responses into memory below the layer (`ServiceBuilder::and_then` over the
//! client, with a size cap such as `http_body_util::Limited`).
//!
//! # Example: an HTTP client
//!
//! ```
//! use std::time::Duration;
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::retry::{Attempts, Jitter, RetryLayer};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let retry = RetryLayer::builder()
//!     .name("upstream")
//!     .max_attempts(3)
//!     .exponential_backoff(Duration::from_millis(100), 2.0, Duration::from_secs(2))
//!     .jitter(Jitter::Full)
//!     .attempt_timeout(Duration::from_secs(2))
//!     .deadline(Duration::from_secs(5))
//!     .http()
//!     .attempts_header(true)
//!     .build()
//!     .unwrap();
//!
//! // An upstream that is unavailable once, then answers (a hyper client in real life).
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let c = calls.clone();
//! let upstream = service_fn(move |_req: http::Request<Full<Bytes>>| {
//!     let n = c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     async move {
//!         let status = if n == 0 { 503 } else { 200 };
//!         let mut res = http::Response::new(Full::new(Bytes::from_static(b"{}")));
//!         *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
//!         Ok::<_, std::convert::Infallible>(res)
//!     }
//! });
//! let mut client = retry.layer(upstream);
//!
//! let req = http::Request::get("http://upstream/data").body(Full::default()).unwrap();
//! let res = client.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(2)));
//! assert_eq!(res.headers()["x-retry-attempts"], "2");
//!
//! // A POST is not idempotent: sent once, its 503 returned as it is.
//! calls.store(0, std::sync::atomic::Ordering::SeqCst);
//! let req = http::Request::post("http://upstream/data").body(Full::default()).unwrap();
//! let res = client.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.extensions().get::<Attempts>(), Some(&Attempts(1)));
//! # }
//! ```
//!
//! # Example: retries inside a circuit breaker, counting attempts in the answer
//!
//! Put the breaker outside the retries: a request whose attempts are all spent is then one
//! failure for the circuit, not three, and an open circuit refuses before any attempt is made.
//! The response tells how many attempts it took.
//!
//! ```
//! use std::time::Duration;
//! use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
//! use tower_rampart::classify::HttpClassifier;
//! use tower_rampart::retry::{Attempts, RetryLayer, request::HttpRequests};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let breaker = CircuitBreakerLayer::builder()
//!     .consecutive_failures(2)
//!     .classify(HttpClassifier::new()) // 5xx are failures
//!     .build()
//!     .unwrap();
//! let state = breaker.handle();
//! let retry = RetryLayer::builder()
//!     .max_attempts(3)
//!     .classify(HttpClassifier::new()) // 502, 503, 504, 429 are retried
//!     .requests(HttpRequests::new().any_method(true)) // the upstream dedupes by request id
//!     .build()
//!     .unwrap();
//! let upstream = service_fn(|_req: http::Request<String>| async {
//!     let mut res = http::Response::new(String::new());
//!     *res.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
//!     Ok::<_, BoxError>(res)
//! });
//! let mut client = ServiceBuilder::new().layer(breaker).layer(retry).service(upstream);
//!
//! let res = client.ready().await.unwrap().call(http::Request::new("{}".into())).await.unwrap();
//! let tries = res.extensions().get::<Attempts>().map_or(1, |a| a.0);
//! let notes = format!("upstream answered {} after {} retries", res.status(), tries - 1);
//! assert_eq!(notes, "upstream answered 503 Service Unavailable after 2 retries");
//! assert_eq!(state.state(), CircuitState::Closed, "three attempts, one failure");
//! # }
//! ```
//!
//! # Example: a tonic client retrying `RESOURCE_EXHAUSTED` and `UNAVAILABLE`
//!
//! Two ways. Layer the `Channel` with `.grpc()` and put the generated client on top (see
//! [`RetryBuilder::grpc`]): unary calls are retried with their encoded message (up to 64 KiB by
//! default), statuses keep their type, and the client's code does not change. Or, as here, wrap
//! the generated client's call in a service of its messages (which are `Clone`, so any call,
//! streaming ones and large ones included, can be retried), and let
//! [`GrpcClassifier`](crate::classify::GrpcClassifier) read the status and the server's pushback. Errors
//! then come back as `BoxError` carrying the attempt count; `tonic::Status::from_error` finds the
//! last status inside.
//!
//! ```no_run
//! use std::time::Duration;
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::classify::GrpcClassifier;
//! use tower_rampart::retry::RetryLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect().await?;
//! let client = HealthClient::new(channel);
//! let retry = RetryLayer::builder()
//!     .max_attempts(4)
//!     .exponential_backoff(Duration::from_millis(200), 2.0, Duration::from_secs(10))
//!     .deadline(Duration::from_secs(15))
//!     .classify(GrpcClassifier::new())
//!     .build()?;
//! let mut check = retry.layer(service_fn(move |req: HealthCheckRequest| {
//!     let mut client = client.clone();
//!     async move { client.check(req).await }
//! }));
//! let req = HealthCheckRequest { service: "analytics".into() };
//! match check.ready().await?.call(req).await {
//!     Ok(res) => println!("{:?}", res.into_inner().status),
//!     Err(err) => println!("gave up: {}", tonic::Status::from_error(err)),
//! }
//! # Ok(()) }
//! ```
//!
//! # Metrics
//!
//! With the `metrics` feature, labelled by `name` (the layer's name; see [`crate::metrics`]):
//! `rampart_retry_attempts_total{reason}` (retries made, by what failed: `error`, `503`,
//! `UNAVAILABLE`, `timeout`, ...), `rampart_retry_budget_exhausted_total`, and
//! `rampart_retry_gave_up_total{cause}` (retryable failures returned: `attempts`, `budget`,
//! `deadline`, `server`, `not_idempotent`, `not_cloneable`). Each retry is also a `tracing` event
//! (`debug`) with the attempt, the delay and the reason; an exhausted budget warns, at most once
//! every 10 seconds.

pub mod backoff;
pub mod budget;
#[cfg(feature = "serde")]
mod config;
pub mod error;
mod event;
pub mod future;
mod layer;
pub mod policy;
pub mod request;
mod service;

pub use self::backoff::{Backoff, Delays, Jitter};
pub use self::budget::{Budget, RetryBudget};
#[cfg(feature = "serde")]
pub use self::config::{BudgetConfig, RetryConfig};
pub use self::event::RetryEvent;
pub use self::layer::{CustomBuilder, MAX_ATTEMPTS, MAX_TIMEOUT, RetryBuilder, RetryLayer};
pub use self::policy::{
    Attempt, Decision, GiveUp, Outcome, Policy, StandardPolicy, StandardState, TimeLimit,
};
pub use self::service::Retry;

use crate::error::BoxError;
use crate::rejection::{AsError, RejectionMode};

pub use crate::classify::Attempts;
#[cfg(feature = "http")]
pub use crate::classify::X_RETRY_ATTEMPTS;

/// A [rejection mode](crate::rejection) as the retry layer uses it: it also decides how the inner
/// service's final error reaches the caller.
///
/// [`AsError`] wraps it in a [`LastError`](error::LastError) carrying the number of attempts; the
/// HTTP and gRPC modes pass it through unchanged, so the layered service keeps the inner error
/// type.
pub trait RetryMode<Res, E>: RejectionMode<Res, E> {
    /// The inner service's error `error` (already in this mode's error type) ending a request
    /// after `attempts` attempts.
    fn last_error(error: Self::Error, attempts: u32) -> Self::Error;
}

impl<Res, E> RetryMode<Res, E> for AsError {
    fn last_error(error: BoxError, attempts: u32) -> BoxError {
        Box::new(error::LastError::new(error, attempts))
    }
}

#[cfg(feature = "http")]
impl<B, E> RetryMode<http::Response<B>, E> for crate::http::AsHttp
where
    B: crate::http::ResponseBody,
    E: 'static,
{
    #[inline]
    fn last_error(error: E, _attempts: u32) -> E {
        error
    }
}

#[cfg(feature = "http")]
impl<B, E> RetryMode<http::Response<B>, E> for crate::grpc::AsGrpc
where
    B: Default + 'static,
    E: 'static,
{
    #[inline]
    fn last_error(error: E, _attempts: u32) -> E {
        error
    }
}
