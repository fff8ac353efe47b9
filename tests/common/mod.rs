//! Test support shared by the integration tests (`#[path = "../common/mod.rs"] mod common;`).

#![allow(dead_code, unreachable_pub)]

pub mod fault_proxy;
pub mod http;
pub mod redis;
pub mod upstream;

/// Compiles only for types that are `Send + Sync + 'static` (layers, services, futures and
/// errors must be, to serve axum and tonic).
pub fn send_sync_static<T: Send + Sync + 'static>() {}
