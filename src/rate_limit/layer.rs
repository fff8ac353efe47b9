use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::error::Policy;
use super::event::RateLimitEvent;
use super::handle::RateLimitHandle;
use super::key::MissingKey;
use super::limit::{Limit, LimitSet};
use super::policies::{Live, PerRequest, Policies, TierOf};
use super::quota::{Algorithm, Quota};
use super::service::RateLimit;
use super::store::{RateLimitBackend, RateLimitSpec};
use crate::error::ConfigError;
use crate::hooks::Hooks;
use crate::key::{GlobalKey, KeyExtractor};
use crate::rejection::AsError;
use crate::throttle::LogThrottle;

#[cfg(feature = "memory")]
type DefaultBackend = crate::backend::MemoryBackend;
#[cfg(not(feature = "memory"))]
type DefaultBackend = crate::backend::NoBackend;

pub use crate::backend::NoBackend;

/// Applies a rate limit to every request of the services it wraps.
///
/// The layer holds its store in an `Arc`: every clone of the layer, and every service it makes,
/// counts against the same limits. Build it with [`RateLimitLayer::builder`], or with the
/// shortcuts [`RateLimitLayer::new`] (one global limit) and `RateLimitLayer::per_ip` (per client IP,
/// answering with HTTP responses; feature `http`).
///
/// See the [module documentation](super) for an overview.
pub struct RateLimitLayer<X: KeyExtractor, St, M = AsError, P = PerRequest> {
    pub(crate) shared: Arc<Shared<X, St, M, P>>,
}

/// Everything services of one layer share.
pub(crate) struct Shared<X: KeyExtractor, St, M, P> {
    pub(crate) key: X,
    pub(crate) store: St,
    pub(crate) mode: M,
    pub(crate) missing_key: MissingKey,
    /// The layer's own name and header settings (logs, metrics).
    pub(crate) policy: Policy,
    /// The limit sets in force and how a key finds its own.
    pub(crate) live: Arc<Live<X::Key>>,
    /// Layer-wide shadow mode: refusals are counted and admitted.
    pub(crate) shadow: bool,
    /// The plain layer: its default set is one enforced limit, no resolver and no layer-wide
    /// shadow mode. While no live change has been made, a request of unit cost then asks the
    /// store's [`check_plain`](super::RateLimitStore::check_plain) and needs no judging.
    pub(crate) direct: bool,
    /// The cost of a request and the response to a refused one.
    pub(crate) per_request: P,
    pub(crate) headers_on_success: bool,
    pub(crate) wait: Option<Duration>,
    /// Keeps a misconfiguration (every request without a key) from flooding the logs.
    pub(crate) missing_key_log: LogThrottle,
    /// Likewise for a backend that is down (every request would warn).
    pub(crate) backend_log: LogThrottle,
    /// Told of refusals and fallbacks.
    pub(crate) hooks: Hooks<RateLimitEvent>,
    /// `rampart_rate_limit_admitted_total` for this layer, registered on first use and kept, so
    /// that counting an admission builds no key and looks nothing up.
    #[cfg(feature = "metrics")]
    pub(crate) admitted: std::sync::OnceLock<metrics::Counter>,
}

/// The longest [`wait_up_to`](RateLimitBuilder::wait_up_to) `build` accepts: a deadline past it is
/// no use to a caller, and one near `Duration::MAX` overflows an instant.
const MAX_WAIT: Duration = Duration::from_secs(86_400);

impl<X: KeyExtractor, St, M, P> Clone for RateLimitLayer<X, St, M, P> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<X: KeyExtractor + fmt::Debug, St: fmt::Debug, M: fmt::Debug, P> fmt::Debug
    for RateLimitLayer<X, St, M, P>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared
            .fmt_fields(f.debug_struct("RateLimitLayer"))
            .finish()
    }
}

impl<X: KeyExtractor + fmt::Debug, St: fmt::Debug, M: fmt::Debug, P> Shared<X, St, M, P> {
    pub(crate) fn fmt_fields<'a, 'b>(
        &self,
        mut d: fmt::DebugStruct<'a, 'b>,
    ) -> fmt::DebugStruct<'a, 'b> {
        d.field("key", &self.key)
            .field("store", &self.store)
            .field("mode", &self.mode)
            .field("missing_key", &self.missing_key)
            .field("policies", &self.live)
            .field("shadow", &self.shadow)
            .field("headers_on_success", &self.headers_on_success)
            .field("wait", &self.wait);
        d
    }
}

