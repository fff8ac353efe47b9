use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use sync_wrapper::SyncWrapper;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::Decision;
use super::error::{KeyMissing, Policy, RateLimited};
use super::event::RateLimitEvent;
use super::future::ResponseFuture;
use super::key::MissingKey;
use super::layer::Shared;
use super::limit::Ask;
use super::store::{Check, RateLimitStore};
use crate::backend::{BackendError, BackendUnavailable};
use crate::key::{ExtractKey, KeyExtractor};
use crate::rejection::RejectionMode;

/// Applies a rate limit to requests; made by [`RateLimitLayer`](super::RateLimitLayer).
///
/// Clones share the layer's limits. By default a request over quota is refused from `call` at
/// once (`poll_ready` only waits for the inner service), because axum drives `poll_ready` inside the
/// request and does not honour backpressure. In waiting mode with a global key the wait and the
/// reservation happen in `poll_ready` instead; see
/// [`RateLimitBuilder::wait_up_to`](super::RateLimitBuilder::wait_up_to).
pub struct RateLimit<S, X, St, M> {
    inner: S,
    shared: Arc<Shared<X, St, M>>,
    reservation: Reservation,
}

/// The capacity reserved in `poll_ready` (waiting mode with a fixed key only).
#[derive(Default)]
struct Reservation {
    outcome: Option<Reserved>,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    pending: Option<BoxCheck>,
}

/// A backend's pending decision, boxed: only waiting mode on an I/O backend stores one in the service.
/// `SyncWrapper` keeps the service `Sync` (axum requires it) without asking backends for `Sync` futures:
/// the future is only ever reached through `&mut self`.
type BoxCheck = SyncWrapper<Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>>;

enum Reserved {
    Granted(Decision),
    Refused(Decision),
    Failed(BackendError),
}

impl<S, X, St, M> RateLimit<S, X, St, M> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<X, St, M>>) -> Self {
        Self {
            inner,
            shared,
            reservation: Reservation::default(),
        }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, X, St, M> Clone for RateLimit<S, X, St, M> {
    /// Clones share the limits; a reservation made by `poll_ready` is not cloned.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, X: fmt::Debug, St: fmt::Debug, M: fmt::Debug> fmt::Debug
    for RateLimit<S, X, St, M>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RateLimit");
        d.field("inner", &self.inner);
        self.shared
            .fmt_fields(d)
            .field("reserved", &self.reservation.outcome.is_some())
            .finish()
    }
}

impl<S, Req, X, St, M> Service<Req> for RateLimit<S, X, St, M>
where
    S: Service<Req> + Clone,
    X: ExtractKey<Req>,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
{
    type Response = S::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, Req, X, St, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(max_wait) = self.shared.wait
            && let Some(key) = self.shared.key.fixed_key()
        {
            ready!(self.poll_reserve(cx, &key, max_wait));
        }
        self.inner.poll_ready(cx).map_err(M::Error::from)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        if shared.wait.is_some() && shared.key.fixed_key().is_some() {
            let reserved = self
                .reservation
                .outcome
                .take()
                .expect("poll_ready must be called first");
            return match reserved {
                Reserved::Granted(d) => ResponseFuture::inner(
                    self.inner.call(req),
                    shared.admit::<S::Response, S::Error>(d),
                ),
                Reserved::Refused(d) => ResponseFuture::done(shared.refuse(d)),
                Reserved::Failed(e) => ResponseFuture::done(shared.unavailable(e)),
            };
        }
        let key = match shared.key.extract(&req) {
            Ok(key) => key,
            Err(cause) => {
                return match shared.missing_key {
                    MissingKey::Allow => ResponseFuture::inner(self.inner.call(req), None),
                    MissingKey::Reject => {
                        if let Some(suppressed) = shared.missing_key_log.check() {
                            tracing::warn!(
                                limiter = shared.policy.name,
                                %cause,
                                suppressed,
                                "rate limit key missing; request refused"
                            );
                        }
                        #[cfg(feature = "metrics")]
                        shared.count_rejection("key_missing");
                        let name = shared.policy.name;
                        shared.hooks.emit(|| RateLimitEvent::KeyMissing { name });
                        ResponseFuture::done(shared.mode.reject(KeyMissing::new(cause)))
                    }
                };
            }
        };
        match shared.store.check(&key, &Ask::new(&shared.default_set)) {
            Check::Ready(Ok(d)) if d.is_allowed() => ResponseFuture::inner(
                self.inner.call(req),
                shared.admit::<S::Response, S::Error>(d),
            ),
            Check::Ready(Ok(d)) => match shared.wait {
                Some(max) if d.retry_after() <= max => {
                    let now = Instant::now();
                    let svc = self.take_ready_inner();
                    ResponseFuture::sleeping(
                        now + d.retry_after(),
                        now + max,
                        svc,
                        req,
                        key,
                        Arc::clone(&self.shared),
                    )
                }
                _ => ResponseFuture::done(shared.refuse(d)),
            },
            Check::Ready(Err(e)) => ResponseFuture::done(shared.unavailable(e)),
            Check::Pending(check) => {
                let deadline = shared.wait.map(|max| Instant::now() + max);
                let svc = self.take_ready_inner();
                ResponseFuture::checking(check, deadline, svc, req, key, Arc::clone(&self.shared))
            }
        }
    }
}

