use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::error::Policy;
use super::event::RateLimitEvent;
use super::key::MissingKey;
use super::limit::{Limit, LimitSet};
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
pub struct RateLimitLayer<X, St, M = AsError> {
    pub(crate) shared: Arc<Shared<X, St, M>>,
}

/// Everything services of one layer share.
pub(crate) struct Shared<X, St, M> {
    pub(crate) key: X,
    pub(crate) store: St,
    pub(crate) mode: M,
    pub(crate) missing_key: MissingKey,
    /// The layer's own name and header settings (logs, metrics, refusals without a decision).
    pub(crate) policy: Policy,
    /// The limits every request is decided against (until tiers and live changes).
    pub(crate) default_set: Arc<LimitSet>,
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

impl<X, St, M> Clone for RateLimitLayer<X, St, M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<X: fmt::Debug, St: fmt::Debug, M: fmt::Debug> fmt::Debug for RateLimitLayer<X, St, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared
            .fmt_fields(f.debug_struct("RateLimitLayer"))
            .finish()
    }
}

impl<X: fmt::Debug, St: fmt::Debug, M: fmt::Debug> Shared<X, St, M> {
    pub(crate) fn fmt_fields<'a, 'b>(
        &self,
        mut d: fmt::DebugStruct<'a, 'b>,
    ) -> fmt::DebugStruct<'a, 'b> {
        d.field("key", &self.key)
            .field("store", &self.store)
            .field("mode", &self.mode)
            .field("missing_key", &self.missing_key)
            .field("policy", &self.policy)
            .field("headers_on_success", &self.headers_on_success)
            .field("wait", &self.wait);
        d
    }
}

impl<S, X, St, M> Layer<S> for RateLimitLayer<X, St, M> {
    type Service = RateLimit<S, X, St, M>;

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
            quota: None,
            algorithm: Algorithm::Gcra,
            key: GlobalKey,
            backend: DefaultBackend::default(),
            mode: AsError,
            name: "default",
            missing_key: MissingKey::Reject,
            legacy_headers: false,
            headers_on_success: true,
            wait: None,
            hooks: Hooks::new(),
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
/// Type parameters: `X` the key extractor, `B` the backend, `M` the rejection mode.
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Clone, Debug)]
pub struct RateLimitBuilder<X = GlobalKey, B = DefaultBackend, M = AsError> {
    quota: Option<Quota>,
    algorithm: Algorithm,
    key: X,
    backend: B,
    mode: M,
    name: &'static str,
    missing_key: MissingKey,
    legacy_headers: bool,
    headers_on_success: bool,
    wait: Option<Duration>,
    hooks: Hooks<RateLimitEvent>,
}