impl<S, X: KeyExtractor, St, M, P> Layer<S> for RateLimitLayer<X, St, M, P> {
    type Service = RateLimit<S, X, St, M, P>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, Arc::clone(&self.shared))
    }
}

impl RateLimitLayer<GlobalKey, (), AsError> {
    /// Starts configuring a rate limiter: one global limit, in-memory, refusing with
    /// `Err(BoxError)` until told otherwise.
    pub fn builder() -> RateLimitBuilder {
        // Tell the metrics recorder (if any) what each metric means.
        #[cfg(feature = "metrics")]
        crate::metrics::describe();
        RateLimitBuilder {
            key: GlobalKey,
            backend: DefaultBackend::default(),
            mode: AsError,
            per_request: PerRequest::default(),
            tier_of: None,
            settings: Settings {
                quota: None,
                limits: None,
                tiers: Vec::new(),
                algorithm: Algorithm::Gcra,
                name: "default",
                missing_key: MissingKey::Reject,
                legacy_headers: false,
                headers_on_success: true,
                shadow: false,
                wait: None,
                hooks: Hooks::new(),
            },
        }
    }
}

#[cfg(feature = "memory")]
impl RateLimitLayer<GlobalKey, crate::backend::memory::MemoryRateLimitStore<()>, AsError> {
    /// One limit for all requests, in memory, refusing with `Err(BoxError)`.
    ///
    /// # Panics
    ///
    /// If `quota` is invalid (zero limit or period, ...), with the message
    /// [`builder`](RateLimitLayer::builder)`().build()` would return as an error.
    pub fn new(quota: Quota) -> Self {
        match RateLimitLayer::builder().quota(quota).build() {
            Ok(layer) => layer,
            Err(e) => panic!("RateLimitLayer::new: {e}"),
        }
    }
}

#[cfg(all(feature = "memory", feature = "http"))]
impl
    RateLimitLayer<
        crate::key::PeerIp,
        crate::backend::memory::MemoryRateLimitStore<std::net::IpAddr>,
        crate::http::AsHttp,
    >
{
    /// A limit per client IP address (the TCP peer; see [`PeerIp`](crate::key::PeerIp)), in
    /// memory, answering refusals with HTTP 429 responses. Ready for axum's `Router::layer`.
    ///
    /// Behind a reverse proxy, use [`ClientIp`](crate::key::ClientIp) through the builder instead.
    ///
    /// # Panics
    ///
    /// If `quota` is invalid, with the message `build()` would return as an error.
    pub fn per_ip(quota: Quota) -> Self {
        match RateLimitLayer::builder()
            .quota(quota)
            .key(crate::key::PeerIp::new())
            .http()
            .build()
        {
            Ok(layer) => layer,
            Err(e) => panic!("RateLimitLayer::per_ip: {e}"),
        }
    }
}

/// Configures a [`RateLimitLayer`]. Made by [`RateLimitLayer::builder`].
///
/// Type parameters: `X` the key extractor, `B` the backend, `M` the rejection mode, `P` the
/// per-request settings (cost, refusal response).
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone, Debug)]
pub struct RateLimitBuilder<X = GlobalKey, B = DefaultBackend, M = AsError, P = PerRequest> {
    key: X,
    backend: B,
    mode: M,
    per_request: P,
    tier_of: Option<Resolver>,
    settings: Settings,
}

/// The builder's settings that do not change its type.
#[derive(Clone, Debug)]
struct Settings {
    quota: Option<Quota>,
    limits: Option<Vec<Limit>>,
    tiers: Vec<(&'static str, Vec<Limit>)>,
    algorithm: Algorithm,
    name: &'static str,
    missing_key: MissingKey,
    legacy_headers: bool,
    headers_on_success: bool,
    shadow: bool,
    wait: Option<Duration>,
    hooks: Hooks<RateLimitEvent>,
}

/// A [`TierOf`] for the key type the builder had when it was given (checked at `build`).
#[derive(Clone)]
struct Resolver(Arc<dyn std::any::Any + Send + Sync>);

impl fmt::Debug for Resolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TierOf")
    }
}

