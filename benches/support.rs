//! Helpers shared by the benchmark modules: driving a tower `Service` by hand, without a runtime.
//!
//! Every service benchmarked here answers at once (in-memory stores, `std::future::ready` inner
//! services), so one request is `poll_ready`, `call` and a single poll of the response future with
//! a waker that does nothing. No executor, no task, no allocation of our own: what is measured is
//! the service and nothing else.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tower::{Service, ServiceBuilder, service_fn};
use tower_rampart::circuit_breaker::CircuitBreakerLayer;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};
use tower_rampart::retry::RetryLayer;

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

/// A quota far above what any run spends: every call is admitted, so the rows measure the
/// admitted path.
pub(crate) const HUGE: Quota = Quota::with_period(u32::MAX, Duration::from_secs(3600));

/// Rate limit, circuit breaker and retry, from the outside in, each with its defaults (the
/// limiter on [`HUGE`]), around [`bare_u64`].
pub(crate) fn rl_cb_retry_u64() -> impl Service<u64, Response = u64> + 'static {
    ServiceBuilder::new()
        .layer(
            RateLimitLayer::builder()
                .quota(HUGE)
                .build()
                .expect("valid quota"),
        )
        .layer(
            CircuitBreakerLayer::builder()
                .build()
                .expect("valid configuration"),
        )
        .layer(RetryLayer::builder().build().expect("valid configuration"))
        .service(bare_u64())
}

/// The inner service of the `u64` groups: echoes its request.
pub(crate) fn bare_u64()
-> impl Service<u64, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>>
+ Clone
+ Send
+ 'static {
    service_fn(|n: u64| ready(Ok::<_, Infallible>(n)))
}

/// Runs one thread per service in `svcs`, each sending `iters` requests through its service, the
/// request for call `i` on thread `t` being `request(t, i)`. Returns the wall time of the slowest
/// thread, measured from a common start.
pub(crate) fn parallel<S>(svcs: Vec<S>, iters: u64, request: fn(u64, u64) -> u64) -> Duration
where
    S: Service<u64> + Send,
{
    let barrier = Barrier::new(svcs.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..)
            .zip(svcs)
            .map(|(t, mut svc)| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut cx = noop_cx();
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        let res = call_now(&mut svc, &mut cx, black_box(request(t, i)));
                        if res.is_err() {
                            refused();
                        }
                        drop(black_box(res));
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .max()
            .unwrap_or_default()
    })
}
