//! The rate limiter's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::Decision;
use super::error::Policy;
use super::key::KeyExtractor;
use super::layer::Shared;
use super::store::{Check, RateLimitStore};
use crate::backend::BackendError;
use crate::rejection::RejectionMode;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    ///
    /// On the in-memory path it is the inner service's future plus, in HTTP and gRPC modes, the
    /// decision to render as headers; a refusal is ready at once. Only backends that do I/O, and the
    /// waiting mode with per-request keys, use the slower states.
    pub struct ResponseFuture<S, Req, X, St, M>
    where
        S: Service<Req>,
        X: KeyExtractor,
        St: RateLimitStore<X::Key>,
        M: RejectionMode<S::Response, S::Error>,
    {
        #[pin]
        state: State<S::Future, St::Future>,
        headers: Option<(Decision, Policy)>,
        done: Option<Result<S::Response, M::Error>>,
        slow: Option<Slow<S, Req, X, St, M>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, C> {
        Inner { #[pin] fut: F },
        Done,
        Checking { #[pin] check: C },
        Sleeping { #[pin] sleep: Sleep },
        Readying,
    }
}

/// What the slow path carries: the readied service, the request, and the limiter.
struct Slow<S, Req, X: KeyExtractor, St, M> {
    svc: S,
    req: Option<Req>,
    key: X::Key,
    deadline: Option<Instant>,
    shared: Arc<Shared<X, St, M>>,
}

impl<S, Req, X, St, M> ResponseFuture<S, Req, X, St, M>
where
    S: Service<Req>,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
{
    #[inline]
    pub(crate) fn inner(fut: S::Future, headers: Option<(Decision, Policy)>) -> Self {
        Self {
            state: State::Inner { fut },
            headers,
            done: None,
            slow: None,
        }
    }

    #[inline]
    pub(crate) fn done(result: Result<S::Response, M::Error>) -> Self {
        Self {
            state: State::Done,
            headers: None,
            done: Some(result),
            slow: None,
        }
    }

    pub(crate) fn checking(
        check: St::Future,
        deadline: Option<Instant>,
        svc: S,
        req: Req,
        key: X::Key,
        shared: Arc<Shared<X, St, M>>,
    ) -> Self {
        Self {
            state: State::Checking { check },
            headers: None,
            done: None,
            slow: Some(Slow {
                svc,
                req: Some(req),
                key,
                deadline,
                shared,
            }),
        }
    }

    pub(crate) fn sleeping(
        wake: Instant,
        deadline: Instant,
        svc: S,
        req: Req,
        key: X::Key,
        shared: Arc<Shared<X, St, M>>,
    ) -> Self {
        Self {
            state: State::Sleeping {
                sleep: tokio::time::sleep_until(wake),
            },
            headers: None,
            done: None,
            slow: Some(Slow {
                svc,
                req: Some(req),
                key,
                deadline: Some(deadline),
                shared,
            }),
        }
    }
}

impl<S, Req, X, St, M> Future for ResponseFuture<S, Req, X, St, M>
where
    S: Service<Req>,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
{
    type Output = Result<S::Response, M::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let decided = match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    #[cfg_attr(not(feature = "http"), allow(unused_mut))]
                    let mut res = ready!(fut.poll(cx)).map_err(M::inner_error)?;
                    #[cfg(feature = "http")]
                    if let Some((decision, policy)) = this.headers.take()
                        && let Some(headers) = M::headers_mut(&mut res)
                    {
                        crate::http::headers::write_rate_limit(headers, &policy, &decision);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done => {
                    return Poll::Ready(
                        this.done
                            .take()
                            .expect("rate limit future polled after completion"),
                    );
                }
                StateProj::Readying => {
                    let slow = this.slow.as_mut().expect("slow path state");
                    ready!(slow.svc.poll_ready(cx)).map_err(M::inner_error)?;
                    let req = slow.req.take().expect("request sent once");
                    let fut = slow.svc.call(req);
                    this.state.set(State::Inner { fut });
                    continue;
                }
                StateProj::Checking { check } => ready!(check.poll(cx)),
                StateProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    let slow = this.slow.as_ref().expect("slow path state");
                    match slow.shared.store.check(&slow.key) {
                        Check::Ready(result) => result,
                        Check::Pending(check) => {
                            this.state.set(State::Checking { check });
                            continue;
                        }
                    }
                }
            };
            let slow = this.slow.as_ref().expect("slow path state");
            let shared = &slow.shared;
            match decided {
                Ok(d) if d.is_allowed() => {
                    *this.headers = shared.success_headers(d);
                    this.state.set(State::Readying);
                }
                Ok(d) => {
                    let wake = Instant::now() + d.retry_after();
                    match slow.deadline {
                        Some(deadline) if wake <= deadline => {
                            this.state.set(State::Sleeping {
                                sleep: tokio::time::sleep_until(wake),
                            });
                        }
                        _ => {
                            *this.done = Some(shared.refuse(d));
                            this.state.set(State::Done);
                        }
                    }
                }
                Err(e) => {
                    let e: BackendError = e;
                    *this.done = Some(shared.unavailable(e));
                    this.state.set(State::Done);
                }
            }
        }
    }
}

impl<S, Req, X, St, M> fmt::Debug for ResponseFuture<S, Req, X, St, M>
where
    S: Service<Req>,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::Done => "done",
            State::Checking { .. } => "checking",
            State::Sleeping { .. } => "sleeping",
            State::Readying => "readying",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