impl<S: Clone, X, St, M> RateLimit<S, X, St, M> {
    /// Moves the service that `poll_ready` readied into a future, leaving a clone in its place.
    fn take_ready_inner(&mut self) -> S {
        let clone = self.inner.clone();
        std::mem::replace(&mut self.inner, clone)
    }
}

impl<S, X, St, M> RateLimit<S, X, St, M>
where
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
{
    /// Waiting mode with a fixed key: reserves one unit of quota, sleeping for it up to `max_wait`.
    fn poll_reserve(&mut self, cx: &mut Context<'_>, key: &X::Key, max_wait: Duration) -> Poll<()> {
        let r = &mut self.reservation;
        loop {
            if r.outcome.is_some() {
                return Poll::Ready(());
            }
            if let Some(sleep) = r.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                r.sleep = None;
            }
            let result = if let Some(pending) = r.pending.as_mut() {
                let result = ready!(pending.get_mut().as_mut().poll(cx));
                r.pending = None;
                result
            } else {
                match self
                    .shared
                    .store
                    .check(key, &Ask::new(&self.shared.default_set))
                {
                    Check::Ready(result) => result,
                    Check::Pending(fut) => {
                        r.pending = Some(SyncWrapper::new(Box::pin(fut)));
                        continue;
                    }
                }
            };
            match result {
                Ok(d) if d.is_allowed() => {
                    r.deadline = None;
                    r.outcome = Some(Reserved::Granted(d));
                }
                Ok(d) => {
                    let now = Instant::now();
                    let deadline = *r.deadline.get_or_insert(now + max_wait);
                    let wake = now + d.retry_after();
                    if wake <= deadline {
                        r.sleep = Some(Box::pin(tokio::time::sleep_until(wake)));
                    } else {
                        r.deadline = None;
                        r.outcome = Some(Reserved::Refused(d));
                    }
                }
                Err(e) => {
                    r.deadline = None;
                    r.outcome = Some(Reserved::Failed(e));
                }
            }
        }
    }
}

impl<X, St, M> Shared<X, St, M> {
    /// Counts an admission, and gives the decision to render as headers on the admitted response,
    /// if the layer sends them and the mode's responses have headers.
    #[inline]
    pub(crate) fn admit<Res, E>(&self, d: Decision) -> Option<(Decision, Policy)>
    where
        M: RejectionMode<Res, E>,
    {
        #[cfg(feature = "metrics")]
        self.admitted
            .get_or_init(|| {
                crate::metrics::counter(&crate::metrics::key(
                    "rampart_rate_limit_admitted_total",
                    self.policy.name,
                    &[],
                ))
            })
            .increment(1);
        (M::WRITES_HEADERS && self.headers_on_success && d.is_counted())
            .then(|| (d, self.default_set.policy_of(d.policy_index())))
    }

    pub(crate) fn refuse<Res, E>(&self, d: Decision) -> Result<Res, M::Error>
    where
        M: RejectionMode<Res, E>,
    {
        tracing::debug!(limiter = self.policy.name, retry_after = ?d.retry_after(), "rate limited");
        #[cfg(feature = "metrics")]
        self.count_rejection("rate_limited");
        let (name, retry_after) = (self.policy.name, d.retry_after());
        self.hooks
            .emit(|| RateLimitEvent::Refused { name, retry_after });
        self.mode.reject(RateLimited::new(
            d,
            self.default_set.policy_of(d.policy_index()),
        ))
    }

    pub(crate) fn unavailable<Res, E>(&self, e: BackendError) -> Result<Res, M::Error>
    where
        M: RejectionMode<Res, E>,
    {
        if let Some(suppressed) = self.backend_log.check() {
            tracing::warn!(
                limiter = self.policy.name,
                error = %e,
                suppressed,
                "rate limit backend unavailable; request refused"
            );
        }
        #[cfg(feature = "metrics")]
        self.count_rejection("backend_unavailable");
        self.hooks.emit(|| RateLimitEvent::BackendUnavailable {
            name: self.policy.name,
            error: e.to_string(),
        });
        self.mode.reject(BackendUnavailable::new(e))
    }

    #[cfg(feature = "metrics")]
    fn count_rejection(&self, reason: &'static str) {
        crate::metrics::count(
            "rampart_rate_limit_rejected_total",
            self.policy.name,
            &[("reason", reason)],
        );
    }
}
