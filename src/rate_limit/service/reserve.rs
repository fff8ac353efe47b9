//! Waiting mode with a fixed key: the unit of quota `poll_ready` reserves, and what `call` makes
//! of it once the request, and so its cost, is known.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use sync_wrapper::SyncWrapper;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::{Asked, RateLimit, decided};
use crate::backend::BackendError;
use crate::key::{ExtractKey, KeyExtractor};
use crate::rate_limit::Decision;
use crate::rate_limit::error::Policy;
use crate::rate_limit::future::ResponseFuture;
use crate::rate_limit::limit::{Ask, LimitSet};
use crate::rate_limit::policies::RequestPolicy;
use crate::rate_limit::store::{Check, RateLimitStore};
use crate::rejection::RejectionMode;

/// The capacity reserved in `poll_ready` (waiting mode with a fixed key only).
#[derive(Default)]
pub(super) struct Reservation {
    pub(super) outcome: Option<Reserved>,
    deadline: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    pending: Option<BoxCheck>,
}

impl Reservation {
    /// Whether `call` answers the request without the inner service (a refusal, or the backend's
    /// failure), so that `poll_ready` need not wait for the inner service's readiness.
    pub(super) fn answers_alone(&self) -> bool {
        matches!(
            self.outcome,
            Some(Reserved::Refused(..) | Reserved::Failed(_))
        )
    }
}

/// A backend's pending decision, boxed: only waiting mode on an I/O backend stores one in the service.
/// `SyncWrapper` keeps the service `Sync` (axum requires it) without asking backends for `Sync` futures:
/// the future is only ever reached through `&mut self`.
type BoxCheck = SyncWrapper<Pin<Box<dyn Future<Output = Result<Decision, BackendError>> + Send>>>;

pub(super) enum Reserved {
    /// One unit of `set` spent, for the next `call`, and the policy that binds it. (Keeping the
    /// policy, as before the set was kept too, keeps the service's layout: with the set alone the
    /// default layer's `u64/rampart_rate_limit_global` row of the `instructions` bench, which
    /// never reserves, went from 176 to 180 instructions per call.)
    Granted(Decision, Policy, Arc<LimitSet>),
    Refused(Decision, Arc<LimitSet>),
    Failed(BackendError),
}

/// Which limits of `set` can never admit `cost` units at once (a cost above their capacity, the
/// burst), where the reserved unit and the rest (`cost - 1`) decided apart would not tell: the
/// store's refusal for the first such enforced limit (the one the store binds to), and the shadow
/// limits that would refuse `cost` but admit the rest (bit `i` for limit `i`; those that refuse
/// the rest too the store reports itself).
fn over_capacity(set: &LimitSet, cost: u32) -> (Option<Decision>, u8) {
    let mut refused = None;
    let mut shadow = 0;
    for (i, l) in set.limits().iter().enumerate() {
        if cost <= l.limits.burst {
            continue;
        }
        if l.shadow {
            if cost - 1 <= l.limits.burst {
                shadow |= 1 << i;
            }
        } else if refused.is_none() {
            refused = Some(Decision::over_capacity(l.limits.limit, 0).with_binding(i));
        }
    }
    (refused, shadow)
}

