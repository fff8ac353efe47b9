//! The counting upstream the cache tests (in memory and in Redis) call through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tower::Service;
use tower_rampart::BoxError;

/// An upstream answering `"<request>#<call number>"`, so tests can tell which call produced an
/// answer. It can be slowed down (paused time) and made to fail.
#[derive(Clone, Default)]
pub struct Upstream {
    calls: Arc<AtomicUsize>,
    failing: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
}

impl Upstream {
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn fail(&self, yes: bool) {
        self.failing.store(yes, Ordering::SeqCst);
    }

    pub fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }

    pub fn service(
        &self,
    ) -> impl Service<String, Response = String, Error = BoxError, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static {
        let this = self.clone();
        tower::service_fn(move |req: String| {
            let this = this.clone();
            async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst) + 1;
                let delay = this.delay_ms.load(Ordering::SeqCst);
                if delay > 0 {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                }
                if this.failing.load(Ordering::SeqCst) {
                    Err::<String, BoxError>(format!("upstream failed on call {n}").into())
                } else {
                    Ok(format!("{req}#{n}"))
                }
            }
        })
    }
}