impl<X, B, M, P> RateLimitBuilder<X, B, M, P> {
    /// The quota (this or [`limits`](Self::limits) is required): the default set is then one limit
    /// named after the layer (see [`name`](Self::name)), exactly as a single-quota limiter.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.settings.quota = Some(quota);
        self
    }

    /// The default set: up to [`MAX_LIMITS`](super::MAX_LIMITS) named limits decided at once,
    /// all or nothing (instead of [`quota`](Self::quota)). A request is admitted only if every
    /// enforced limit admits it, and then every one spends; `Retry-After` is the longest wait.
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Limit, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .limits([
    ///         Limit::new("second", Quota::per_second(10)),
    ///         Limit::new("hour", Quota::per_hour(1000)),
    ///     ])
    ///     .build()?;
    /// # let _ = layer; Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn limits(mut self, limits: impl IntoIterator<Item = Limit>) -> Self {
        self.settings.limits = Some(limits.into_iter().collect());
        self
    }

    /// A named set of limits (a tier), for the keys [`tier_of`](Self::tier_of) says belong to it.
    /// A tier given twice keeps the last limits.
    pub fn tier(
        mut self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        limits: impl IntoIterator<Item = Limit>,
    ) -> Self {
        let name = crate::name::intern(name);
        let limits = limits.into_iter().collect();
        self.settings.tiers.retain(|(n, _)| *n != name);
        self.settings.tiers.push((name, limits));
        self
    }

    /// The tier of a key: `Some(name)` of a tier set with [`tier`](Self::tier) (or later through
    /// a [`RateLimitHandle`]). `None`, or a name the layer has no tier for, gets the default set,
    /// never "unlimited"; an unknown name is also logged (at most once per 10 s) and counted
    /// (`rampart_rate_limit_unknown_tier_total`). Call it after [`key`](Self::key).
    ///
    /// ```
    /// use tower_rampart::key::HeaderKey;
    /// use tower_rampart::rate_limit::{Limit, Quota, RateLimitLayer};
    ///
    /// let layer = RateLimitLayer::builder()
    ///     .quota(Quota::per_minute(10)) // anyone else
    ///     .tier("pro", [Limit::new("minute", Quota::per_minute(1000))])
    ///     .key(HeaderKey::new("x-api-key"))
    ///     // The key is the header's value.
    ///     .tier_of(|key: &http::HeaderValue| key.as_bytes().starts_with(b"pro_").then_some("pro"))
    ///     .http()
    ///     .build()?;
    /// # let _ = layer; Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn tier_of<F>(mut self, tier_of: F) -> Self
    where
        X: KeyExtractor,
        F: Fn(&X::Key) -> Option<&str> + Send + Sync + 'static,
    {
        let f: TierOf<X::Key> = Arc::new(tier_of);
        self.tier_of = Some(Resolver(Arc::new(f)));
        self
    }

    /// Shadow mode for the whole layer (default off): every request is decided as usual (the
    /// counts evolve exactly as they would in real mode), and a refusal is counted
    /// (`rampart_rate_limit_shadow_rejected_total{name, policy}`), reported to hooks
    /// ([`RateLimitEvent::ShadowRefused`]), traced at debug level, and admitted. For one limit
    /// only, see [`Limit::shadow`].
    pub fn shadow(mut self, enabled: bool) -> Self {
        self.settings.shadow = enabled;
        self
    }

    /// The counting algorithm (default [`Algorithm::Gcra`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.settings.algorithm = algorithm;
        self
    }

    /// What requests are counted against (default: one global bucket, [`GlobalKey`]): any
    /// extractor from [`crate::key`]. A request it finds no key for follows
    /// [`on_missing_key`](Self::on_missing_key).
    pub fn key<X2: KeyExtractor>(self, key: X2) -> RateLimitBuilder<X2, B, M, P> {
        RateLimitBuilder {
            key,
            backend: self.backend,
            mode: self.mode,
            per_request: self.per_request,
            tier_of: self.tier_of,
            settings: self.settings,
        }
    }

    /// Where the counts live (default: in memory).
    pub fn backend<B2>(self, backend: B2) -> RateLimitBuilder<X, B2, M, P> {
        RateLimitBuilder {
            key: self.key,
            backend,
            mode: self.mode,
            per_request: self.per_request,
            tier_of: self.tier_of,
            settings: self.settings,
        }
    }

    /// How refusals reach the caller (default [`AsError`]); see [`crate::rejection`].
    pub fn rejection<M2>(self, mode: M2) -> RateLimitBuilder<X, B, M2, P> {
        RateLimitBuilder {
            key: self.key,
            backend: self.backend,
            mode,
            per_request: self.per_request,
            tier_of: self.tier_of,
            settings: self.settings,
        }
    }

    /// Answer refusals with HTTP responses (429 + headers + JSON body); shorthand for
    /// `.rejection(AsHttp::new())`.
    #[cfg(feature = "http")]
    pub fn http(self) -> RateLimitBuilder<X, B, crate::http::AsHttp, P> {
        self.rejection(crate::http::AsHttp::new())
    }

    /// Answer refusals with gRPC `RESOURCE_EXHAUSTED` responses; shorthand for
    /// `.rejection(AsGrpc::new())`.
    #[cfg(feature = "http")]
    pub fn grpc(self) -> RateLimitBuilder<X, B, crate::grpc::AsGrpc, P> {
        self.rejection(crate::grpc::AsGrpc::new())
    }

    /// The limiter's name in `RateLimit-Policy` / `RateLimit` fields (default `"default"`).
    /// Letters, digits and `-_.:` only; checked by `build`. A `&'static str`, or a `String` read from configuration
    /// (kept once per distinct name for the life of the process: build layers at start-up).
    pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.settings.name = crate::name::intern(name);
        self
    }

    /// What to do with requests the key extractor finds no key for (default
    /// [`MissingKey::Reject`]).
    pub fn on_missing_key(mut self, missing_key: MissingKey) -> Self {
        self.settings.missing_key = missing_key;
        self
    }

    /// Also send the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// headers (default off).
    pub fn legacy_headers(mut self, enabled: bool) -> Self {
        self.settings.legacy_headers = enabled;
        self
    }

    /// Add the `RateLimit` / `RateLimit-Policy` fields to admitted responses too, not only to
    /// refusals (default on; HTTP and gRPC modes).
    pub fn headers_on_success(mut self, enabled: bool) -> Self {
        self.settings.headers_on_success = enabled;
        self
    }

    /// Waiting mode, for client stacks: instead of refusing at once, wait up to `max` (at most a
    /// day; checked by `build`) for quota, and refuse only if that is not enough.
    ///
    /// With a key that does not depend on the request (the global key) the wait happens in
    /// `poll_ready`, so the layer exerts backpressure the way tower's own `RateLimit` does: capacity
    /// is reserved in `poll_ready` and spent by the next `call`. `poll_ready` reserves one unit (the
    /// request, and so its [cost](Self::cost), is not known yet); `call` spends the rest of the
    /// request's cost, waiting for it in the response future (up to `max` from the call) when it
    /// must, so a request spends exactly its cost. A request of cost 0, one refused with
    /// [`CostTooHigh`](super::error::CostTooHigh) (a cost above a limit's burst), and one whose
    /// rest is refused at once with a wait longer than `max` spend nothing of their own: the
    /// reserved unit stays with the service for its next call. A rest refused after waiting for
    /// it leaves the reserved unit spent. A unit reserved by a service that is then dropped
    /// without a `call` (a balancer or `ReadyCache` evicting a ready service) is spent all the
    /// same: the store cannot take it back. A caller that gives up waiting (a timeout around
    /// `ready()`) and comes back after its wake-up by more than a quarter of `max` (from 10 to
    /// 100 ms) waits afresh, up to `max` again. With per-request keys it happens in the response
    /// future. Servers (axum does not honour backpressure) should keep the default, refusing at
    /// once.
    pub fn wait_up_to(mut self, max: Duration) -> Self {
        self.settings.wait = Some(max);
        self
    }

    /// Calls `hook` on every [`RateLimitEvent`]: refusals, shadow refusals and backend fallbacks
    /// (not admissions). Hooks run in the order added; a panicking hook is caught and logged. See
    /// [`crate::hooks`].
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RateLimitEvent) + Send + Sync + 'static,
    {
        self.settings.hooks = self.settings.hooks.with(hook);
        self
    }
}

