//! One rejection model for every layer.
//!
//! When a layer refuses a request it produces a small error type that implements [`Rejection`]
//! ([`RateLimited`](crate::rate_limit::error::RateLimited), ...). How that refusal reaches the caller
//! is a [`RejectionMode`], chosen on the layer's builder and shared by all layers:
//!
//! | mode | the service's `Error` | a refusal becomes |
//! |---|---|---|
//! | [`AsError`] (default) | [`BoxError`] | `Err(Box<RateLimited>)`, downcastable |
//! | `AsHttp` (feature `http`) | the inner service's error | an `http::Response`: 429 / 503 with `Retry-After`, headers and a JSON body |
//! | `AsGrpc` (feature `http`) | the inner service's error | a trailers-only gRPC response: `RESOURCE_EXHAUSTED` / `UNAVAILABLE` with retry info |
//!
//! In the HTTP and gRPC modes the error type is the inner one, so axum's `Router::layer` and tonic's
//! `Server::layer` accept the layer unchanged, with no `HandleErrorLayer`.
//!
//! # Example
//!
//! ```
//! use tower_rampart::BoxError;
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer, error::RateLimited};
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause(); // as in a test: time moves only when told to
//! let layer = RateLimitLayer::builder().quota(Quota::per_minute(1)).build().unwrap();
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_: ()| async { Ok::<_, BoxError>("hello") }));
//!
//! assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "hello");
//! let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
//! let limited = err.downcast_ref::<RateLimited>().expect("a rate-limit refusal");
//! assert_eq!(limited.retry_after().as_secs(), 60);
//! # }
//! ```

use std::fmt;
use std::time::Duration;

use crate::classify::GrpcCode;
use crate::error::BoxError;

/// A refusal by one of the layers.
///
/// Implemented by each layer's refusal types. [`RejectionMode`]s use it to render a refusal without
/// knowing which layer made it; custom response bodies match on [`kind`](Self::kind).
pub trait Rejection: std::error::Error + Send + Sync + 'static {
    /// What kind of refusal this is.
    fn kind(&self) -> RejectionKind;

    /// When the same request could succeed, if known.
    fn retry_after(&self) -> Option<Duration> {
        None
    }

    /// Adds the refusal's own response headers (for example the `RateLimit` fields).
    /// `Retry-After` is added by the mode.
    #[cfg(feature = "http")]
    fn write_headers(&self, headers: &mut http::HeaderMap) {
        let _ = headers;
    }
}

impl dyn Rejection {
    /// The refusal as its own type (for example [`RateLimited`](crate::rate_limit::error::RateLimited),
    /// to read its figures), if it is one.
    pub fn downcast_ref<T: Rejection>(&self) -> Option<&T> {
        (self as &dyn std::error::Error).downcast_ref::<T>()
    }
}

/// The kinds of refusal, for choosing a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// A rate limit was exceeded (HTTP 429, gRPC `RESOURCE_EXHAUSTED`).
    RateLimited,
    /// The request carried nothing to key a limit on, and the layer is set to refuse such requests
    /// (HTTP 500, gRPC `INTERNAL`: this is a deployment mistake, not the client's).
    KeyMissing,
    /// A shared backend could not decide and the failure policy refuses (HTTP 503, gRPC `UNAVAILABLE`).
    BackendUnavailable,
    /// A circuit breaker is open (HTTP 503, gRPC `UNAVAILABLE`).
    CircuitOpen,
    /// A request asks for more of a rate limit than it could ever admit at once (its cost is above
    /// the burst): HTTP 413, gRPC `OUT_OF_RANGE`. Waiting does not help.
    CostTooHigh,
    /// The last attempt at a request ran out of time, its own or the request's deadline (HTTP 504,
    /// gRPC `DEADLINE_EXCEEDED`).
    TimedOut,
}

