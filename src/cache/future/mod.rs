//! The cache's response future (a state machine over the states below), and what a request
//! does after its lookup: the path (`path`), the leader's fill (`fill`), the background refresh
//! (`refresh`), waiting for another's fill (`wait`), and a lookup that does I/O (`lookup`).

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower_service::Service;

use super::entry::{CacheEntry, Freshness, Timing};
use super::flight::{Flight, FlightGuard, Joined, Outcome};
use super::handle::PendingInvalidation;
use super::key::CacheKey;
use super::layer::Meter;
use super::layer::Shared;
use super::mode::{Bounds, CacheMode, CacheStatus, Captured};
use super::store::{CacheStore, FillLock, LockMode, StoreOp};
use crate::backend::BackendError;
use crate::key::ExtractKey;

mod fill;
mod lookup;
mod path;
mod refresh;
mod wait;

pub(crate) use self::fill::*;
pub(crate) use self::lookup::*;
pub(crate) use self::path::*;
pub(crate) use self::refresh::*;
pub(crate) use self::wait::*;

/// The state of a [`ResponseFuture`], with the types of one service filled in.
pub(crate) type StateOf<S, Req, X, St, A> = State<
    <S as Service<Req>>::Future,
    Pin<Box<<A as CacheMode<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Capture>>,
    Result<
        <A as CacheMode<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Response,
        <S as Service<Req>>::Error,
    >,
    Box<Fill<X, St, A, StoredOf<S, Req, A>>>,
    Arc<Shared<X, St, A>>,
    Box<Waiting<S, Req, X, St, A, StoredOf<S, Req, A>>>,
    LookupOf<S, Req, X, St, A>,
    Box<Locking<S, Req, Box<Fill<X, St, A, StoredOf<S, Req, A>>>, StoredOf<S, Req, A>>>,
>;

type StoredOf<S, Req, A> =
    <A as CacheMode<Req, <S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Stored;

type LookupOf<S, Req, X, St, A> = Lookup<
    <St as CacheStore<StoredOf<S, Req, A>>>::Future<Option<CacheEntry<StoredOf<S, Req, A>>>>,
    S,
    Req,
    Arc<Shared<X, St, A>>,
>;

pin_project! {
    /// Response future of [`Cache`](super::Cache).
    ///
    /// A hit is ready at once (no allocation). A miss is the inner call, then (in HTTP mode) the
    /// reading of its body; a request waiting for another's call takes a boxed slow path. A
    /// lookup in a store that does I/O is held inline (the store's future, the request, the
    /// service and the key): boxed, it was one more allocation and free per Redis hit, about 350
    /// instructions of the `instructions` bench's `redis64/rampart_cache_hit` row (`INSTRUCTIONS_ONLY=1
    /// INSTRUCTIONS_CALLS=2000 cargo bench --bench instructions --all-features --
    /// redis64/rampart_cache_hit`: 17,645 / 17,489 → 17,230 / 17,212), at the price of a larger
    /// future for every hit (an in-memory HTTP hit moves about 116 instructions more).
    pub struct ResponseFuture<S, Req, X, St, A>
    where
        S: Service<Req>,
        A: CacheMode<Req, S::Response, S::Error>,
        St: CacheStore<A::Stored>,
    {
        #[pin]
        state: StateOf<S, Req, X, St, A>,
    }
}

