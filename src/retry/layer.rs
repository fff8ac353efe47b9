use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::backoff::{Backoff, Jitter};
use super::budget::{Budget, RetryBudget};
use super::event::RetryEvent;
use super::policy::{Seeds, StandardPolicy};
use super::request::CloneAll;
use super::service::Retry;
use crate::classify::ErrorsAreFailures;
#[cfg(feature = "http")]
use crate::classify::{GrpcClassifier, HttpClassifier};
use crate::error::ConfigError;
use crate::hooks::Hooks;
use crate::rejection::AsError;
use crate::throttle::LogThrottle;

/// The most attempts per request the builder accepts.
pub const MAX_ATTEMPTS: u32 = 100;

/// The longest per-attempt timeout or deadline the builder accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(86_400);

/// Retries requests that fail in a transient way: with backoff and jitter, within a budget, a
/// deadline and a number of attempts.
///
/// The layer holds its policy, and with it the retry budget, in an `Arc`: every clone of the layer
/// and every service it makes share one budget. Build it with [`RetryLayer::builder`] (or
/// [`RetryLayer::custom`] for a policy of your own). See the [module documentation](super).
pub struct RetryLayer<P = StandardPolicy<ErrorsAreFailures, CloneAll>, M = AsError> {
    pub(crate) shared: Arc<Shared<P, M>>,
}

/// What every service of one layer shares.
pub(crate) struct Shared<P, M> {
    pub(crate) name: &'static str,
    pub(crate) policy: P,
    pub(crate) mode: M,
    /// Keeps an exhausted budget (every failing request would warn) from flooding the logs.
    pub(crate) budget_log: LogThrottle,
    /// Told of retries and of requests given up on.
    pub(crate) hooks: Hooks<RetryEvent>,
}

impl<P, M> Clone for RetryLayer<P, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P: fmt::Debug, M: fmt::Debug> fmt::Debug for RetryLayer<P, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryLayer")
            .field("name", &self.shared.name)
            .field("policy", &self.shared.policy)
            .field("mode", &self.shared.mode)
            .finish()
    }
}

impl<S, P, M> Layer<S> for RetryLayer<P, M> {
    type Service = Retry<S, P, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Arc::clone(&self.shared))
    }
}

impl<P, M> RetryLayer<P, M> {
    /// The layer's policy.
    pub fn policy(&self) -> &P {
        &self.shared.policy
    }

    /// The layer's name, in logs and metrics.
    pub fn name(&self) -> &'static str {
        self.shared.name
    }
}

impl<C, R, M> RetryLayer<StandardPolicy<C, R>, M> {
    /// The retry budget every service of this layer draws from, if there is one.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.shared.policy.budget.as_ref()
    }
}

impl RetryLayer {
    /// Starts configuring the ready-made policy.
    ///
    /// Defaults: 3 attempts (the first included); exponential backoff from 100 ms, doubling, at
    /// most 5 s, full jitter; no per-attempt timeout, no deadline; a budget of 20% of the requests
    /// of the last 10 s plus 10 retries per second; inner errors are worth retrying, responses are
    /// final; requests copied with `Clone`; failures returned as `Err(BoxError)`.
    pub fn builder() -> RetryBuilder {
        // Tell the metrics recorder (if any) what each metric means.
        #[cfg(feature = "metrics")]
        crate::metrics::describe();
        RetryBuilder {
            name: "default",
            max_attempts: 3,
            backoff: Backoff::default(),
            jitter: None,
            max_delay: None,
            attempt_timeout: None,
            deadline: None,
            budget: BudgetSetting::Own(Budget::default()),
            retry_timeouts: true,
            seed: None,
            classifier: ErrorsAreFailures,
            requests: CloneAll,
            mode: AsError,
            hooks: Hooks::new(),
        }
    }

    /// Starts configuring a layer around a [`Policy`](super::Policy) of your own.
    pub fn custom<P>(policy: P) -> CustomBuilder<P> {
        CustomBuilder {
            name: "custom",
            policy,
            mode: AsError,
            hooks: Hooks::new(),
        }
    }
}

#[derive(Clone, Debug)]
enum BudgetSetting {
    Own(Budget),
    Shared(RetryBudget),
    Off,
}