impl<X, B, M, C, R> RateLimitBuilder<X, B, M, PerRequest<C, R>> {
    /// How many units a request spends (default 1): a closure `Fn(&Req) -> u32` or a
    /// [`Cost`](super::Cost) (bytes, rows, tokens). A cost of 0 passes without spending; a cost
    /// above what a limit could ever admit at once (its burst) is refused with
    /// [`CostTooHigh`](super::error::CostTooHigh) (HTTP 413), not a 429 that invites a retry.
    ///
    /// ```
    /// use tower_rampart::rate_limit::{Quota, RateLimitLayer};
    ///
    /// // A batch of n rows spends n units of 1000 rows per minute.
    /// struct Batch { rows: u32 }
    /// let layer = RateLimitLayer::builder()
    ///     .quota(Quota::per_minute(1000))
    ///     .cost(|batch: &Batch| batch.rows)
    ///     .build()?;
    /// # let _ = layer; Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    pub fn cost<C2>(self, cost: C2) -> RateLimitBuilder<X, B, M, PerRequest<C2, R>> {
        RateLimitBuilder {
            key: self.key,
            backend: self.backend,
            mode: self.mode,
            per_request: PerRequest {
                cost,
                responder: self.per_request.responder,
            },
            tier_of: self.tier_of,
            settings: self.settings,
        }
    }

    /// Answers refusals (over quota, cost too high, missing key, backend unavailable) with the
    /// application's own response, made from the refusal and the request's parts (method, URI,
    /// headers, extensions): status, headers, body and content type are the application's. The
    /// rejection mode still answers when no request is at hand (a reservation made in
    /// `poll_ready`). Feature `http`.
    ///
    /// ```
    /// use axum::{Router, body::Body, routing::get};
    /// use http::{Response, StatusCode, header};
    /// use tower_rampart::rate_limit::{Quota, RateLimitLayer, error::RateLimited};
    /// use tower_rampart::rejection::RejectionKind;
    ///
    /// let limit = RateLimitLayer::builder()
    ///     .quota(Quota::per_minute(10))
    ///     .http()
    ///     .respond_with(|refusal, parts| {
    ///         let wait = refusal.retry_after().map_or(0, |d| d.as_secs());
    ///         let text = match refusal.kind() {
    ///             RejectionKind::RateLimited => format!("slow down on {}; retry in {wait} s", parts.uri.path()),
    ///             _ => refusal.to_string(),
    ///         };
    ///         Response::builder()
    ///             .status(refusal.kind().status())
    ///             .header(header::CONTENT_TYPE, "text/plain")
    ///             .body(Body::from(text))
    ///             .unwrap()
    ///     })
    ///     .build()?;
    /// let app: Router = Router::new().route("/", get(|| async { "hi" })).layer(limit);
    /// # let _ = app; Ok::<_, tower_rampart::ConfigError>(())
    /// ```
    #[cfg(feature = "http")]
    pub fn respond_with<F, ResB>(
        self,
        respond: F,
    ) -> RateLimitBuilder<X, B, M, PerRequest<C, super::policies::RespondFn<F>>>
    where
        F: Fn(&dyn crate::rejection::Rejection, &http::request::Parts) -> http::Response<ResB>
            + Send
            + Sync
            + 'static,
    {
        RateLimitBuilder {
            key: self.key,
            backend: self.backend,
            mode: self.mode,
            per_request: PerRequest {
                cost: self.per_request.cost,
                responder: super::policies::RespondFn(respond),
            },
            tier_of: self.tier_of,
            settings: self.settings,
        }
    }
}