impl<X, B, M> RateLimitBuilder<X, B, M> {
    /// The quota (required).
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quota = Some(quota);
        self
    }

    /// The counting algorithm (default [`Algorithm::Gcra`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// What requests are counted against (default: one global bucket, [`GlobalKey`]): any
    /// extractor from [`crate::key`]. A request it finds no key for follows
    /// [`on_missing_key`](Self::on_missing_key).
    pub fn key<X2: KeyExtractor>(self, key: X2) -> RateLimitBuilder<X2, B, M> {
        RateLimitBuilder {
            quota: self.quota,
            algorithm: self.algorithm,
            key,
            backend: self.backend,
            mode: self.mode,
            name: self.name,
            missing_key: self.missing_key,
            legacy_headers: self.legacy_headers,
            headers_on_success: self.headers_on_success,
            wait: self.wait,
            hooks: self.hooks,
        }
    }

    /// Where the counts live (default: in memory).
    pub fn backend<B2>(self, backend: B2) -> RateLimitBuilder<X, B2, M> {
        RateLimitBuilder {
            quota: self.quota,
            algorithm: self.algorithm,
            key: self.key,
            backend,
            mode: self.mode,
            name: self.name,
            missing_key: self.missing_key,
            legacy_headers: self.legacy_headers,
            headers_on_success: self.headers_on_success,
            wait: self.wait,
            hooks: self.hooks,
        }
    }

    /// How refusals reach the caller (default [`AsError`]); see [`crate::rejection`].
    pub fn rejection<M2>(self, mode: M2) -> RateLimitBuilder<X, B, M2> {
        RateLimitBuilder {
            quota: self.quota,
            algorithm: self.algorithm,
            key: self.key,
            backend: self.backend,
            mode,
            name: self.name,
            missing_key: self.missing_key,
            legacy_headers: self.legacy_headers,
            headers_on_success: self.headers_on_success,
            wait: self.wait,
            hooks: self.hooks,
        }
    }

    /// Answer refusals with HTTP responses (429 + headers + JSON body); shorthand for
    /// `.rejection(AsHttp::new())`.
    #[cfg(feature = "http")]
    pub fn http(self) -> RateLimitBuilder<X, B, crate::http::AsHttp> {
        self.rejection(crate::http::AsHttp::new())
    }

    /// Answer refusals with gRPC `RESOURCE_EXHAUSTED` responses; shorthand for
    /// `.rejection(AsGrpc::new())`.
    #[cfg(feature = "http")]
    pub fn grpc(self) -> RateLimitBuilder<X, B, crate::grpc::AsGrpc> {
        self.rejection(crate::grpc::AsGrpc::new())
    }

    /// The limiter's name in `RateLimit-Policy` / `RateLimit` fields (default `"default"`).
    /// Letters, digits and `-_.:` only; checked by `build`. A `&'static str`, or a `String` read from configuration
    /// (kept once per distinct name for the life of the process: build layers at start-up).
    pub fn name(mut self, name: impl Into<std::borrow::Cow<'static, str>>) -> Self {
        self.name = crate::name::intern(name);
        self
    }

    /// What to do with requests the key extractor finds no key for (default
    /// [`MissingKey::Reject`]).
    pub fn on_missing_key(mut self, missing_key: MissingKey) -> Self {
        self.missing_key = missing_key;
        self
    }

    /// Also send the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// headers (default off).
    pub fn legacy_headers(mut self, enabled: bool) -> Self {
        self.legacy_headers = enabled;
        self
    }

    /// Add the `RateLimit` / `RateLimit-Policy` fields to admitted responses too, not only to
    /// refusals (default on; HTTP and gRPC modes).
    pub fn headers_on_success(mut self, enabled: bool) -> Self {
        self.headers_on_success = enabled;
        self
    }

    /// Waiting mode, for client stacks: instead of refusing at once, wait up to `max` for quota,
    /// and refuse only if that is not enough.
    ///
    /// With a key that does not depend on the request (the global key) the wait happens in
    /// `poll_ready`, so the layer exerts backpressure the way tower's own `RateLimit` does: capacity
    /// is reserved in `poll_ready` and spent by the next `call`. With per-request keys it happens in
    /// the response future. Servers (axum does not honour backpressure) should keep the default,
    /// refusing at once.
    pub fn wait_up_to(mut self, max: Duration) -> Self {
        self.wait = Some(max);
        self
    }

    /// Calls `hook` on every [`RateLimitEvent`]: refusals and backend fallbacks (not admissions).
    /// Hooks run in the order added; a panicking hook is caught and logged. See
    /// [`crate::hooks`].
    pub fn on_event<F>(mut self, hook: F) -> Self
    where
        F: Fn(&RateLimitEvent) + Send + Sync + 'static,
    {
        self.hooks = self.hooks.with(hook);
        self
    }

    /// Checks the configuration and builds the layer, with its store.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting when the quota is missing or cannot work (zero limit,
    /// zero or overlong period, zero burst, a burst with the sliding window), the name has characters
    /// a header cannot carry, or the backend refuses the configuration.
    pub fn build(self) -> Result<RateLimitLayer<X, B::Store, M>, ConfigError>
    where
        X: KeyExtractor,
        B: RateLimitBackend<X::Key>,
    {
        let quota = self.quota.ok_or_else(|| {
            ConfigError::new(
                "quota",
                "no quota was set; call .quota(Quota::per_minute(n)) or similar",
            )
        })?;
        let limits = quota.validate(self.algorithm)?;
        self.key.validate()?;
        crate::error::check_name(self.name)?;
        let default_set = LimitSet::new(
            self.algorithm,
            &[Limit::new(self.name, quota)],
            self.legacy_headers,
        )?;
        let spec = RateLimitSpec {
            set: Arc::clone(&default_set),
            quota,
            algorithm: self.algorithm,
            limits,
            name: Arc::from(self.name),
            hooks: self.hooks.clone(),
            event_name: self.name,
        };
        let store = self.backend.rate_limit_store(&spec)?;
        Ok(RateLimitLayer {
            shared: Arc::new(Shared {
                key: self.key,
                store,
                mode: self.mode,
                missing_key: self.missing_key,
                policy: default_set.policy_of(0),
                default_set,
                headers_on_success: self.headers_on_success,
                #[cfg(feature = "metrics")]
                admitted: std::sync::OnceLock::new(),
                wait: self.wait,
                missing_key_log: LogThrottle::new(Duration::from_secs(10)),
                backend_log: LogThrottle::new(Duration::from_secs(10)),
                hooks: self.hooks,
            }),
        })
    }
}

impl<X, St, M> RateLimitLayer<X, St, M> {
    /// The layer's store, shared by all its services (for example to read
    /// [`MemoryRateLimitStore::len`](crate::backend::memory::MemoryRateLimitStore::len)).
    pub fn store(&self) -> &St {
        &self.shared.store
    }

    /// The layer's default limits, as its store is asked to decide them (to call
    /// [`RateLimitStore::check`](super::RateLimitStore::check) directly, with
    /// [`Ask::new`](super::Ask::new)).
    pub fn limit_set(&self) -> Arc<LimitSet> {
        Arc::clone(&self.shared.default_set)
    }
}