/// Configures the ready-made policy of a [`RetryLayer`]. Made by [`RetryLayer::builder`].
///
/// Type parameters: `C` the [classifier](crate::classify), `R` the [request
/// copier](super::request), `M` the [rejection mode](crate::rejection).
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone, Debug)]
pub struct RetryBuilder<C = ErrorsAreFailures, R = CloneAll, M = AsError> {
    name: &'static str,
    max_attempts: u32,
    /// The schedule, as `backoff`, `fixed_backoff` or `exponential_backoff` set it.
    backoff: Backoff,
    /// Overrides of the schedule's jitter and cap, applied by `build` whatever the order of the
    /// setters.
    jitter: Option<Jitter>,
    max_delay: Option<Duration>,
    attempt_timeout: Option<Duration>,
    deadline: Option<Duration>,
    budget: BudgetSetting,
    retry_timeouts: bool,
    seed: Option<u64>,
    classifier: C,
    requests: R,
    mode: M,
    hooks: Hooks<RetryEvent>,
}

impl<C, R, M> RetryBuilder<C, R, M> {
    /// The layer's name, in logs and metrics (default `"default"`). Letters, digits and `-_.:`
    /// only; checked by `build`.
    pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.name = crate::name::intern(name);
        self
    }

    /// Calls `hook` on every [`RetryEvent`]: retries scheduled, budget refusals, requests given
    /// up on. Hooks run in the order added; a panicking hook is caught and logged. See
    /// [`crate::hooks`].
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RetryEvent) + Send + Sync + 'static,
    {
        self.hooks = self.hooks.with(hook);
        self
    }

    /// The most attempts per request, the first included (default 3; from 1 to 100). One attempt
    /// turns retries off.
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The delay schedule (default: exponential from 100 ms, doubling, at most 5 s, full jitter).
    ///
    /// [`jitter`](Self::jitter) and [`max_delay`](Self::max_delay), when called, override the
    /// schedule's own, before or after this: the order of the setters does not matter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Exponential backoff: `initial` before the first retry, `multiplier` times longer before
    /// each next one, at most `max` (unless [`max_delay`](Self::max_delay) says otherwise); full
    /// jitter unless [`jitter`](Self::jitter) says otherwise, before or after this.
    pub fn exponential_backoff(
        mut self,
        initial: Duration,
        multiplier: f64,
        max: Duration,
    ) -> Self {
        self.backoff = Backoff::exponential(initial, multiplier, max);
        self
    }

    /// The same delay before every retry: no jitter and a maximum delay of `delay` (so a
    /// `Retry-After` longer than `delay` ends the retries), unless [`jitter`](Self::jitter) or
    /// [`max_delay`](Self::max_delay) say otherwise, before or after this.
    pub fn fixed_backoff(mut self, delay: Duration) -> Self {
        self.backoff = Backoff::fixed(delay);
        self
    }

    /// The longest wait between two attempts. A server asking for a longer one (`Retry-After`,
    /// gRPC pushback) is not retried sooner than it asked: the caller gets its answer. Overrides the schedule's own cap (5 s by default; the delay itself for
    /// [`fixed_backoff`](Self::fixed_backoff)), whatever the order of the setters.
    pub fn max_delay(mut self, max: Duration) -> Self {
        self.max_delay = Some(max);
        self
    }

    /// The jitter. Overrides the schedule's own ([`Jitter::Full`] for the default and for
    /// [`exponential_backoff`](Self::exponential_backoff), [`Jitter::None`] for
    /// [`fixed_backoff`](Self::fixed_backoff)), whatever the order of the setters.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = Some(jitter);
        self
    }

    /// Each attempt may take at most `timeout`; one that takes longer is dropped and counts as a
    /// transient failure (see [`retry_timeouts`](Self::retry_timeouts)). Off by default.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// The whole request, attempts and waits included, may take at most `deadline`. A retry that
    /// could not start before it is not made, an attempt still running at the deadline is dropped
    /// ([`AttemptTimedOut`](super::error::AttemptTimedOut) with
    /// [`is_deadline`](super::error::AttemptTimedOut::is_deadline)), a server asking to wait
    /// beyond it is answered with its own last response, and so is a request still waiting for the
    /// inner service to be ready for a retry when the deadline comes: no attempt starts after it.
    /// Off by default. Reads the clock once per request (and again only on the way to a retry).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Whether an attempt that timed out may be retried (default: yes).
    pub fn retry_timeouts(mut self, yes: bool) -> Self {
        self.retry_timeouts = yes;
        self
    }

    /// The retry budget (default [`Budget::default`]: 20% plus 10 per second over 10 s). Made when
    /// the layer is built and shared by everything the layer makes.
    pub fn budget(mut self, budget: Budget) -> Self {
        self.budget = BudgetSetting::Own(budget);
        self
    }

    /// Draws from a budget shared with other layers (for example one budget per upstream host for
    /// several routes).
    pub fn shared_budget(mut self, budget: RetryBudget) -> Self {
        self.budget = BudgetSetting::Shared(budget);
        self
    }

    /// No retry budget: only the number of attempts and the deadline limit retries. Not
    /// recommended for services under load.
    pub fn no_budget(mut self) -> Self {
        self.budget = BudgetSetting::Off;
        self
    }

    /// Seeds the jitter, for reproducible tests: the `k`-th request to be retried (counting from 0,
    /// in the order of their first retries) draws its delays from
    /// [`Backoff::delays_seeded`]`(seed + k)`.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// What is worth retrying (default [`ErrorsAreFailures`]: errors are, responses are not):
    /// any classifier from [`classify`](crate::classify), the circuit breaker's too. Retry tries
    /// again on [transient](crate::classify::Verdict::Transient),
    /// [throttled](crate::classify::Verdict::Throttled) and
    /// [refused](crate::classify::Verdict::Refused) verdicts, honouring their
    /// [pushback](crate::classify::Pushback).
    pub fn classify<C2>(self, classifier: C2) -> RetryBuilder<C2, R, M> {
        RetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            budget: self.budget,
            retry_timeouts: self.retry_timeouts,
            seed: self.seed,
            classifier,
            requests: self.requests,
            mode: self.mode,
            hooks: self.hooks,
        }
    }

    /// How requests are copied, and which may be retried (default [`CloneAll`]); see
    /// [`request`](super::request).
    pub fn requests<R2>(self, requests: R2) -> RetryBuilder<C, R2, M> {
        RetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            budget: self.budget,
            retry_timeouts: self.retry_timeouts,
            seed: self.seed,
            classifier: self.classifier,
            requests,
            mode: self.mode,
            hooks: self.hooks,
        }
    }

    /// How a timeout reaches the caller, and whether inner errors keep their type (default
    /// [`AsError`]); see [`crate::rejection`] and [`RetryMode`](super::RetryMode).
    pub fn rejection<M2>(self, mode: M2) -> RetryBuilder<C, R, M2> {
        RetryBuilder {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            jitter: self.jitter,
            max_delay: self.max_delay,
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            budget: self.budget,
            retry_timeouts: self.retry_timeouts,
            seed: self.seed,
            classifier: self.classifier,
            requests: self.requests,
            mode,
            hooks: self.hooks,
        }
    }

    /// For HTTP. Sets exactly:
    ///
    /// - `.classify(HttpClassifier::new())`: errors and `502`, `503`, `504` and `429` responses
    ///   are retried, honouring `Retry-After`; the final response gets the
    ///   [`Attempts`](super::Attempts) extension (see [`HttpClassifier`]);
    /// - `.requests(HttpRequests::new())`: idempotent methods and requests with an
    ///   `Idempotency-Key` only, bodies not buffered (see [`HttpRequests`](super::request::HttpRequests));
    /// - `.rejection(AsHttp::new())`: a final timeout becomes a `504` response and inner errors
    ///   keep their type (so the layer fits axum's `Router::layer`), which leaves them without an
    ///   attempt count (responses have it in the [`Attempts`](super::Attempts) extension).
    ///
    /// Everything else keeps its value.
    ///
    /// The `504` is built from [`Bytes`](bytes::Bytes), so the response body must be a
    /// [`ResponseBody`](crate::http::ResponseBody) (`From<Bytes>`: axum's `Body`, `Full<Bytes>`,
    /// ...). hyper's `Incoming` is not: for a hyper client, keep the default mode,
    /// `.http().rejection(AsError)`, which returns timeouts and the client's errors as
    /// `BoxError`s that carry the attempt count (the compile error says so).
    #[cfg(feature = "http")]
    pub fn http(
        self,
    ) -> RetryBuilder<HttpClassifier, super::request::HttpRequests, crate::http::AsHttp> {
        self.classify(HttpClassifier::new())
            .requests(super::request::HttpRequests::new())
            .rejection(crate::http::AsHttp::new())
    }

    /// For gRPC clients over `http` (a tonic `Channel`, with the generated client on top). Sets
    /// exactly:
    ///
    /// - `.classify(GrpcClassifier::new())`: errors and `UNAVAILABLE` and `RESOURCE_EXHAUSTED`
    ///   are retried, honouring the server's pushback; the final response gets the
    ///   [`Attempts`](super::Attempts) extension (see [`GrpcClassifier`]);
    /// - `.requests(HttpRequests::new().any_method(true).buffer_bodies(DEFAULT_BUFFER_LIMIT)
    ///   .grpc_timeout(true))`: every call may be retried (gRPC calls are all POSTs; the server
    ///   says what is safe by its status), bodies already in memory up to 64 KiB are kept for
    ///   retries, and the caller's `grpc-timeout` is the call's deadline (the retries keep within
    ///   it, each saying how much of it is left);
    /// - `.rejection(AsGrpc::new())`: a final timeout becomes `DEADLINE_EXCEEDED` and inner errors
    ///   keep their type.
    ///
    /// Everything else keeps its value.
    ///
    /// **Calls that must not run twice.** A status is the server's word that a retry is safe; a
    /// transport error or an attempt timeout carries none, and the call may have run all the same (a
    /// connection reset after the request left, a server still working when the attempt timed out).
    /// Both are retried by default. For mutating calls that must not take effect twice, make them
    /// idempotent on the server (a request id it remembers), or retry statuses only:
    /// `.classify(GrpcClassifier::new().retry_errors(false)).retry_timeouts(false)` after `.grpc()`.
    ///
    /// Unary calls are retried with their encoded message: tonic hands the channel a body that
    /// has it at once, and the layer keeps a copy, up to
    /// [`DEFAULT_BUFFER_LIMIT`](super::request::DEFAULT_BUFFER_LIMIT) (64 KiB; see
    /// [`buffer_bodies`](Self::buffer_bodies)). Larger messages, and streaming calls whose
    /// messages are not all there at once, are sent once. See [`request`](super::request).
    ///
    /// ```
    /// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    /// use tower::Layer;
    /// use tower_rampart::retry::RetryLayer;
    ///
    /// let channel = tonic::transport::Channel::from_static("http://127.0.0.1:50051").connect_lazy();
    /// let retry = RetryLayer::builder().max_attempts(3).grpc().build()?;
    /// let mut client = HealthClient::new(retry.layer(channel));
    /// let res = client.check(HealthCheckRequest { service: "analytics".into() }).await?;
    /// # let _ = res; Ok(()) }
    /// ```
    #[cfg(feature = "http")]
    pub fn grpc(
        self,
    ) -> RetryBuilder<GrpcClassifier, super::request::HttpRequests, crate::grpc::AsGrpc> {
        self.classify(GrpcClassifier::new())
            .requests(
                super::request::HttpRequests::new()
                    .any_method(true)
                    .buffer_bodies(super::request::DEFAULT_BUFFER_LIMIT)
                    .grpc_timeout(true),
            )
            .rejection(crate::grpc::AsGrpc::new())
    }

    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting, when `max_attempts` is 0 or above 100, the backoff or
    /// budget cannot work (see [`Backoff::validate`] and [`Budget::validate`]), a timeout or
    /// deadline is zero or longer than a day, or the name has characters logs cannot carry.
    pub fn build(self) -> Result<RetryLayer<StandardPolicy<C, R>, M>, ConfigError> {
        crate::error::check_name(self.name)?;
        if self.max_attempts == 0 || self.max_attempts > MAX_ATTEMPTS {
            return Err(ConfigError::new(
                "max_attempts",
                format!(
                    "must be from 1 (no retries) to {MAX_ATTEMPTS} (got {})",
                    self.max_attempts
                ),
            ));
        }
        let mut backoff = self.backoff;
        if let Some(jitter) = self.jitter {
            backoff = backoff.jitter(jitter);
        }
        if let Some(max) = self.max_delay {
            backoff = backoff.with_max_delay(max);
        }
        backoff.validate()?;
        for (setting, value) in [
            ("attempt_timeout", self.attempt_timeout),
            ("deadline", self.deadline),
        ] {
            match value {
                Some(d) if d.is_zero() => {
                    return Err(ConfigError::new(setting, "must be longer than zero"));
                }
                Some(d) if d > MAX_TIMEOUT => {
                    return Err(ConfigError::new(
                        setting,
                        format!("must be at most {MAX_TIMEOUT:?} (got {d:?})"),
                    ));
                }
                _ => {}
            }
        }
        let budget = match self.budget {
            BudgetSetting::Own(b) => Some(RetryBudget::new(b)?),
            BudgetSetting::Shared(b) => Some(b),
            BudgetSetting::Off => None,
        };
        let policy = StandardPolicy {
            max_attempts: self.max_attempts,
            backoff,
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            budget,
            retry_timeouts: self.retry_timeouts,
            seeds: Seeds::new(self.seed),
            classifier: self.classifier,
            requests: self.requests,
        };
        Ok(RetryLayer::from_parts(
            self.name, policy, self.mode, self.hooks,
        ))
    }
}

