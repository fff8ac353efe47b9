//! Circuit breaker integration tests: transitions on paused time, exactly-N half-open probes under
//! concurrency, the window against a reference model, the Service contract, configuration errors,
//! and real HTTP.

#[path = "../common/mod.rs"]
mod common;

mod config;
mod contract;
mod hooks;
mod http;
mod metrics;
mod per_key;
mod probes;
mod slow_and_time;
mod transitions;
mod window_model;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tower::{Service, ServiceExt};
use tower_rampart::BoxError;

/// An upstream whose next calls fail while `failing` is set; counts its calls.
#[derive(Clone, Default)]
pub(crate) struct Upstream {
    pub(crate) failing: Arc<std::sync::atomic::AtomicBool>,
    pub(crate) calls: Arc<AtomicUsize>,
    /// How long each call takes, in milliseconds (on tokio's clock).
    pub(crate) delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Upstream {
    pub(crate) fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    pub(crate) fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub(crate) fn service(
        &self,
    ) -> impl Service<(), Response = &'static str, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static {
        let this = self.clone();
        tower::service_fn(move |()| {
            let this = this.clone();
            async move {
                this.calls.fetch_add(1, Ordering::SeqCst);
                let delay = this.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                if this.failing.load(Ordering::SeqCst) {
                    Err::<&'static str, BoxError>("upstream failed".into())
                } else {
                    Ok("ok")
                }
            }
        })
    }
}

/// One call through `svc`.
pub(crate) async fn call<S>(svc: &mut S) -> Result<&'static str, BoxError>
where
    S: Service<(), Response = &'static str, Error = BoxError>,
{
    svc.ready().await?.call(()).await
}
