//! The Redis types can be shared across tasks and threads, and a layer built on them fits axum.

use std::net::IpAddr;

use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::{RedisCheck, RedisRateLimitStore};
use tower_rampart::http::AsHttp;
use tower_rampart::key::PeerIp;
use tower_rampart::rate_limit::{RateLimit, RateLimitLayer};

use crate::common::send_sync_static;
fn send_static<T: Send + 'static>() {}

#[test]
fn redis_types_are_send_sync_and_static() {
    send_sync_static::<RedisBackend>();
    send_sync_static::<RedisRateLimitStore<IpAddr>>();
    send_static::<RedisCheck>();
    send_sync_static::<RateLimitLayer<PeerIp, RedisRateLimitStore<IpAddr>, AsHttp>>();
    send_sync_static::<RateLimit<axum::routing::Route, PeerIp, RedisRateLimitStore<IpAddr>, AsHttp>>(
    );
}
