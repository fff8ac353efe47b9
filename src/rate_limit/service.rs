use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::time::Instant;
use tower_service::Service;

use super::Decision;
use super::error::{CostTooHigh, KeyMissing, Policy, RateLimited};
use super::event::RateLimitEvent;
use super::future::ResponseFuture;
use super::key::MissingKey;
use super::layer::Shared;
use super::limit::{Ask, LimitSet};
use super::policies::{PerRequest, RequestPolicy};
use super::store::{Check, RateLimitStore};
use crate::backend::{BackendError, BackendUnavailable};
use crate::key::{ExtractKey, KeyError, KeyExtractor};
use crate::rejection::{Rejection, RejectionMode};

mod reserve;

use reserve::Reservation;

/// Applies a rate limit to requests; made by [`RateLimitLayer`](super::RateLimitLayer).
///
/// Clones share the layer's limits. By default a request over quota is refused from `call` at
/// once (`poll_ready` only waits for the inner service), because axum drives `poll_ready` inside the
/// request and does not honour backpressure. In waiting mode with a global key the wait and the
/// reservation happen in `poll_ready` instead; see
/// [`RateLimitBuilder::wait_up_to`](super::RateLimitBuilder::wait_up_to).
pub struct RateLimit<S, X: KeyExtractor, St, M, P = PerRequest> {
    inner: S,
    shared: Arc<Shared<X, St, M, P>>,
    reservation: Reservation,
}

/// What a request asked the store, kept for a decision made again later (the slow path).
pub(crate) struct Asked {
    pub(crate) set: Arc<LimitSet>,
    pub(crate) cost: u32,
}

impl<S, X: KeyExtractor, St, M, P> RateLimit<S, X, St, M, P> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<X, St, M, P>>) -> Self {
        Self {
            inner,
            shared,
            reservation: Reservation::default(),
        }
    }

    define_inner_service_accessors!();
}

impl<S: Clone, X: KeyExtractor, St, M, P> Clone for RateLimit<S, X, St, M, P> {
    /// Clones share the limits; a reservation made by `poll_ready` is not cloned.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, X: KeyExtractor + fmt::Debug, St: fmt::Debug, M: fmt::Debug, P> fmt::Debug
    for RateLimit<S, X, St, M, P>
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

impl<S, Req, X, St, M, P> Service<Req> for RateLimit<S, X, St, M, P>
where
    S: Service<Req> + Clone,
    X: ExtractKey<Req>,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
    P: RequestPolicy<Req, S::Response>,
{
    type Response = S::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, Req, X, St, M, P>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(max_wait) = self.shared.wait
            && let Some(key) = self.shared.key.fixed_key()
        {
            ready!(self.poll_reserve(cx, &key, max_wait));
            if self.reservation.answers_alone() {
                // `call` answers the refusal (or the backend's failure) without the inner
                // service: do not wait for its readiness.
                return Poll::Ready(Ok(()));
            }
        }
        self.inner.poll_ready(cx).map_err(M::Error::from)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &*self.shared;
        if shared.wait.is_some() && shared.key.fixed_key().is_some() {
            return self.call_reserved(req);
        }
        let key = match shared.key.extract(&req) {
            Ok(key) => key,
            Err(cause) => {
                return match shared.missing_key {
                    MissingKey::Allow => ResponseFuture::inner(self.inner.call(req), None),
                    MissingKey::Reject => {
                        ResponseFuture::done(shared.key_missing::<_, S::Error, _>(cause, req))
                    }
                };
            }
        };
        let cost = shared.per_request.cost(&req);
        if cost == 1 && shared.direct && shared.live.is_fixed() {
            // The plain layer: one enforced limit, as built. An admission needs no judging (no
            // shadow limit, no shadow mode); anything else takes the general path below.
            let set = &shared.live.fixed;
            return match shared.store.check_plain(&key, set) {
                Check::Ready(Ok(d)) if d.is_allowed() => ResponseFuture::inner(
                    self.inner.call(req),
                    shared.admit::<S::Response, S::Error>(d, || set.policy_of(0)),
                ),
                checked => decided(&mut self.inner, &self.shared, checked, req, key, set, cost),
            };
        }
        let (policies, resolved);
        let set = if shared.live.is_fixed() {
            &shared.live.fixed
        } else {
            policies = shared.live.current.load();
            resolved = shared.live.resolve(&policies, &key);
            &*resolved
        };
        let checked = shared.store.check(&key, &Ask::new(set).cost(cost));
        decided(&mut self.inner, &self.shared, checked, req, key, set, cost)
    }
}