#[cfg(feature = "http")]
impl<R, M> RetryBuilder<HttpClassifier, R, M> {
    /// Retries exactly these response statuses (instead of 502, 503, 504 and 429); see
    /// [`HttpClassifier::retry_statuses`].
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = http::StatusCode>) -> Self {
        self.classifier = self.classifier.retry_statuses(statuses);
        self
    }

    /// Also puts the number of attempts in an `x-retry-attempts` header of the final response
    /// (the [`Attempts`](super::Attempts) extension is always there).
    pub fn attempts_header(mut self, yes: bool) -> Self {
        self.classifier = self.classifier.attempts_header(yes);
        self
    }
}

#[cfg(feature = "http")]
impl<R, M> RetryBuilder<GrpcClassifier, R, M> {
    /// Retries exactly these gRPC status codes (instead of `UNAVAILABLE` and
    /// `RESOURCE_EXHAUSTED`): [`GrpcCode`](crate::classify::GrpcCode)s, or with the `tonic`
    /// feature `tonic::Code`s; see [`GrpcClassifier::retry_codes`].
    pub fn retry_codes<K: Into<crate::classify::GrpcCode>>(
        mut self,
        codes: impl IntoIterator<Item = K>,
    ) -> Self {
        self.classifier = self.classifier.retry_codes(codes);
        self
    }

