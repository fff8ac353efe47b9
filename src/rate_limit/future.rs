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
use super::layer::Shared;
use super::limit::Ask;
use super::policies::{PerRequest, RequestPolicy};
use super::service::Asked;
use super::store::{Check, RateLimitStore};
use crate::backend::BackendError;
use crate::key::KeyExtractor;
use crate::rejection::RejectionMode;

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit).
    ///
    /// On the in-memory path it is the inner service's future plus, in HTTP and gRPC modes, the
    /// decision to render as headers; a refusal is ready at once. Backends that do I/O, and the
    /// waiting mode with per-request keys, take a boxed slow path (the box keeps this future as
    /// small as the fast path needs).
    pub struct ResponseFuture<S, Req, X, St, M, P = PerRequest>
    where
        S: Service<Req>,
        X: KeyExtractor,
        St: RateLimitStore<X::Key>,
        M: RejectionMode<S::Response, S::Error>,
    {
        #[pin]
        state: State<
            S::Future,
            Result<S::Response, M::Error>,
            Pin<Box<Slow<S, Req, X, St, M, P>>>,
        >,
        headers: Option<(Decision, Policy)>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, R, B> {
        Inner { #[pin] fut: F },
        Done { result: Option<R> },
        Slow { slow: B },
    }
}

pin_project! {
    /// The slow path: waiting for a backend's decision or for quota, then readying the service.
    struct Slow<S, Req, X, St, M, P>
    where
        S: Service<Req>,
        X: KeyExtractor,
        St: RateLimitStore<X::Key>,
    {
        #[pin]
        phase: Phase<St::Future>,
        svc: S,
        req: Option<Req>,
        key: X::Key,
        ask: Asked,
        deadline: Option<Instant>,
        shared: Arc<Shared<X, St, M, P>>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<C> {
        Checking { #[pin] check: C },
        Sleeping { #[pin] sleep: Sleep },
        Readying,
    }
}

/// Where the slow path ends: the inner service was called, or the request was answered.
enum Outcome<F, T, E> {
    Called(F),
    Answered(Result<T, E>),
}

impl<S, Req, X, St, M, P> ResponseFuture<S, Req, X, St, M, P>
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
        }
    }

    #[inline]
    pub(crate) fn done(result: Result<S::Response, M::Error>) -> Self {
        Self {
            state: State::Done {
                result: Some(result),
            },
            headers: None,
        }
    }

    fn slow(
        phase: Phase<St::Future>,
        deadline: Option<Instant>,
        svc: S,
        req: Req,
        key: X::Key,
        ask: Asked,
        shared: Arc<Shared<X, St, M, P>>,
    ) -> Self {
        Self {
            state: State::Slow {
                slow: Box::pin(Slow {
                    phase,
                    svc,
                    req: Some(req),
                    key,
                    ask,
                    deadline,
                    shared,
                }),
            },
            headers: None,
        }
    }

    pub(crate) fn checking(
        check: St::Future,
        deadline: Option<Instant>,
        svc: S,
        req: Req,
        key: X::Key,
        ask: Asked,
        shared: Arc<Shared<X, St, M, P>>,
    ) -> Self {
        Self::slow(
            Phase::Checking { check },
            deadline,
            svc,
            req,
            key,
            ask,
            shared,
        )
    }

    /// A request admitted without its service readied (waiting mode, after `poll_ready` refused
    /// the reservation and so did not wait for the service): readies `svc`, then calls it.
    pub(crate) fn readying(
        svc: S,
        req: Req,
        key: X::Key,
        ask: Asked,
        shared: Arc<Shared<X, St, M, P>>,
        headers: Option<(Decision, Policy)>,
    ) -> Self {
        let mut this = Self::slow(Phase::Readying, None, svc, req, key, ask, shared);
        this.headers = headers;
        this
    }

    pub(crate) fn sleeping(
        wake: Instant,
        deadline: Instant,
        svc: S,
        req: Req,
        key: X::Key,
        ask: Asked,
        shared: Arc<Shared<X, St, M, P>>,
    ) -> Self {
        let sleep = tokio::time::sleep_until(wake);
        Self::slow(
            Phase::Sleeping { sleep },
            Some(deadline),
            svc,
            req,
            key,
            ask,
            shared,
        )
    }
}

impl<S, Req, X, St, M, P> Future for ResponseFuture<S, Req, X, St, M, P>
where
    S: Service<Req> + Clone,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
    P: RequestPolicy<Req, S::Response>,
{
    type Output = Result<S::Response, M::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    #[cfg_attr(not(feature = "http"), allow(unused_mut))]
                    let mut res = ready!(fut.poll(cx)).map_err(M::Error::from)?;
                    #[cfg(feature = "http")]
                    // Read in place (no move of the pair out of the future): this state answers once.
                    if let Some((decision, policy)) = this.headers.as_ref()
                        && let Some(headers) = M::headers_mut(&mut res)
                    {
                        super::headers::write_rate_limit(headers, policy, decision);
                    }
                    return Poll::Ready(Ok(res));
                }
                StateProj::Done { result } => {
                    return Poll::Ready(
                        result
                            .take()
                            .expect("rate limit future polled after completion"),
                    );
                }
                StateProj::Slow { slow } => {
                    match ready!(slow.as_mut().poll_slow(cx, this.headers)) {
                        Outcome::Called(fut) => this.state.set(State::Inner { fut }),
                        Outcome::Answered(result) => {
                            this.state.set(State::Done { result: None });
                            return Poll::Ready(result);
                        }
                    }
                }
            }
        }
    }
}