/// What a request gets once the store has answered (or will answer) over `set`.
#[inline(always)]
#[allow(clippy::type_complexity)]
fn decided<S, Req, X, St, M, P>(
    inner: &mut S,
    this: &Arc<Shared<X, St, M, P>>,
    checked: Check<St::Future>,
    req: Req,
    key: X::Key,
    set: &Arc<LimitSet>,
    cost: u32,
) -> ResponseFuture<S, Req, X, St, M, P>
where
    S: Service<Req> + Clone,
    X: ExtractKey<Req>,
    St: RateLimitStore<X::Key>,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
    P: RequestPolicy<Req, S::Response>,
{
    let shared = &**this;
    match checked {
        Check::Ready(Ok(d)) => match shared.judge(d, set) {
            Ok(d) => ResponseFuture::inner(
                inner.call(req),
                shared.admit::<S::Response, S::Error>(d, || set.policy_of(d.policy_index())),
            ),
            Err(d) => match shared.wait {
                Some(max) if !d.exceeds_capacity() && d.retry_after() <= max => {
                    let now = Instant::now();
                    // The readied service is taken (the contract: this call consumes the
                    // readiness) and dropped, releasing what readiness reserved (a
                    // `ConcurrencyLimit` permit, a `Buffer` slot): held while the request sleeps,
                    // it would block the requests of other keys that have quota. The future
                    // readies a clone of its own when its quota is back.
                    let svc = take_ready(inner).clone();
                    let ask = Asked {
                        set: Arc::clone(set),
                        cost,
                    };
                    ResponseFuture::sleeping(
                        now + d.retry_after(),
                        now + max,
                        svc,
                        req,
                        key,
                        ask,
                        Arc::clone(this),
                    )
                }
                _ => ResponseFuture::done(shared.refuse::<_, S::Error, _>(d, set, cost, Some(req))),
            },
        },
        Check::Ready(Err(e)) => {
            ResponseFuture::done(shared.unavailable::<_, S::Error, _>(e, Some(req)))
        }
        Check::Pending(check) => {
            let deadline = shared.wait.map(|max| Instant::now() + max);
            // The readied service, called as soon as the store admits; if it says to wait for
            // quota, the future lets it go before sleeping (see `Slow::poll_slow`).
            let svc = take_ready(inner);
            let ask = Asked {
                set: Arc::clone(set),
                cost,
            };
            ResponseFuture::checking(check, deadline, svc, req, key, ask, Arc::clone(this))
        }
    }
}

/// Moves the service that `poll_ready` readied into a future, leaving a clone in its place.
fn take_ready<S: Clone>(inner: &mut S) -> S {
    let clone = inner.clone();
    std::mem::replace(inner, clone)
}

