//! Test support shared by the integration tests (`#[path = "../common/mod.rs"] mod common;`).

#![allow(dead_code, unreachable_pub)]

pub mod fault_proxy;
pub mod http;
pub mod redis;
pub mod upstream;

/// Compiles only for types that are `Send + Sync + 'static` (layers, services, futures and
/// errors must be, to serve axum and tonic).
pub fn send_sync_static<T: Send + Sync + 'static>() {}

/// Asks `probe` every 100 ms until it answers `want`, 50 times at most (5 s): the last answer, for
/// the caller to check (a bounded wait for what a background task does, say).
pub async fn until_it_answers<T, F>(want: T, mut probe: impl FnMut() -> F) -> T
where
    T: PartialEq,
    F: std::future::Future<Output = T>,
{
    let mut seen = probe().await;
    for _ in 1..50 {
        if seen == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        seen = probe().await;
    }
    seen
}