impl<S, Req, X, St, M, P> Slow<S, Req, X, St, M, P>
where
    S: Service<Req> + Clone,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
    P: RequestPolicy<Req, S::Response>,
{
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        headers: &mut Option<(Decision, Policy)>,
    ) -> Poll<Outcome<S::Future, S::Response, M::Error>> {
        let mut this = self.project();
        loop {
            let decided = match this.phase.as_mut().project() {
                PhaseProj::Readying => {
                    if let Err(e) = ready!(this.svc.poll_ready(cx)) {
                        return Poll::Ready(Outcome::Answered(Err(M::Error::from(e))));
                    }
                    let req = this.req.take().expect("request sent once");
                    return Poll::Ready(Outcome::Called(this.svc.call(req)));
                }
                PhaseProj::Checking { check } => ready!(check.poll(cx)),
                PhaseProj::Sleeping { sleep } => {
                    ready!(sleep.poll(cx));
                    let ask = Ask::new(&this.ask.set).cost(this.ask.cost);
                    match this.shared.store.check(this.key, &ask) {
                        Check::Ready(result) => result,
                        Check::Pending(check) => {
                            this.phase.set(Phase::Checking { check });
                            continue;
                        }
                    }
                }
            };
            let shared = &**this.shared;
            let set = &this.ask.set;
            match decided.map(|d| shared.judge(d, set)) {
                Ok(Ok(d)) => {
                    *headers = shared
                        .admit::<S::Response, S::Error>(d, || set.policy_of(d.policy_index()));
                    this.phase.set(Phase::Readying);
                }
                Ok(Err(d)) => {
                    let wake = Instant::now() + d.retry_after();
                    match *this.deadline {
                        Some(deadline) if wake <= deadline && !d.exceeds_capacity() => {
                            // Not held while sleeping: what the service's readiness reserved (a
                            // `ConcurrencyLimit` permit, a `Buffer` slot) would block other keys'
                            // requests that have quota. A clone is readied once admitted.
                            let fresh = this.svc.clone();
                            drop(std::mem::replace(this.svc, fresh));
                            this.phase.set(Phase::Sleeping {
                                sleep: tokio::time::sleep_until(wake),
                            });
                        }
                        _ => {
                            let req = this.req.take();
                            let refused =
                                shared.refuse::<_, S::Error, _>(d, set, this.ask.cost, req);
                            return Poll::Ready(Outcome::Answered(refused));
                        }
                    }
                }
                Err(e) => {
                    let e: BackendError = e;
                    let req = this.req.take();
                    let refused = shared.unavailable::<_, S::Error, _>(e, req);
                    return Poll::Ready(Outcome::Answered(refused));
                }
            }
        }
    }
}

impl<S, Req, X, St, M, P> fmt::Debug for ResponseFuture<S, Req, X, St, M, P>
where
    S: Service<Req>,
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Inner { .. } => "inner",
            State::Done { .. } => "done",
            State::Slow { .. } => "slow",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