impl<S, X, St, M, P> RateLimit<S, X, St, M, P>
where
    X: KeyExtractor,
    St: RateLimitStore<X::Key>,
{
    /// Waiting mode with a fixed key: reserves one unit of quota, sleeping for it up to `max_wait`.
    pub(super) fn poll_reserve(
        &mut self,
        cx: &mut Context<'_>,
        key: &X::Key,
        max_wait: Duration,
    ) -> Poll<()> {
        let r = &mut self.reservation;
        loop {
            if r.outcome.is_some() {
                return Poll::Ready(());
            }
            if let Some(sleep) = r.sleep.as_mut() {
                ready!(sleep.as_mut().poll(cx));
                // Polled long after its wake-up (a quarter of a whole wait, from 10 to 100 ms; a
                // caller that keeps polling is back within a scheduler's delay): the caller gave
                // up on readiness (a timeout around `ready()`) and is back. A new wait, with its
                // own `max_wait`: the old deadline would refuse it at once.
                let late =
                    (max_wait / 4).clamp(Duration::from_millis(10), Duration::from_millis(100));
                if Instant::now().saturating_duration_since(sleep.deadline()) > late {
                    r.deadline = None;
                }
                r.sleep = None;
            }
            let set = {
                let live = &self.shared.live;
                if live.is_fixed() {
                    Arc::clone(&live.fixed)
                } else {
                    Arc::clone(&live.resolve(&live.current.load(), key))
                }
            };
            let result = if let Some(pending) = r.pending.as_mut() {
                let result = ready!(pending.get_mut().as_mut().poll(cx));
                r.pending = None;
                result
            } else {
                match self.shared.store.check(key, &Ask::new(&set)) {
                    Check::Ready(result) => result,
                    Check::Pending(fut) => {
                        r.pending = Some(SyncWrapper::new(Box::pin(fut)));
                        continue;
                    }
                }
            };
            match result.map(|d| self.shared.judge(d, &set)) {
                Ok(Ok(d)) => {
                    r.deadline = None;
                    let policy = set.policy_of(d.policy_index());
                    r.outcome = Some(Reserved::Granted(d, policy, set));
                }
                Ok(Err(d)) => {
                    let now = Instant::now();
                    let deadline = *r.deadline.get_or_insert(now + max_wait);
                    let wake = now + d.retry_after();
                    if wake <= deadline && !d.exceeds_capacity() {
                        r.sleep = Some(Box::pin(tokio::time::sleep_until(wake)));
                    } else {
                        r.deadline = None;
                        r.outcome = Some(Reserved::Refused(d, set));
                    }
                }
                Err(e) => {
                    r.deadline = None;
                    r.outcome = Some(Reserved::Failed(e));
                }
            }
        }
    }

    /// `call` in waiting mode with a fixed key: the request spends the unit `poll_ready`
    /// reserved, and the rest of its cost now (waiting for it in the response future, up to
    /// `max_wait`, if it must).
    ///
    /// Exact for every cost: a request of `cost` units spends `cost` units, as the store would
    /// decide them at once, and no more. A cost of 0 spends nothing and a cost above a limit's
    /// capacity is refused with `CostTooHigh`, both keeping the reserved unit for this service's
    /// next call (as does a rest refused at once that waiting cannot help). After a refused
    /// reservation a cost other than 1 is decided afresh (no more waiting): 0 passes, a cost
    /// above the capacity is `CostTooHigh`, and a refusal carries the figures of the real cost.
    pub(super) fn call_reserved<Req>(&mut self, req: Req) -> ResponseFuture<S, Req, X, St, M, P>
    where
        S: Service<Req> + Clone,
        X: ExtractKey<Req>,
        M: RejectionMode<S::Response, S::Error>,
        M::Error: From<S::Error>,
        P: RequestPolicy<Req, S::Response>,
    {
        let reserved = self
            .reservation
            .outcome
            .take()
            .expect("poll_ready must be called first");
        let shared = &*self.shared;
        let cost = shared.per_request.cost(&req);
        let (Some(max_wait), Some(key)) = (shared.wait, shared.key.fixed_key()) else {
            unreachable!("a reservation is made in waiting mode with a fixed key only")
        };
        match reserved {
            Reserved::Granted(d, policy, _) if cost == 1 => ResponseFuture::inner(
                self.inner.call(req),
                shared.admit::<S::Response, S::Error>(d, || policy),
            ),
            Reserved::Granted(d, policy, set) => {
                self.call_granted((d, policy, set), req, key, cost, max_wait)
            }
            Reserved::Refused(d, set) if cost == 1 => {
                ResponseFuture::done(shared.refuse::<_, S::Error, _>(d, &set, 1, Some(req)))
            }
            Reserved::Refused(_, set) => self.call_refused(set, req, key, cost),
            Reserved::Failed(e) => {
                ResponseFuture::done(shared.unavailable::<_, S::Error, _>(e, Some(req)))
            }
        }
    }

    /// A request of `cost` units (not 1) on a granted reservation (`Reserved::Granted`'s
    /// fields, given back to the service when the request spends nothing of it).
    fn call_granted<Req>(
        &mut self,
        (d, policy, set): (Decision, Policy, Arc<LimitSet>),
        req: Req,
        key: X::Key,
        cost: u32,
        max_wait: Duration,
    ) -> ResponseFuture<S, Req, X, St, M, P>
    where
        S: Service<Req> + Clone,
        X: ExtractKey<Req>,
        M: RejectionMode<S::Response, S::Error>,
        M::Error: From<S::Error>,
        P: RequestPolicy<Req, S::Response>,
    {
        let shared = &*self.shared;
        if cost == 0 {
            // Passes without spending: the reserved unit is this service's next call's.
            let fut = self.inner.call(req);
            let headers = shared.admit::<S::Response, S::Error>(d, || policy);
            self.reservation.outcome = Some(Reserved::Granted(d, policy, set));
            return ResponseFuture::inner(fut, headers);
        }
        let (over, shadow) = over_capacity(&set, cost);
        if let Some(over) = over {
            // Refused as the store refuses it, with nothing spent (admitted in shadow mode): the
            // reserved unit is this service's next call's.
            let fut = match shared.judge(over.with_shadow_refused(shadow), &set) {
                Ok(anyway) => ResponseFuture::inner(
                    self.inner.call(req),
                    shared.admit::<S::Response, S::Error>(anyway, || {
                        set.policy_of(anyway.policy_index())
                    }),
                ),
                Err(over) => ResponseFuture::done(shared.refuse::<_, S::Error, _>(
                    over,
                    &set,
                    cost,
                    Some(req),
                )),
            };
            self.reservation.outcome = Some(Reserved::Granted(d, policy, set));
            return fut;
        }
        if shadow != 0 {
            shared.shadow_refused(&set, shadow);
        }
        let rest = cost - 1;
        match shared.store.check(&key, &Ask::new(&set).cost(rest)) {
            Check::Ready(Ok(refused))
                if !refused.is_allowed() && !shared.shadow && refused.retry_after() > max_wait =>
            {
                // Refused, and waiting cannot help: nothing of the rest was spent, and the
                // reserved unit is this service's next call's.
                let (Ok(refused) | Err(refused)) = shared.judge(refused, &set);
                let refused = shared.refuse::<_, S::Error, _>(refused, &set, cost, Some(req));
                self.reservation.outcome = Some(Reserved::Granted(d, policy, set));
                ResponseFuture::done(refused)
            }
            // Admitted, or waited for in the response future (the reserved unit goes with the
            // request: if the wait ends in a refusal, it stays spent).
            checked => decided(&mut self.inner, &self.shared, checked, req, key, &set, rest),
        }
    }

    /// A request of `cost` units (not 1) whose reservation over `set` was refused: decided now
    /// for its real cost, without waiting any more.
    fn call_refused<Req>(
        &mut self,
        set: Arc<LimitSet>,
        req: Req,
        key: X::Key,
        cost: u32,
    ) -> ResponseFuture<S, Req, X, St, M, P>
    where
        S: Service<Req> + Clone,
        X: ExtractKey<Req>,
        M: RejectionMode<S::Response, S::Error>,
        M::Error: From<S::Error>,
        P: RequestPolicy<Req, S::Response>,
    {
        let shared = &*self.shared;
        // `poll_ready` did not ready the inner service for a refused reservation: a clone is
        // readied if the request is admitted.
        let svc = self.inner.clone();
        match shared.store.check(&key, &Ask::new(&set).cost(cost)) {
            Check::Ready(Ok(d)) => match shared.judge(d, &set) {
                Ok(d) => {
                    let headers = shared
                        .admit::<S::Response, S::Error>(d, || set.policy_of(d.policy_index()));
                    let ask = Asked { set, cost };
                    ResponseFuture::readying(svc, req, key, ask, Arc::clone(&self.shared), headers)
                }
                Err(d) => {
                    ResponseFuture::done(shared.refuse::<_, S::Error, _>(d, &set, cost, Some(req)))
                }
            },
            Check::Ready(Err(e)) => {
                ResponseFuture::done(shared.unavailable::<_, S::Error, _>(e, Some(req)))
            }
            Check::Pending(check) => {
                let ask = Asked { set, cost };
                ResponseFuture::checking(check, None, svc, req, key, ask, Arc::clone(&self.shared))
            }
        }
    }
}
