//! HTTP glue: the HTTP rejection mode and the rate limit header fields. (The HTTP key extractors,
//! [`PeerIp`](crate::key::PeerIp), [`ClientIp`](crate::key::ClientIp) and
//! [`HeaderKey`](crate::key::HeaderKey), are in [`crate::key`].)
//!
//! # Example: behind a reverse proxy, answering with the service's own 429 body
//!
//! ```
//! use axum::{Router, routing::post};
//! use tower_rampart::http::AsHttp;
//! use tower_rampart::key::{ClientIp, ForwardedHeader};
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//! use tower_rampart::rejection::RejectionKind;
//!
//! let limit = RateLimitLayer::builder()
//!     .quota(Quota::per_minute(10))
//!     // Honour X-Forwarded-For only when the connection comes from our load balancers.
//!     .key(ClientIp::new().trusted_proxies(["10.0.0.0/8", "fd00::/8"]).header(ForwardedHeader::XForwardedFor))
//!     .rejection(AsHttp::new().json_body(|r| match r.kind() {
//!         RejectionKind::RateLimited => r#"{"detail":"Too many requests"}"#.to_owned(),
//!         _ => format!(r#"{{"detail":"{r}"}}"#),
//!     }))
//!     .build()
//!     .expect("valid rate limit configuration");
//!
//! let app: Router = Router::new().route("/api/metrics", post(|| async { "stored" })).layer(limit);
//! # let _ = app;
//! ```

pub(crate) mod headers;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

pub use self::headers::{
    RATELIMIT, RATELIMIT_POLICY, X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET,
};
use crate::rejection::{Rejection, RejectionMode, push_json_string};

type BodyFn = dyn Fn(&dyn Rejection) -> String + Send + Sync;

/// Rejection mode for HTTP services: a refusal becomes a response (429 for a rate limit, 503 for an
/// unavailable backend, 500 for a missing key) with `Retry-After`, the refusal's own headers and a
/// JSON body; the inner service's errors pass through unchanged.
///
/// The default body is `{"error":"rate limit exceeded","kind":"rate_limited","retry_after":6}`
/// (`retry_after` in whole seconds, present when known). [`json_body`](Self::json_body) replaces it.
///
/// Works with any response body type that can be made from [`Bytes`] (axum's, hyper's `Full`, ...).
#[derive(Clone, Default)]
pub struct AsHttp {
    body: Option<Arc<BodyFn>>,
}

impl AsHttp {
    /// The mode with the default JSON body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Renders refusal bodies with `f`, which returns JSON text (sent as `application/json`).
    /// Match on [`Rejection::kind`] to answer each kind of refusal in the application's own shape.
    #[must_use]
    pub fn json_body<F>(mut self, f: F) -> Self
    where
        F: Fn(&dyn Rejection) -> String + Send + Sync + 'static,
    {
        self.body = Some(Arc::new(f));
        self
    }

    /// Builds the response for `rejection`.
    pub fn response<B: From<Bytes>>(&self, rejection: &dyn Rejection) -> http::Response<B> {
        let body = match &self.body {
            Some(f) => f(rejection),
            None => default_body(rejection),
        };
        let mut res = http::Response::new(B::from(Bytes::from(body)));
        *res.status_mut() = rejection.kind().status();
        res.extensions_mut()
            .insert(crate::rejection::Refused::of(rejection));
        let h = res.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        if let Some(retry_after) = rejection.retry_after() {
            headers::write_retry_after(h, retry_after);
        }
        rejection.write_headers(h);
        res
    }
}

fn default_body(rejection: &dyn Rejection) -> String {
    let mut s = String::with_capacity(96);
    s.push_str("{\"error\":");
    push_json_string(&mut s, &rejection.to_string());
    s.push_str(",\"kind\":\"");
    s.push_str(&rejection.kind().to_string());
    s.push('"');
    if let Some(d) = rejection.retry_after() {
        s.push_str(",\"retry_after\":");
        s.push_str(&crate::clock::ceil_secs(d).max(1).to_string());
    }
    s.push('}');
    s
}

impl fmt::Debug for AsHttp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsHttp")
            .field("custom_body", &self.body.is_some())
            .finish()
    }
}

/// A response body [`AsHttp`] can build refusal responses in: any type that is `From<Bytes>`
/// (axum's `Body`, `http_body_util::Full<Bytes>`, ...), and only those.
///
/// It exists for its compile error. A client's response body, such as hyper's `Incoming`, cannot
/// be made up, so a client stack in the HTTP mode cannot answer a refusal (an open circuit, a
/// final timeout) with a response of its own. Keep refusals as errors there, with
/// `.http().rejection(AsError)`: the classifier and request rules of `.http()` stay, and a refusal
/// is a downcastable `Err(BoxError)`. The README's hyper client stack does this.
///
/// Forgetting it gives the error below where rustc checks the stack against `Service` directly
/// (a function taking `S: Service<..>`, `Service::call(&mut stack, req)`, hyper-util's
/// `TowerToHyperService`, ...). Called as a method (`stack.ready()`, `stack.oneshot(req)`), rustc
/// reports E0599 "the method `ready` exists ... but its trait bounds were not satisfied" with
/// `Retry<..>: Service<_>` and no note: the cause is the same.
///
/// ```compile_fail
/// // error[E0277]: `.http()` answers refusals with a response built from `Bytes`, and
/// //               `hyper::body::incoming::Incoming` cannot be built from `Bytes`
/// //    = note: on a client stack (hyper's `Incoming` body, ...), keep refusals as errors:
/// //            `.http().rejection(AsError)` on the retry and circuit breaker builders
/// //            (`use tower_rampart::rejection::AsError`)
/// // (compile_fail doctests do not check the message; this one was checked by hand.)
/// use bytes::Bytes;
/// use http_body_util::Full;
/// use hyper_util::{client::legacy::Client, rt::TokioExecutor};
/// use tower::{Service, ServiceBuilder};
/// use tower_rampart::circuit_breaker::CircuitBreakerLayer;
/// use tower_rampart::retry::RetryLayer;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
/// let mut stack = ServiceBuilder::new()
///     .layer(CircuitBreakerLayer::builder().http().build()?)
///     .layer(RetryLayer::builder().http().build()?)
///     .service(client);
/// let req = http::Request::get("http://127.0.0.1:8080/").body(Full::new(Bytes::new()))?;
/// let res = Service::call(&mut stack, req).await?;
/// # let _ = res; Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`.http()` answers refusals with a response built from `Bytes`, and `{Self}` cannot be built from `Bytes`",
    label = "not a body `AsHttp` can build refusal responses in",
    note = "on a client stack (hyper's `Incoming` body, ...), keep refusals as errors: `.http().rejection(AsError)` on the retry and circuit breaker builders (`use tower_rampart::rejection::AsError`)",
    note = "on a server, answer with a body type that is `From<Bytes>` (axum's `Body`, `http_body_util::Full<Bytes>`, ...)"
)]
pub trait ResponseBody: From<Bytes> + 'static {}

#[diagnostic::do_not_recommend]
impl<B: From<Bytes> + 'static> ResponseBody for B {}

impl<B, E> RejectionMode<http::Response<B>, E> for AsHttp
where
    B: ResponseBody,
    E: 'static,
{
    type Error = E;

    const WRITES_HEADERS: bool = true;

    fn reject<R: Rejection>(&self, rejection: R) -> Result<http::Response<B>, E> {
        Ok(self.response(&rejection))
    }

    #[inline]
    fn headers_mut(res: &mut http::Response<B>) -> Option<&mut http::HeaderMap> {
        Some(res.headers_mut())
    }
}
