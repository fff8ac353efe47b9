use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::CircuitState;
use super::error::CircuitOpen;
use super::fallback::{Fallback, NoFallback};
use super::future::{Held, OwnRef, Recorder, ResponseFuture};
use super::layer::{Circuits, Shared};
use super::state::Breaker;
use crate::classify::Classify;
use crate::key::{ExtractKey, GlobalKey, KeyExtractor};
use crate::rejection::RejectionMode;

/// Guards calls to an upstream with a circuit; made by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// An open circuit refuses from `call`, at once and without touching the inner service, so the
/// layer works under axum, which does not honour backpressure. With one circuit (no key), an open
/// circuit's refusal is also decided in `poll_ready`, which then answers ready at once without
/// polling the inner service: a caller is not held behind an inner service that cannot take calls
/// (a `ConcurrencyLimit` whose slots hung calls hold, a channel's full buffer) only to be refused,
/// and nothing the inner service reserves when ready (a permit, a waiting rate limiter's unit) is
/// held for a call that never comes. Otherwise `poll_ready` is the inner service's (with circuits
/// per key, the key is not known before `call`). Clones share the circuit (or circuits).
///
/// One exception, for [shared circuits](super#shared-circuit-state) only: a half-open caller on a
/// replica that has not yet asked the shared store for probe permits waits briefly for that
/// answer before it is admitted or refused. The readied inner service moves into the response
/// future for that wait (a clone takes its place), hence `S: Clone`.
pub struct CircuitBreaker<S, C, M, F = NoFallback, X = GlobalKey>
where
    X: KeyExtractor,
{
    inner: S,
    shared: Arc<Shared<C, M, F, X>>,
    /// With one circuit: this service's own reference to it, which its response futures clone.
    /// Services on different threads then never write one shared reference count per call.
    one: Option<Arc<OwnRef>>,
    /// `poll_ready` decided that the next `call` is refused (the one circuit was open): it then
    /// never reaches the inner service (not readied).
    shed: bool,
}

impl<S, C, M, F, X: KeyExtractor> CircuitBreaker<S, C, M, F, X> {
    pub(crate) fn new(inner: S, shared: Arc<Shared<C, M, F, X>>) -> Self {
        let one = match &shared.circuits {
            Circuits::One(breaker) => Some(Arc::new(OwnRef(Arc::clone(breaker)))),
            Circuits::PerKey(_) => None,
        };
        Self {
            inner,
            shared,
            one,
            shed: false,
        }
    }

    define_inner_service_accessors!();
}

impl<S, C, M, F, X: KeyExtractor> CircuitBreaker<S, C, M, F, X> {
    /// `poll_ready` of an open circuit: ready at once, the next `call` refused. The inner service
    /// is not polled: its readiness would be waited for, and what it reserves when ready (a
    /// concurrency permit, a waiting rate limiter's unit) would be held for a call that never
    /// comes. Out of line: the closed circuit's `poll_ready` stays one load and a branch before
    /// the inner service's.
    #[cold]
    #[inline(never)]
    fn poll_ready_shed<Req>(&mut self) -> Poll<Result<(), M::Error>>
    where
        S: Service<Req>,
        M: RejectionMode<S::Response, S::Error>,
    {
        self.shed = true;
        Poll::Ready(Ok(()))
    }

    /// The refusal `poll_ready` decided: the inner service was not readied, so it is not called
    /// (the circuit may have closed since; the decision stands, as tower's `LoadShed`'s does).
    #[cold]
    #[inline(never)]
    fn shed_call<Req>(&mut self) -> ResponseFuture<S, Req, C, M, S::Response, M::Error>
    where
        S: Service<Req>,
        M: RejectionMode<S::Response, S::Error>,
        M::Error: From<S::Error>,
        F: Fallback<S::Response>,
    {
        self.shed = false;
        let one = self.one.as_ref().expect("only the one circuit sheds");
        let breaker = &one.0;
        // As it is now; one that closed since `poll_ready` is refused as open all the same.
        let (state, retry_after) = breaker.sheds().unwrap_or((CircuitState::Open, None));
        let refusal = breaker.refuse(state, retry_after);
        let open = CircuitOpen::new(
            breaker.cfg.name,
            breaker.key.clone(),
            refusal.state,
            refusal.retry_after,
        );
        tracing::debug!(
            circuit = open.name(),
            state = %open.state(),
            "call refused: circuit open"
        );
        ResponseFuture::refused(
            self.shared
                .fallback
                .refused::<S::Error, M>(open, &self.shared.mode),
        )
    }
}