pin_project! {
    #[project = StateProj]
    pub(crate) enum State<F, C, R, Fl, Sh, W, L, K> {
        Done { result: Option<R> },
        Passing { #[pin] fut: F, shared: Sh, status: Option<CacheStatus> },
        Writing { #[pin] fut: F, shared: Sh, resource: Box<[u8]>, variants: bool },
        Invalidating { invalidation: PendingInvalidation, result: Option<R> },
        Leading { #[pin] fut: F, fill: Option<Fl> },
        Capturing { #[pin] capture: C, fill: Option<Fl> },
        Waiting { waiting: W },
        Looking { #[pin] lookup: L },
        Locking { locking: K },
    }
}

impl<F, C, R, Fl, Sh, W, L, K> State<F, C, R, Fl, Sh, W, L, K> {
    #[inline]
    pub(crate) fn done(result: R) -> Self {
        Self::Done {
            result: Some(result),
        }
    }

    pub(crate) fn leading(fut: F, fill: Fl) -> Self {
        Self::Leading {
            fut,
            fill: Some(fill),
        }
    }
    // (Leading, Capturing: the fill and the capture are boxed, to keep the hit path's future small.)
}

impl<F, C, R, Fl, Sh, T, L, K> State<F, C, R, Fl, Sh, Box<T>, L, K> {
    pub(crate) fn waiting(waiting: T) -> Self {
        Self::Waiting {
            waiting: Box::new(waiting),
        }
    }
}

impl<S, Req, X, St, A> ResponseFuture<S, Req, X, St, A>
where
    S: Service<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    St: CacheStore<A::Stored>,
{
    #[inline]
    pub(crate) fn new(state: StateOf<S, Req, X, St, A>) -> Self {
        Self { state }
    }

    pub(crate) fn pass(
        fut: S::Future,
        shared: Arc<Shared<X, St, A>>,
        status: Option<CacheStatus>,
    ) -> Self {
        Self::new(State::Passing {
            fut,
            shared,
            status,
        })
    }

    /// A request that may change the resource its key names: passed through, and when the
    /// mode judges its answer a success, the resource's entries invalidated before answering.
    pub(crate) fn writing(
        fut: S::Future,
        shared: Arc<Shared<X, St, A>>,
        resource: Box<[u8]>,
        variants: bool,
    ) -> Self {
        Self::new(State::Writing {
            fut,
            shared,
            resource,
            variants,
        })
    }

    pub(crate) fn looking(lookup: LookupOf<S, Req, X, St, A>) -> Self {
        Self::new(State::Looking { lookup })
    }
}

impl<S, Req, X, St, A> Future for ResponseFuture<S, Req, X, St, A>
where
    S: Service<Req> + Clone,
    S::Future: Send + 'static,
    Req: 'static,
    X: ExtractKey<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    A::Capture: Send + 'static,
    St: CacheStore<A::Stored>,
{
    type Output = Result<A::Response, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Done { result } => {
                    return Poll::Ready(
                        result.take().expect("cache future polled after completion"),
                    );
                }
                StateProj::Passing {
                    fut,
                    shared,
                    status,
                } => {
                    let res = ready!(fut.poll(cx))?;
                    return Poll::Ready(Ok(shared.mode.pass(res, *status)));
                }
                StateProj::Writing {
                    fut,
                    shared,
                    resource,
                    variants,
                } => {
                    let res = ready!(fut.poll(cx))?;
                    let invalidates = shared.mode.invalidates(&res);
                    let response = shared.mode.pass(res, None);
                    let pending = if invalidates {
                        shared.invalidate_resource::<StoredOf<S, Req, A>>(resource, *variants)
                    } else {
                        None
                    };
                    match pending {
                        None => return Poll::Ready(Ok(response)),
                        Some(invalidation) => this.state.set(State::Invalidating {
                            invalidation,
                            result: Some(Ok(response)),
                        }),
                    }
                }
                StateProj::Invalidating {
                    invalidation,
                    result,
                } => {
                    ready!(invalidation.as_mut().poll(cx));
                    return Poll::Ready(
                        result.take().expect("cache future polled after completion"),
                    );
                }
                StateProj::Leading { fut, fill } => {
                    let result = ready!(fut.poll(cx));
                    let fill = fill.take().expect("cache future polled after completion");
                    match fill.on_result::<Req, _, _>(result) {
                        Step::Capture(capture, fill) => this.state.set(State::Capturing {
                            capture: Box::pin(capture),
                            fill: Some(fill),
                        }),
                        Step::Done(result) => {
                            this.state.set(State::Done { result: None });
                            return Poll::Ready(result);
                        }
                    }
                }
                StateProj::Capturing { capture, fill } => {
                    let captured = ready!(capture.poll(cx));
                    let fill = fill.take().expect("cache future polled after completion");
                    let res = fill.on_captured::<Req, S::Response, S::Error>(captured);
                    this.state.set(State::Done { result: None });
                    return Poll::Ready(Ok(res));
                }
                StateProj::Waiting { waiting } => match ready!(waiting.poll_next(cx)) {
                    Next::Done(result) => {
                        this.state.set(State::Done { result: None });
                        return Poll::Ready(result);
                    }
                    Next::Pass(fut) => {
                        let shared = Arc::clone(&waiting.shared);
                        this.state.set(State::Passing {
                            fut,
                            shared,
                            status: Some(CacheStatus::Miss),
                        });
                    }
                    Next::Lead(fut, fill) => this.state.set(State::Leading {
                        fut,
                        fill: Some(fill),
                    }),
                    Next::Restart(state) => this.state.set(state),
                },
                StateProj::Locking { locking } => match ready!(locking.poll_locked(cx)) {
                    Next::Done(result) => {
                        this.state.set(State::Done { result: None });
                        return Poll::Ready(result);
                    }
                    Next::Lead(fut, fill) => this.state.set(State::Leading {
                        fut,
                        fill: Some(fill),
                    }),
                    Next::Pass(_) | Next::Restart(()) => {
                        unreachable!("a lock wait leads or answers")
                    }
                },
                StateProj::Looking { lookup } => match ready!(lookup.poll_lookup(cx)) {
                    // A hit answers at once: the whole state is not moved in only to be taken
                    // apart on the next turn of the loop.
                    State::Done { result } => {
                        this.state.set(State::Done { result: None });
                        return Poll::Ready(result.expect("a lookup's answer is ready"));
                    }
                    next => this.state.set(next),
                },
            }
        }
    }
}

impl<S, Req, X, St, A> fmt::Debug for ResponseFuture<S, Req, X, St, A>
where
    S: Service<Req>,
    A: CacheMode<Req, S::Response, S::Error>,
    St: CacheStore<A::Stored>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Done { .. } => "done",
            State::Passing { .. } => "passing",
            State::Writing { .. } => "writing",
            State::Invalidating { .. } => "invalidating",
            State::Leading { .. } => "leading",
            State::Capturing { .. } => "capturing",
            State::Waiting { .. } => "waiting",
            State::Looking { .. } => "looking",
            State::Locking { .. } => "locking",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish_non_exhaustive()
    }
}
