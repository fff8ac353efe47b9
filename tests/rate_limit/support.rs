//! Helpers shared by the rate limiter tests.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use tower::Service;

/// An always-ready service that counts its calls and echoes the request.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counting {
    pub(crate) calls: Arc<AtomicUsize>,
}

impl Counting {
    pub(crate) fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl<Req> Service<Req> for Counting {
    type Response = Req;
    type Error = Infallible;
    type Future = Ready<Result<Req, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        ready(Ok(req))
    }
}
