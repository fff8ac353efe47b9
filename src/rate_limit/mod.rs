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
//! # Policies: tiers, costs, several quotas, shadow mode, live changes
//!
//! - **Several quotas, one decision**: [`limits`](RateLimitBuilder::limits) takes up to
//!   [`MAX_LIMITS`] named [`Limit`]s (10 per second *and* 1000 per day). A request is admitted
//!   only if every one admits it, and then all spend; never some. `RateLimit-Policy` lists them,
//!   `RateLimit` and `Retry-After` are the binding limit's (the longest wait).
//! - **Tiers**: [`tier`](RateLimitBuilder::tier) names other sets, and
//!   [`tier_of`](RateLimitBuilder::tier_of) maps a key to its tier. No tier, or a tier the layer
//!   does not have, gets the default set: never "unlimited".
//! - **Cost**: [`cost`](RateLimitBuilder::cost) says how many units a request spends (bytes, rows,
//!   tokens). A cost no limit could ever admit is refused with
//!   [`CostTooHigh`](error::CostTooHigh) (HTTP 413), not a 429 that invites a retry.
//! - **Shadow**: a [`Limit::shadow`] limit, or the whole layer
//!   ([`shadow`](RateLimitBuilder::shadow)), decides, counts
//!   (`rampart_rate_limit_shadow_rejected_total{name,policy}`), reports
//!   ([`RateLimitEvent::ShadowRefused`]) and admits: how a new limit is rolled out.
//! - **Peek and live changes**: a [`RateLimitHandle`] from [`RateLimitLayer::handle`] peeks at what
//!   a key would get without spending, and changes the default, a tier or a key's own limits while
//!   the layer runs. State is kept per key and limit *name*, so a changed quota keeps its counts.
//! - **The refusal is the app's**: `respond_with` (feature `http`) builds the whole response from the
//!   refusal and the request's parts.
//!
//! ```
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::key::key_fn;
//! use tower_rampart::rate_limit::{Limit, Quota, RateLimitLayer, error::RateLimited};
//!
//! struct Upload { user: u64, plan: &'static str, rows: u32 }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), BoxError> {
//! let layer = RateLimitLayer::builder()
//!     // Free users: 100 rows a minute and 1000 an hour, both enforced.
//!     .limits([
//!         Limit::new("minute", Quota::per_minute(100)),
//!         Limit::new("hour", Quota::per_hour(1000)),
//!     ])
//!     // Pro users: 1000 a minute; a daily cap observed in shadow before it is enforced.
//!     .tier("pro", [
//!         Limit::new("minute", Quota::per_minute(1000)),
//!         Limit::new("day", Quota::with_period(20_000, std::time::Duration::from_secs(86_400)))
//!             .shadow(true),
//!     ])
//!     .cost(|upload: &Upload| upload.rows)
//!     .key(key_fn(|upload: &Upload| Some((upload.user, upload.plan))))
//!     .tier_of(|&(_, plan): &(u64, &'static str)| (plan == "pro").then_some("pro"))
//!     .build()?;
//! let handle = layer.handle();
//! let mut svc = layer.layer(service_fn(|u: Upload| async move { Ok::<_, BoxError>(u.rows) }));
//!
//! let free = Upload { user: 1, plan: "free", rows: 80 };
//! assert_eq!(svc.ready().await?.call(free).await?, 80);
//! let again = Upload { user: 1, plan: "free", rows: 80 };
//! let refused = svc.ready().await?.call(again).await.unwrap_err();
//! assert_eq!(refused.downcast_ref::<RateLimited>().unwrap().policy(), "minute");
//!
//! // What user 1 has left, without spending it; then a bigger quota, live.
//! assert_eq!(handle.peek(&(1, "free")).await?.remaining(), 19);
//! handle.set_key(&(1, "free"), [Limit::new("minute", Quota::per_minute(1000))])?;
//! let again = Upload { user: 1, plan: "free", rows: 80 };
//! assert_eq!(svc.ready().await?.call(again).await?, 80);
//! # Ok(()) }
//! ```
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
