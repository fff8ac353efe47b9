//! Retry layer integration tests: exact delay sequences on paused time, deadlines and timeouts,
//! server-requested waits, the budget, idempotency and request copying, the Service contract,
//! configuration errors, metrics, the circuit breaker stacked on top, and real HTTP and gRPC over
//! loopback.

#[path = "../common/mod.rs"]
mod common;

mod budget;
mod config;
mod contract;
mod delays;
mod grpc;
mod hooks;
mod http;
mod http_real;
mod metrics;
mod stack;
mod time_limits;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tower_rampart::BoxError;

/// An upstream of `u32` requests whose `n`-th call (from 0) fails when `fails(n)`; it records when
/// each call was made (tokio's clock) and can take time to answer.
#[derive(Clone)]
pub(crate) struct Scripted {
    calls: Arc<Mutex<Vec<Instant>>>,
    fails: Arc<dyn Fn(usize) -> bool + Send + Sync>,
    delay: Arc<dyn Fn(usize) -> Duration + Send + Sync>,
}

impl Scripted {
    /// Fails the calls `fails` says, answers at once.
    pub(crate) fn new(fails: impl Fn(usize) -> bool + Send + Sync + 'static) -> Self {
        Self {
            calls: Arc::default(),
            fails: Arc::new(fails),
            delay: Arc::new(|_| Duration::ZERO),
        }
    }

    /// Every call fails.
    pub(crate) fn failing() -> Self {
        Self::new(|_| true)
    }

    /// Call `n` takes `delay(n)` to answer.
    pub(crate) fn slow(
        mut self,
        delay: impl Fn(usize) -> Duration + Send + Sync + 'static,
    ) -> Self {
        self.delay = Arc::new(delay);
        self
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// When each call was made, relative to `start`.
    pub(crate) fn call_times(&self, start: Instant) -> Vec<Duration> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|t| *t - start)
            .collect()
    }

    pub(crate) fn service(
        &self,
    ) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
    + use<> {
        let this = self.clone();
        tower::service_fn(move |req: u32| {
            let this = this.clone();
            async move {
                let n = {
                    let mut calls = this.calls.lock().unwrap();
                    calls.push(Instant::now());
                    calls.len() - 1
                };
                let delay = (this.delay)(n);
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                if (this.fails)(n) {
                    Err::<u32, BoxError>(std::io::Error::other("upstream failed").into())
                } else {
                    Ok(req)
                }
            }
        })
    }
}

/// One call through `svc`.
pub(crate) async fn call<S, Req>(svc: &mut S, req: Req) -> Result<S::Response, S::Error>
where
    S: Service<Req>,
{
    svc.ready().await?.call(req).await
}

pub(crate) const MS: Duration = Duration::from_millis(1);
