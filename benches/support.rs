//! Helpers shared by the benchmark modules: driving a tower `Service` by hand, without a runtime.
//!
//! Every service benchmarked here answers at once (in-memory stores, `std::future::ready` inner
//! services), so one request is `poll_ready`, `call` and a single poll of the response future with
//! a waker that does nothing. No executor, no task, no allocation of our own: what is measured is
//! the service and nothing else.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use tower::Service;

/// A task context whose waker does nothing (nothing benchmarked here ever needs waking).
pub(crate) fn noop_cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

/// Sends one request through `svc`: `poll_ready`, `call`, and one poll of the response future.
///
/// # Panics
///
/// If the service or its response future is not ready at once: the benchmarks only measure the
/// synchronous path, and a pending future would mean they measure something else.
#[inline]
pub(crate) fn call_now<S, R>(
    svc: &mut S,
    cx: &mut Context<'_>,
    req: R,
) -> Result<S::Response, S::Error>
where
    S: Service<R>,
{
    match svc.poll_ready(cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => not_ready("poll_ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(cx) {
        Poll::Ready(res) => res,
        Poll::Pending => not_ready("the response future"),
    }
}

#[cold]
#[inline(never)]
fn not_ready(what: &str) -> ! {
    panic!("{what} was not ready at once; these benchmarks only measure the synchronous path")
}

/// Stops the run when a limiter refuses: every row is meant to measure admitted requests only.
#[cold]
#[inline(never)]
pub(crate) fn refused() -> ! {
    panic!("a request was refused; the benchmark quota must be large enough to admit every call")
}