impl<X: KeyExtractor, St, M, P> Shared<X, St, M, P> {
    /// Counts an admission, and gives the decision to render as headers on the admitted response,
    /// if the layer sends them and the mode's responses have headers (`policy` is asked only
    /// then: a mode without headers never looks the binding limit up).
    #[inline]
    pub(crate) fn admit<Res, E>(
        &self,
        d: Decision,
        policy: impl FnOnce() -> Policy,
    ) -> Option<(Decision, Policy)>
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
        (M::WRITES_HEADERS && self.headers_on_success && d.is_counted()).then(|| (d, policy()))
    }

    /// What the layer makes of a store's decision over `set`: `Ok` to admit (counting the shadow
    /// limits' refusals, and in shadow mode admitting a refusal after counting it), `Err` to refuse.
    #[inline(always)]
    pub(crate) fn judge(&self, d: Decision, set: &LimitSet) -> Result<Decision, Decision> {
        if d.shadow_refused_mask() != 0 {
            self.shadow_refused(set, d.shadow_refused_mask());
        }
        if d.is_allowed() {
            return Ok(d);
        }
        if self.shadow {
            self.shadow_refused(set, 1 << d.policy_index());
            return Ok(d.admitted_anyway());
        }
        Err(d)
    }

    /// Counts, traces and reports the refusals shadow limits (bits of `mask`) would have made.
    #[cold]
    fn shadow_refused(&self, set: &LimitSet, mask: u8) {
        let name = self.policy.name;
        for (i, limit) in set.limits().iter().enumerate() {
            if mask & (1 << i) == 0 {
                continue;
            }
            let policy = limit.name();
            tracing::debug!(
                limiter = name,
                policy,
                "rate limit would have refused (shadow); admitted"
            );
            #[cfg(feature = "metrics")]
            crate::metrics::count(
                "rampart_rate_limit_shadow_rejected_total",
                name,
                &[("policy", policy)],
            );
            self.hooks
                .emit(|| RateLimitEvent::ShadowRefused { name, policy });
        }
    }

    /// Refuses a request of `cost` units over `set` with decision `d`: over quota, or a cost no
    /// state could ever admit.
    pub(crate) fn refuse<Res, E, Req>(
        &self,
        d: Decision,
        set: &LimitSet,
        cost: u32,
        req: Option<Req>,
    ) -> Result<Res, M::Error>
    where
        M: RejectionMode<Res, E>,
        P: RequestPolicy<Req, Res>,
    {
        let index = d.policy_index().min(set.limits().len() - 1);
        let policy = set.policy_of(index);
        let name = self.policy.name;
        if d.exceeds_capacity() {
            let capacity = set.limits()[index].limits.burst;
            tracing::debug!(
                limiter = name,
                policy = policy.name,
                cost,
                capacity,
                "rate limit refused a cost above the limit's capacity"
            );
            #[cfg(feature = "metrics")]
            self.count_rejection("cost_too_high");
            self.hooks.emit(|| RateLimitEvent::CostTooHigh {
                name,
                policy: policy.name,
                cost,
                capacity,
            });
            return self.answer(CostTooHigh::new(cost, capacity, policy.name), req);
        }
        tracing::debug!(limiter = name, policy = policy.name, retry_after = ?d.retry_after(), "rate limited");
        #[cfg(feature = "metrics")]
        self.count_rejection("rate_limited");
        let retry_after = d.retry_after();
        self.hooks
            .emit(|| RateLimitEvent::Refused { name, retry_after });
        self.answer(RateLimited::new(d, policy), req)
    }

    /// Refuses a request the key extractor found no key in.
    pub(crate) fn key_missing<Res, E, Req>(
        &self,
        cause: KeyError,
        req: Req,
    ) -> Result<Res, M::Error>
    where
        M: RejectionMode<Res, E>,
        P: RequestPolicy<Req, Res>,
    {
        if let Some(suppressed) = self.missing_key_log.check() {
            tracing::warn!(
                limiter = self.policy.name,
                %cause,
                suppressed,
                "rate limit key missing; request refused"
            );
        }
        #[cfg(feature = "metrics")]
        self.count_rejection("key_missing");
        let name = self.policy.name;
        self.hooks.emit(|| RateLimitEvent::KeyMissing { name });
        self.answer(KeyMissing::new(cause), Some(req))
    }

    pub(crate) fn unavailable<Res, E, Req>(
        &self,
        e: BackendError,
        req: Option<Req>,
    ) -> Result<Res, M::Error>
    where
        M: RejectionMode<Res, E>,
        P: RequestPolicy<Req, Res>,
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
        self.answer(BackendUnavailable::new(e), req)
    }

    /// The application's response to `rejection` when it has one and the request is at hand,
    /// the rejection mode's otherwise.
    fn answer<R: Rejection, Res, E, Req>(
        &self,
        rejection: R,
        req: Option<Req>,
    ) -> Result<Res, M::Error>
    where
        M: RejectionMode<Res, E>,
        P: RequestPolicy<Req, Res>,
    {
        if let Some(req) = req
            && let Some(res) = self.per_request.respond(&rejection, req)
        {
            return Ok(res);
        }
        self.mode.reject(rejection)
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
