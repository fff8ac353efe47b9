//! Rate limiting: GCRA or sliding-window quotas, per key, shared by every clone of the layer.
//!
//! - A [`Quota`] says how many requests per period; an [`Algorithm`] how they are counted
//!   (GCRA by default: exact, smooth, one atomic word per key).
//! - A [key extractor](crate::key) says what the quota applies to: the whole service
//!   ([`GlobalKey`](crate::key::GlobalKey), the default), the client IP
//!   ([`PeerIp`](crate::key::PeerIp), or [`ClientIp`](crate::key::ClientIp) behind trusted
//!   proxies), a header ([`HeaderKey`](crate::key::HeaderKey)), or a closure
//!   ([`key_fn`](crate::key::key_fn)). A request with no key follows [`MissingKey`].
//! - A backend keeps the counts: in memory by default (bounded; idle keys are dropped by
//!   themselves), Redis for many replicas.
//! - A [rejection mode](crate::rejection) says how a refusal reaches the caller: `Err(BoxError)`
//!   holding [`RateLimited`](error::RateLimited) by default, or an HTTP 429 / gRPC
//!   `RESOURCE_EXHAUSTED` response.
//!
//! Requests over quota are refused at once by default. For client stacks that prefer to wait,
//! see [`RateLimitBuilder::wait_up_to`].
//!
//! # Example: axum, 10 metric submissions per minute per client, reads free
//!
//! ```
//! use std::net::SocketAddr;
//! use axum::{Router, routing::{get, post}};
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! let app: Router = Router::new()
//!     .route("/api/metrics", post(|| async { "stored" }))
//!     .route_layer(RateLimitLayer::per_ip(Quota::per_minute(10)))
//!     .route("/api/metrics/summary", get(|| async { "summary" }));
//!
//! // Serve with the peer address recorded, so the limiter can key on it:
//! // axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
//! # let _ = app.into_make_service_with_connect_info::<SocketAddr>();
//! ```
//!
//! # Example: any tower service, refusals as errors
//!
//! ```
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer, error::RateLimited};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder()
//!     .quota(Quota::per_second(2))
//!     .algorithm(Algorithm::SlidingWindow)
//!     .build()?;
//! let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, BoxError>(n * 2) }));
//! # use tower::Layer;
//!
//! assert_eq!(svc.ready().await?.call(1).await?, 2);
//! assert_eq!(svc.ready().await?.call(2).await?, 4);
//! let err = svc.ready().await?.call(3).await.unwrap_err();
//! assert!(err.is::<RateLimited>());
//! # Ok(()) }
//! ```

pub(crate) mod algorithm;
#[cfg(feature = "serde")]
mod config;
pub mod error;
mod event;
pub mod future;
mod handle;
#[cfg(feature = "http")]
pub(crate) mod headers;
pub mod key;
mod layer;
mod limit;
mod policies;
pub(crate) mod quota;
mod service;
mod store;

pub use self::algorithm::Decision;
#[cfg(feature = "serde")]
pub use self::config::RateLimitConfig;
pub use self::event::RateLimitEvent;
pub use self::handle::{MAX_KEYS_WITH_OWN_LIMITS, PolicyChange, PolicySink, RateLimitHandle};
pub use self::key::MissingKey;
pub use self::layer::{NoBackend, RateLimitBuilder, RateLimitLayer};
pub use self::limit::{Ask, Limit, LimitSet, MAX_LIMITS, SetLimit};
#[cfg(feature = "http")]
pub use self::policies::RespondFn;
pub use self::policies::{Cost, ModeResponds, PerRequest, RequestPolicy, Responder, UnitCost};
pub use self::quota::{Algorithm, MAX_PERIOD, Quota};
pub use self::service::RateLimit;
pub use self::store::{Check, RateLimitBackend, RateLimitSpec, RateLimitStore, StoreLimits};
