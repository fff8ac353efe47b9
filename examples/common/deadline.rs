//! A request timeout that never answers for a write it let begin.
//!
//! tower-http's `TimeoutLayer` drops the handler when the time is up, whatever it is doing: a
//! handler awaiting Redis's acknowledgement of a write was dropped after Redis had applied it, and
//! the client was told its request timed out (a 408 for a stored metric, which a client retries:
//! stored twice). Here a handler about to write calls [`Commit::begin`] first. Until then, the time
//! being up answers the timeout's response and nothing was written; from then on the timeout no
//! longer cuts the request off, and the client gets what the write answered. The write is bounded
//! by the store's own timeouts (the fenced write, stored if and only if acknowledged, then one
//! cache invalidation per summary type it affects, each within `REDIS_TIMEOUT_MS`), so a
//! committed request still ends.
//!
//! The commit is a flag, not a lock: the handler and this layer run in the same task (the handler
//! is polled inside this layer's future), so the time can only be found up between two polls of
//! the handler, never while it is deciding to write.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Sleep;
use tower::{Layer, Service};

/// The request's commit: taken by a handler just before it writes (an extension of every request
/// under a [`DeadlineLayer`] whose method is not safe: POST, PUT, PATCH, DELETE and the like).
#[derive(Clone, Debug, Default)]
pub(crate) struct Commit(Arc<AtomicBool>);

impl Commit {
    /// From now on the request's answer is the handler's, however long the write takes: call it
    /// before the first write, after everything that may still refuse the request.
    pub(crate) fn begin(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn begun(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs a write to its end whatever becomes of its request: spawned, so that a request dropped
/// mid-write (its client gone, a gRPC client's deadline, which tonic enforces outside this
/// layer, a timeout further out) cannot leave it half done, stored with the cached summaries it
/// makes stale not yet dropped. A client that gave up learns nothing of the outcome (gRPC's
/// `DEADLINE_EXCEEDED` says as much); one still waiting gets the write's answer.
pub(crate) async fn to_the_end<T: Send + 'static>(
    write: impl Future<Output = T> + Send + 'static,
) -> T {
    match tokio::spawn(write).await {
        Ok(answer) => answer,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => panic!("a write's task was cancelled: the runtime is shutting down"),
    }
}

/// Answers `on_timeout()` to a request that has not ended after `timeout`, unless its handler has
/// begun a write ([`Commit::begin`]).
#[derive(Clone, Debug)]
pub(crate) struct DeadlineLayer<F> {
    timeout: Duration,
    on_timeout: F,
}

impl<F> DeadlineLayer<F> {
    pub(crate) fn new(timeout: Duration, on_timeout: F) -> Self {
        Self {
            timeout,
            on_timeout,
        }
    }
}

impl<S, F: Clone> Layer<S> for DeadlineLayer<F> {
    type Service = Deadline<S, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            timeout: self.timeout,
            on_timeout: self.on_timeout.clone(),
        }
    }
}

/// The service of [`DeadlineLayer`].
#[derive(Clone, Debug)]
pub(crate) struct Deadline<S, F> {
    inner: S,
    timeout: Duration,
    on_timeout: F,
}

impl<S, F, B, ResBody> Service<Request<B>> for Deadline<S, F>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    F: Fn() -> Response<ResBody> + Clone,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = DeadlineFuture<S::Future, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // Only a request whose method may write gets one (a GET costs no allocation); a handler
        // that finds none has nothing to commit to.
        let commit = (!req.method().is_safe()).then(Commit::default);
        if let Some(commit) = &commit {
            req.extensions_mut().insert(commit.clone());
        }
        DeadlineFuture {
            inner: self.inner.call(req),
            sleep: tokio::time::sleep(self.timeout),
            commit,
            on_timeout: self.on_timeout.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Deadline`].
    pub(crate) struct DeadlineFuture<Fut, F> {
        #[pin]
        inner: Fut,
        #[pin]
        sleep: Sleep,
        commit: Option<Commit>,
        on_timeout: F,
    }
}

impl<Fut, F, ResBody, E> Future for DeadlineFuture<Fut, F>
where
    Fut: Future<Output = Result<Response<ResBody>, E>>,
    F: Fn() -> Response<ResBody>,
{
    type Output = Result<Response<ResBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(answer) = this.inner.poll(cx) {
            return Poll::Ready(answer);
        }
        if this.commit.as_ref().is_some_and(Commit::begun) {
            // The write decides the answer; its store's own timeout bounds it.
            return Poll::Pending;
        }
        match this.sleep.poll(cx) {
            Poll::Ready(()) => Poll::Ready(Ok((this.on_timeout)())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    fn timed_out() -> Response<String> {
        let mut res = Response::new(String::new());
        *res.status_mut() = http::StatusCode::REQUEST_TIMEOUT;
        res
    }

    /// A handler that takes `before` to decide, then commits (if `commits`) and takes `write` to
    /// write; reports whether it wrote.
    fn handler(
        before: Duration,
        commits: bool,
        write: Duration,
        wrote: Arc<AtomicBool>,
    ) -> impl Service<
        Request<()>,
        Response = Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<Response<String>, Infallible>>,
    > + Clone {
        tower::service_fn(move |req: Request<()>| {
            let wrote = wrote.clone();
            async move {
                tokio::time::sleep(before).await;
                if commits {
                    req.extensions().get::<Commit>().unwrap().begin();
                }
                tokio::time::sleep(write).await;
                wrote.store(commits, Ordering::Relaxed);
                Ok(Response::new("written".to_owned()))
            }
        })
    }

    async fn run(before: u64, commits: bool, write: u64) -> (http::StatusCode, bool, Duration) {
        let wrote = Arc::new(AtomicBool::new(false));
        let mut svc = DeadlineLayer::new(Duration::from_secs(10), timed_out).layer(handler(
            Duration::from_secs(before),
            commits,
            Duration::from_secs(write),
            wrote.clone(),
        ));
        let start = tokio::time::Instant::now();
        let req = Request::post("/").body(()).unwrap();
        let res = tower::ServiceExt::ready(&mut svc)
            .await
            .unwrap()
            .call(req)
            .await
            .unwrap();
        (res.status(), wrote.load(Ordering::Relaxed), start.elapsed())
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_cuts_off_a_request_that_has_not_begun_writing() {
        let (status, wrote, took) = run(30, true, 1).await;
        assert_eq!(status, http::StatusCode::REQUEST_TIMEOUT);
        assert!(!wrote);
        assert_eq!(took, Duration::from_secs(10));
        // A handler that never commits is cut off too.
        let (status, _, took) = run(1, false, 30).await;
        assert_eq!(status, http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(took, Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_begun_write_answers_for_itself_past_the_timeout() {
        let (status, wrote, took) = run(9, true, 5).await;
        assert_eq!(status, http::StatusCode::OK);
        assert!(wrote);
        assert_eq!(took, Duration::from_secs(14));
        // Within the time, nothing changes.
        let (status, wrote, took) = run(1, true, 1).await;
        assert_eq!(
            (status, wrote, took),
            (http::StatusCode::OK, true, Duration::from_secs(2))
        );
    }
}