impl<X, B, M, P> RateLimitBuilder<X, B, M, P> {
    /// Checks the configuration and builds the layer, with its store.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting when no quota or limits were set (or both), a quota
    /// cannot work (zero limit, zero or overlong period, zero burst, a burst with the sliding
    /// window), a set has no limits, more than [`MAX_LIMITS`](super::MAX_LIMITS) or two of the
    /// same name, a name has characters a header cannot carry, `tier_of` was called before `key`,
    /// or the backend refuses the configuration.
    pub fn build(self) -> Result<RateLimitLayer<X, B::Store, M, P>, ConfigError>
    where
        X: KeyExtractor,
        B: RateLimitBackend<X::Key>,
        B::Store: super::RateLimitStore<X::Key>,
    {
        let s = self.settings;
        self.key.validate()?;
        crate::error::check_name(s.name)?;
        if let Some(wait) = s.wait
            && wait > MAX_WAIT
        {
            return Err(ConfigError::new(
                "wait_up_to",
                format!(
                    "must be at most a day (got {wait:?}); a caller waiting longer for quota is better refused"
                ),
            ));
        }
        let default_limits = match (s.quota, s.limits) {
            (Some(quota), None) => {
                // Validated here for the error the single-quota limiter always gave.
                quota.validate(s.algorithm)?;
                vec![Limit::new(s.name, quota)]
            }
            (None, Some(limits)) => limits,
            (None, None) => {
                return Err(ConfigError::new(
                    "quota",
                    "no quota was set; call .quota(Quota::per_minute(n)) or .limits([...])",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "limits",
                    "both .quota(..) and .limits(..) were set; the default set is one or the \
                     other (put the quota in the list as a Limit)",
                ));
            }
        };
        let default = LimitSet::new_default(s.algorithm, &default_limits, s.legacy_headers)?;
        let mut tiers = super::policies::Tiers::default();
        for &(name, ref limits) in &s.tiers {
            crate::error::check_name(name)
                .map_err(|e| ConfigError::new("tier", format!("tier {name:?}: {}", e.reason())))?;
            let set = LimitSet::new(s.algorithm, limits, s.legacy_headers)
                .map_err(|e| ConfigError::new("tier", format!("tier {name:?}: {}", e.reason())))?;
            tiers.insert(name, set);
        }
        let tier_of = match self.tier_of {
            None => None,
            Some(Resolver(any)) => Some(any.downcast_ref::<TierOf<X::Key>>().cloned().ok_or_else(
                || {
                    ConfigError::new(
                        "tier_of",
                        "the resolver was given for another key type; call .key(..) before \
                             .tier_of(..)",
                    )
                },
            )?),
        };
        let first = &default.limits()[0];
        let spec = RateLimitSpec {
            set: Arc::clone(&default),
            quota: first.quota(),
            algorithm: s.algorithm,
            limits: first.limits,
            name: Arc::from(s.name),
            hooks: s.hooks.clone(),
            event_name: s.name,
        };
        let store = self.backend.rate_limit_store(&spec)?;
        let policy = Policy {
            name: s.name,
            ..default.policy_of(0)
        };
        let direct = default.single().is_some() && tier_of.is_none() && !s.shadow;
        let live = Live::new(
            Policies {
                default,
                tiers,
                keys: Default::default(),
            },
            tier_of,
            s.name,
            s.algorithm,
            s.legacy_headers,
        );
        let live = Arc::new(live);
        super::RateLimitStore::subscribe_policies(
            &store,
            super::handle::PolicySink::new(Arc::clone(&live)),
        );
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                store,
                mode: self.mode,
                missing_key: s.missing_key,
                policy,
                live,
                shadow: s.shadow,
                direct,
                per_request: self.per_request,
                headers_on_success: s.headers_on_success,
                #[cfg(feature = "metrics")]
                admitted: std::sync::OnceLock::new(),
                wait: s.wait,
                missing_key_log: LogThrottle::new(Duration::from_secs(10)),
                backend_log: LogThrottle::new(Duration::from_secs(10)),
                hooks: s.hooks,
            }),
        })
    }
}

impl<X: KeyExtractor, St, M, P> RateLimitLayer<X, St, M, P> {
    /// The layer's store, shared by all its services (for example to read
    /// [`MemoryRateLimitStore::len`](crate::backend::memory::MemoryRateLimitStore::len)).
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The layer's default limits, as its store is asked to decide them (to call
    /// [`RateLimitStore::check`](super::RateLimitStore::check) directly, with
    /// [`Ask::new`](super::Ask::new)).
    pub fn limit_set(&self) -> Arc<LimitSet> {
        Arc::clone(&self.shared.live.current.load().default)
    }

    /// A handle on the layer's limits: read them, change them while it runs, and peek at what a
    /// key would get. See [`RateLimitHandle`].
    pub fn handle(&self) -> RateLimitHandle<X::Key>
    where
        St: super::RateLimitStore<X::Key>,
        M: Send + Sync + 'static,
        P: Send + Sync + 'static,
    {
        RateLimitHandle::new(Arc::clone(&self.shared))
    }
}
