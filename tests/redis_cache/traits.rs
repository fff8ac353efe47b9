//! The Redis cache store and its futures can go anywhere a tower service goes.

use tower_rampart::backend::redis::{RedisCacheFuture, RedisCacheStore};
use tower_rampart::cache::CachedResponse;

use crate::common::send_sync_static;
fn send_static<T: Send + 'static>() {}

#[test]
fn stores_are_send_sync_and_futures_send() {
    send_sync_static::<RedisCacheStore<CachedResponse>>();
    send_sync_static::<RedisCacheStore<String>>();
    send_static::<RedisCacheFuture<()>>();
}
