//! Cache layer integration tests: TTL, stale-while-revalidate and stale-if-error on paused time;
//! single-flight under 1,000 concurrent misses, with failing and cancelled leaders; invalidation;
//! the HTTP rules over real HTTP (axum) and gRPC unary over tonic; the Service contract; stores
//! that do I/O; metrics.

#[path = "../common/mod.rs"]
mod common;

mod clone_mode;
mod contract;
mod grpc;
mod hooks;
mod http;
mod metrics;
mod single_flight;
mod store;

use tower::{Service, ServiceExt};
use tower_rampart::BoxError;

pub(crate) use common::upstream::Upstream;

/// One call through `svc`.
pub(crate) async fn call<S>(svc: &mut S, req: &str) -> Result<String, BoxError>
where
    S: Service<String, Response = String, Error = BoxError>,
{
    svc.ready().await?.call(req.to_owned()).await
}