impl RejectionKind {
    /// The HTTP status a refusal of this kind is answered with.
    #[cfg(feature = "http")]
    pub fn status(self) -> http::StatusCode {
        match self {
            Self::RateLimited => http::StatusCode::TOO_MANY_REQUESTS,
            Self::CostTooHigh => http::StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyMissing => http::StatusCode::INTERNAL_SERVER_ERROR,
            Self::BackendUnavailable | Self::CircuitOpen => http::StatusCode::SERVICE_UNAVAILABLE,
            Self::TimedOut => http::StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status code a refusal of this kind is answered with.
    pub fn grpc_code(self) -> GrpcCode {
        match self {
            Self::RateLimited => GrpcCode::ResourceExhausted,
            Self::CostTooHigh => GrpcCode::OutOfRange,
            Self::KeyMissing => GrpcCode::Internal,
            Self::BackendUnavailable | Self::CircuitOpen => GrpcCode::Unavailable,
            Self::TimedOut => GrpcCode::DeadlineExceeded,
        }
    }
}

/// How a layer hands a refusal back to its caller.
///
/// `Res` and `E` are the inner service's response and error types. The layered service's error type
/// is [`Error`](Self::Error); the inner service's errors become it through `From` (so `BoxError` in
/// the default mode, the inner error itself in the HTTP and gRPC modes).
///
/// Implementations put no bounds on `Res` and `E` beyond what rendering a refusal needs. (Bounds
/// here would be checked wherever the layered service's error type is named, and rustc cannot prove
/// bounds such as `E: Into<BoxError>` inside spawned tasks, rust-lang/rust#64552; the layers ask for
/// `From` on their `Service` impls instead, as tower's do.)
pub trait RejectionMode<Res, E>: Clone + Send + Sync + 'static {
    /// The layered service's error type.
    type Error;

    /// Whether responses in this mode carry headers that layers may add to (so layers skip the
    /// work of preparing them in modes that would throw it away).
    const WRITES_HEADERS: bool = false;

    /// Renders a refusal.
    fn reject<R: Rejection>(&self, rejection: R) -> Result<Res, Self::Error>;

    /// The response's headers, in modes whose responses have them (so layers can add theirs to
    /// responses that passed).
    #[cfg(feature = "http")]
    fn headers_mut(res: &mut Res) -> Option<&mut http::HeaderMap> {
        let _ = res;
        None
    }
}

/// The default mode: refusals are `Err(BoxError)` holding the layer's refusal type, and inner errors
/// are boxed too. Works in any tower stack; downcast to tell refusals apart.
#[derive(Clone, Copy, Debug, Default)]
pub struct AsError;

impl<Res, E> RejectionMode<Res, E> for AsError {
    type Error = BoxError;