    /// Also puts the number of attempts in `x-retry-attempts` metadata of the final response.
    pub fn attempts_header(mut self, yes: bool) -> Self {
        self.classifier = self.classifier.attempts_header(yes);
        self
    }
}

#[cfg(feature = "http")]
impl<C, M> RetryBuilder<C, super::request::HttpRequests, M> {
    /// Retries requests of any method when `yes`, POST and PATCH included (default: idempotent
    /// methods and requests with an `Idempotency-Key` only). Only for upstreams that make them
    /// idempotent themselves.
    pub fn any_method(mut self, yes: bool) -> Self {
        self.requests = self.requests.any_method(yes);
        self
    }

    /// Keeps a copy of request bodies that stream but whose content is already in memory, up to
    /// `max_bytes` (0 turns it off), so that they can be retried: see
    /// [`HttpRequests::buffer_bodies`](super::request::HttpRequests::buffer_bodies). `.grpc()` sets
    /// 64 KiB; `.http()` leaves it off.
    pub fn buffer_bodies(mut self, max_bytes: usize) -> Self {
        self.requests = self.requests.buffer_bodies(max_bytes);
        self
    }
}

impl<P, M> RetryLayer<P, M> {
    fn from_parts(name: &'static str, policy: P, mode: M, hooks: Hooks<RetryEvent>) -> Self {
        Self {
            shared: Arc::new(Shared {
                name,
                policy,
                mode,
                budget_log: LogThrottle::new(Duration::from_secs(10)),
                hooks,
            }),
        }
    }
}