impl<S: Clone, C, M, F, X: KeyExtractor> Clone for CircuitBreaker<S, C, M, F, X> {
    /// Clones share the circuit. A refusal decided by `poll_ready` is not cloned (permits are
    /// taken in `call`).
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, C: fmt::Debug, M: fmt::Debug, F: fmt::Debug, X: KeyExtractor + fmt::Debug>
    fmt::Debug for CircuitBreaker<S, C, M, F, X>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("circuits", &self.shared.circuits)
            .field("key", &self.shared.key)
            .field("classifier", &self.shared.classifier)
            .field("mode", &self.shared.mode)
            .field("fallback", &self.shared.fallback)
            .finish()
    }
}

impl<S, Req, C, M, F, X> Service<Req> for CircuitBreaker<S, C, M, F, X>
where
    S: Service<Req> + Clone,
    X: ExtractKey<Req>,
    C: Classify<S::Response, S::Error> + Clone,
    M: RejectionMode<S::Response, S::Error>,
    M::Error: From<S::Error>,
    F: Fallback<S::Response>,
{
    type Response = S::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, Req, C, M, S::Response, M::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(one) = &self.one
            && one.0.sheds().is_some()
        {
            return self.poll_ready_shed::<Req>();
        }
        self.shed = false;
        self.inner.poll_ready(cx).map_err(M::Error::from)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if self.shed {
            return self.shed_call();
        }
        let shared = &*self.shared;
        // A per-key circuit is looked up (a reference taken); the one circuit is borrowed, and its
        // reference cloned only for a call that goes through.
        let keyed = match (&self.one, &shared.circuits) {
            (Some(_), _) => None,
            (None, Circuits::PerKey(map)) => match shared.key.extract(&req) {
                Ok(key) => Some(map.get_or_insert(&key)),
                Err(missing) => {
                    // No key, no circuit to attribute the call to: straight through, unrecorded.
                    tracing::debug!(
                        reason = missing.reason(),
                        "call passed through: no circuit key"
                    );
                    return ResponseFuture::passed(self.inner.call(req));
                }
            },
            (None, Circuits::One(breaker)) => Some(Arc::clone(breaker)),
        };
        let breaker: &Breaker = match (&self.one, &keyed) {
            (_, Some(keyed)) => keyed,
            (Some(one), None) => &one.0,
            (None, None) => unreachable!("a service has its one circuit or looks one up"),
        };
        match breaker.acquire() {
            Ok(permit) => {
                let held = match (keyed, &self.one) {
                    (Some(keyed), _) => Held::Key(keyed),
                    (None, Some(one)) => Held::One(Arc::clone(one)),
                    (None, None) => unreachable!("a service has its one circuit or looks one up"),
                };
                let recorder = Recorder::new(held, permit, shared.classifier.clone());
                ResponseFuture::called(self.inner.call(req), recorder)
            }
            Err(refusal) => {
                let open = CircuitOpen::new(
                    breaker.cfg.name,
                    breaker.key.clone(),
                    refusal.state,
                    refusal.retry_after,
                );
                #[cfg(feature = "redis")]
                if refusal.ticket != 0 {
                    // A shared circuit's replica asks its store for a probe permit for this
                    // caller: wait for the answer with the readied service.
                    let held = match (keyed, &self.one) {
                        (Some(keyed), _) => Held::Key(keyed),
                        (None, Some(one)) => Held::One(Arc::clone(one)),
                        (None, None) => {
                            unreachable!("a service has its one circuit or looks one up")
                        }
                    };
                    let max = held
                        .breaker()
                        .link
                        .as_ref()
                        .map_or(std::time::Duration::ZERO, |l| l.signal.probe_wait());
                    let refused = shared.fallback.refused::<S::Error, M>(open, &shared.mode);
                    let clone = self.inner.clone();
                    let svc = std::mem::replace(&mut self.inner, clone);
                    return ResponseFuture::waiting(
                        svc,
                        req,
                        held,
                        shared.classifier.clone(),
                        refusal.ticket,
                        max,
                        refused,
                    );
                }
                tracing::debug!(
                    circuit = open.name(),
                    key = open.key().unwrap_or(""),
                    state = %open.state(),
                    "call refused: circuit open"
                );
                ResponseFuture::refused(shared.fallback.refused::<S::Error, M>(open, &shared.mode))
            }
        }
    }
}