    #[inline]
    fn reject<R: Rejection>(&self, rejection: R) -> Result<Res, BoxError> {
        Err(Box::new(rejection))
    }
}

/// Appends `s` to `out` as a JSON string literal.
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) fn push_json_string(out: &mut String, s: &str) {
    use std::fmt::Write;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl RejectionKind {
    /// `rate_limited`, `cost_too_high`, `key_missing`, `backend_unavailable`, `circuit_open` or
    /// `timed_out`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::CostTooHigh => "cost_too_high",
            Self::KeyMissing => "key_missing",
            Self::BackendUnavailable => "backend_unavailable",
            Self::CircuitOpen => "circuit_open",
            Self::TimedOut => "timed_out",
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first of this crate's refusal types that `$get` (a downcast to the type named `$t`)
/// finds, as a `&dyn Rejection`.
macro_rules! refusal_types {
    (|$t:ident| $get:expr) => {{
        macro_rules! try_type {
            ($ty:ty) => {{
                type $t = $ty;
                if let Some(r) = $get {
                    return Some(r as &dyn Rejection);
                }
            }};
        }
        #[cfg(feature = "rate-limit")]
        {
            try_type!(crate::rate_limit::error::RateLimited);
            try_type!(crate::rate_limit::error::KeyMissing);
            try_type!(crate::rate_limit::error::CostTooHigh);
        }
        #[cfg(feature = "circuit-breaker")]
        try_type!(crate::circuit_breaker::error::CircuitOpen);
        #[cfg(feature = "retry")]
        try_type!(crate::retry::error::AttemptTimedOut);
        try_type!(crate::backend::BackendUnavailable);
        None
    }};
}

/// The refusal `error` is, when it is one of this crate's refusal types, or a retry's last error
/// holding one (a breaker outside a retry sees the retry's `LastError`).
pub(crate) fn rejection_in<'e>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e dyn Rejection> {
    #[cfg(feature = "retry")]
    if let Some(last) = error.downcast_ref::<crate::retry::error::LastError>() {
        return rejection_in(last.get_ref());
    }
    refusal_types!(|T| error.downcast_ref::<T>())
}

/// [`rejection_in`] for a value of any type.
fn rejection_in_any(any: &dyn std::any::Any) -> Option<&dyn Rejection> {
    refusal_types!(|T| any.downcast_ref::<T>())
}

/// A refusal by one of this crate's layers, as a layer above it sees it: on the responses the
/// [`AsHttp`](crate::http::AsHttp) and [`AsGrpc`](crate::grpc::AsGrpc) modes render (an
/// extension), and read from the refusal itself in the default mode's `BoxError`.
///
/// The classifiers of [`classify`](crate::classify) read it, so that a retry above a circuit
/// breaker or a rate limiter (`ServiceBuilder::new().layer(retry).layer(breaker)`) does not spend
/// its attempts and budget on their refusals, and a breaker above them does not count them:
/// every refusal is [`Refused`](crate::classify::Verdict::Refused), neither a success nor a
/// failure (a half-open probe refused below hands its permit back). A rate limit's refusal is
/// retried once the quota allows ([`Pushback::NotBefore`](crate::classify::Pushback::NotBefore))
/// when the retry would wait that long (its longest delay, its deadline), and not at all
/// otherwise (a sooner attempt is refused again); an open circuit's, a missing key's and a cost
/// over the limit's are not retried (failing fast is what an open circuit is for); a backend
/// that is down is retried after the backoff's delay. A timed-out attempt is left to the
/// classifier's own rule. The classifiers' settings (`fail_on`, `retry_statuses`,
/// `retry_errors`, ...) apply to the upstream's answers, not to these refusals. A
/// `tonic::Status` made from a refusal does not carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    kind: RejectionKind,
    retry_after: Option<Duration>,
}

impl Refused {
    /// The refusal `rejection` is.
    pub fn of(rejection: &dyn Rejection) -> Self {
        Self {
            kind: rejection.kind(),
            retry_after: rejection.retry_after(),
        }
    }

    /// What kind of refusal it was.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// When the same request could succeed, if known.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The refusal that `error` is, when it is one of this crate's refusal types, by itself or
    /// as a [`BoxError`] (also inside a retry's
    /// [`LastError`](crate::retry::error::LastError), with the `retry` feature).
    pub fn from_error<E: 'static>(error: &E) -> Option<Self> {
        let any: &dyn std::any::Any = error;
        match any.downcast_ref::<BoxError>() {
            Some(boxed) => rejection_in(&**boxed),
            None => rejection_in_any(any),
        }
        .map(Self::of)
    }

    /// How a classifier above the layer that refused reads it (see the type's documentation);
    /// `None` for a timed-out attempt (the classifier's own rule applies).
    pub(crate) fn verdict(self) -> Option<crate::classify::Verdict> {
        use crate::classify::{Pushback, Reason, Verdict};
        let pushback = match self.kind {
            RejectionKind::RateLimited => self
                .retry_after
                .map_or(Pushback::DoNotRetry, Pushback::NotBefore),
            RejectionKind::BackendUnavailable => Pushback::None,
            // An open circuit fails fast: once its wait is over it lets a few probes through
            // and refuses the rest again (with no time to wait for).
            RejectionKind::CircuitOpen | RejectionKind::KeyMissing | RejectionKind::CostTooHigh => {
                Pushback::DoNotRetry
            }
            RejectionKind::TimedOut => return None,
        };
        Some(Verdict::Refused {
            reason: Reason::Other(self.kind.as_str()),
            pushback,
        })
    }
}