/// Configures a [`RetryLayer`] around a custom [`Policy`](super::Policy). Made by
/// [`RetryLayer::custom`].
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone, Debug)]
pub struct CustomBuilder<P, M = AsError> {
    name: &'static str,
    policy: P,
    mode: M,
    hooks: Hooks<RetryEvent>,
}

impl<P, M> CustomBuilder<P, M> {
    /// The layer's name, in logs and metrics (default `"custom"`).
    pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.name = crate::name::intern(name);
        self
    }

    /// Calls `hook` on every [`RetryEvent`]: retries scheduled, budget refusals, requests given
    /// up on. Hooks run in the order added; a panicking hook is caught and logged. See
    /// [`crate::hooks`].
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RetryEvent) + Send + Sync + 'static,
    {
        self.hooks = self.hooks.with(hook);
        self
    }

    /// How a timeout reaches the caller (default [`AsError`]); see [`crate::rejection`].
    pub fn rejection<M2>(self, mode: M2) -> CustomBuilder<P, M2> {
        CustomBuilder {
            name: self.name,
            policy: self.policy,
            mode,
            hooks: self.hooks,
        }
    }

    /// Builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when the name has characters logs cannot carry.
    pub fn build(self) -> Result<RetryLayer<P, M>, ConfigError> {
        crate::error::check_name(self.name)?;
        Ok(RetryLayer::from_parts(
            self.name,
            self.policy,
            self.mode,
            self.hooks,
        ))
    }
}
