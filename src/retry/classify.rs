//! Deciding which results are worth another attempt, and reading what the server said about when.
//!
//! A [`Classify`] looks at each attempt's result and returns a [`Verdict`]: done (a success, or a
//! failure that retrying would not fix), retry (optionally not before a time the server asked for),
//! or do not retry (the server said so).
//!
//! - [`ErrorsAreTransient`] (the default): an `Err` from the inner service is worth retrying,
//!   any response is final.
//! - [`HttpClassifier`] (feature `http`): errors, and responses `502`, `503`, `504` and `429` (the
//!   set can be changed); honours `Retry-After` in seconds or as an HTTP date.
//! - [`GrpcClassifier`] (feature `http`): errors, and `grpc-status` `UNAVAILABLE` and
//!   `RESOURCE_EXHAUSTED` (the set can be changed), on trailers-only `http::Response`s and, with the
//!   `tonic` feature, on `Result<tonic::Response<T>, tonic::Status>`; honours
//!   `grpc-retry-pushback-ms` (a negative value means "do not retry") and `google.rpc.RetryInfo`.
//! - [`classify_fn`]: any closure.
//!
//! Classifiers for HTTP and gRPC also record the number of attempts on the final response (the
//! [`Attempts`](super::Attempts) extension, and optionally a header).
//!
//! # Example
//!
//! ```
//! use std::io;
//! use tower_rampart::retry::classify::{Reason, Verdict, classify_fn};
//! use tower_rampart::retry::RetryLayer;
//!
//! // Retry connection failures, never "not found".
//! let layer = RetryLayer::builder()
//!     .classifier(classify_fn(|r: &Result<String, io::Error>| match r {
//!         Err(e) if e.kind() == io::ErrorKind::NotFound => Verdict::Done,
//!         Err(_) => Verdict::retry(Reason::Error),
//!         Ok(_) => Verdict::Done,
//!     }))
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// What a result calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Return it: a success, or a failure that another attempt would not fix.
    Done,
    /// Worth another attempt, if the policy allows one.
    Retry {
        /// Why, for logs and metrics.
        reason: Reason,
        /// How long the server asked the client to wait, if it did.
        after: Option<Duration>,
    },
    /// A transient failure, but the server asked not to retry (gRPC's negative pushback).
    DoNotRetry {
        /// The failure.
        reason: Reason,
    },
}

impl Verdict {
    /// Retry, after the backoff's delay.
    pub const fn retry(reason: Reason) -> Self {
        Self::Retry {
            reason,
            after: None,
        }
    }

    /// Retry, not before `after` (as the server asked).
    pub const fn retry_after(reason: Reason, after: Duration) -> Self {
        Self::Retry {
            reason,
            after: Some(after),
        }
    }
}

/// Why an attempt failed, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Reason {
    /// The inner service returned an error.
    Error,
    /// An HTTP response with this status.
    Status(u16),
    /// A gRPC response with this `grpc-status` code.
    GrpcStatus(i32),
    /// The attempt ran out of time.
    TimedOut,
    /// Something else, named by a custom classifier.
    Other(&'static str),
}

impl Reason {
    /// A short label for metrics: `error`, the HTTP status (`503`), the gRPC code name
    /// (`UNAVAILABLE`), `timeout`, or a custom classifier's own.
    pub fn label(&self) -> Cow<'static, str> {
        match *self {
            Self::Error => "error".into(),
            Self::Status(code) => code.to_string().into(),
            Self::GrpcStatus(code) => grpc_code_name(code).into(),
            Self::TimedOut => "timeout".into(),
            Self::Other(s) => s.into(),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Error => f.write_str("error"),
            Self::Status(code) => write!(f, "status {code}"),
            Self::GrpcStatus(code) => write!(f, "grpc-status {code} {}", grpc_code_name(code)),
            Self::TimedOut => f.write_str("attempt timed out"),
            Self::Other(s) => f.write_str(s),
        }
    }
}

/// gRPC's name for a status code.
fn grpc_code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i).copied())
        .unwrap_or("UNKNOWN_CODE")
}

/// Classifies the result of an attempt.
pub trait Classify<Res, E>: Send + Sync + 'static {
    /// What `result` calls for.
    fn classify(&self, result: &Result<Res, E>) -> Verdict;

    /// Records on the final response that it took `attempts` attempts (default: nothing). The
    /// HTTP and gRPC classifiers insert the [`Attempts`](super::Attempts) extension.
    fn record_attempts(&self, response: &mut Res, attempts: u32) {
        let _ = (response, attempts);
    }
}

/// The default: errors are transient and worth retrying; responses are final.
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorsAreTransient;

impl<Res, E> Classify<Res, E> for ErrorsAreTransient {
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        match result {
            Ok(_) => Verdict::Done,
            Err(_) => Verdict::retry(Reason::Error),
        }
    }
}

/// Classifies with a closure. Made by [`classify_fn`].
pub struct ClassifyFn<F, Res, E> {
    f: F,
    _types: PhantomData<fn(&Result<Res, E>)>,
}

/// Classifies results with `f`.
pub fn classify_fn<F, Res, E>(f: F) -> ClassifyFn<F, Res, E>
where
    F: Fn(&Result<Res, E>) -> Verdict,
{
    ClassifyFn {
        f,
        _types: PhantomData,
    }
}

impl<F: Clone, Res, E> Clone for ClassifyFn<F, Res, E> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _types: PhantomData,
        }
    }
}

impl<F, Res, E> fmt::Debug for ClassifyFn<F, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F, Res, E>
where
    F: Fn(&Result<Res, E>) -> Verdict + Send + Sync + 'static,
    Res: 'static,
    E: 'static,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        (self.f)(result)
    }
}

#[cfg(feature = "http")]
pub use self::http_classifiers::{GrpcClassifier, HttpClassifier};

#[cfg(feature = "http")]
mod http_classifiers {
    use std::time::{Duration, SystemTime};

    use http::{HeaderMap, HeaderValue, StatusCode};

    use super::{Classify, Reason, Verdict};
    use crate::grpc::{GRPC_RETRY_PUSHBACK_MS, GRPC_STATUS, GRPC_STATUS_DETAILS_BIN};
    use crate::retry::{Attempts, X_RETRY_ATTEMPTS};

    /// Words of the status set: `StatusCode` holds 100 to 999, and `999 / 64 == 15`.
    const STATUS_WORDS: usize = 16;
    const _: () = assert!(999 / 64 < STATUS_WORDS);

    /// HTTP: errors, and responses `502 Bad Gateway`, `503 Service Unavailable`, `504 Gateway
    /// Timeout` and `429 Too Many Requests`, are worth retrying (the set can be changed);
    /// `Retry-After` is honoured.
    ///
    /// `Retry-After` may be a number of seconds or an HTTP date. A date is measured against the
    /// response's own `Date` header when it has one (so that the two clocks need not agree), against
    /// the system clock otherwise; a date in the past means "now".
    #[derive(Clone, Copy, Debug)]
    pub struct HttpClassifier {
        /// Bit `n` set: status `n` is retried. 16 words cover 0 to 1023, every status `StatusCode`
        /// can hold (100 to 999).
        statuses: [u64; STATUS_WORDS],
        errors: bool,
        header: bool,
    }

    impl Default for HttpClassifier {
        fn default() -> Self {
            Self::new()
        }
    }

    impl HttpClassifier {
        /// Errors, 502, 503, 504 and 429 are retried.
        pub const fn new() -> Self {
            Self {
                statuses: [0; STATUS_WORDS],
                errors: true,
                header: false,
            }
            .with(StatusCode::BAD_GATEWAY)
            .with(StatusCode::SERVICE_UNAVAILABLE)
            .with(StatusCode::GATEWAY_TIMEOUT)
            .with(StatusCode::TOO_MANY_REQUESTS)
        }

        const fn with(mut self, status: StatusCode) -> Self {
            let n = status.as_u16() as usize;
            self.statuses[n / 64] |= 1 << (n % 64);
            self
        }

        /// Retries exactly these statuses (instead of 502, 503, 504 and 429).
        #[must_use]
        pub fn statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
            self.statuses = [0; STATUS_WORDS];
            for s in statuses {
                self = self.with(s);
            }
            self
        }

        /// Also retries `status`.
        #[must_use]
        pub const fn retry_on(self, status: StatusCode) -> Self {
            self.with(status)
        }

        /// Whether errors from the inner service (connection refused, reset, ...) are retried
        /// (default: yes).
        #[must_use]
        pub const fn errors(mut self, retry: bool) -> Self {
            self.errors = retry;
            self
        }

        /// Also sends the number of attempts in an `x-retry-attempts` header on the final response
        /// (default: only the [`Attempts`] extension).
        #[must_use]
        pub const fn attempts_header(mut self, yes: bool) -> Self {
            self.header = yes;
            self
        }

        /// Whether responses with `status` are retried.
        pub const fn retries(&self, status: StatusCode) -> bool {
            let n = status.as_u16() as usize;
            self.statuses[n / 64] & (1 << (n % 64)) != 0
        }
    }

    impl<B, E> Classify<http::Response<B>, E> for HttpClassifier
    where
        B: 'static,
        E: 'static,
    {
        #[inline]
        fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
            match result {
                Ok(res) if self.retries(res.status()) => Verdict::Retry {
                    reason: Reason::Status(res.status().as_u16()),
                    after: retry_after(res.headers(), SystemTime::now),
                },
                Ok(_) => Verdict::Done,
                Err(_) if self.errors => Verdict::retry(Reason::Error),
                Err(_) => Verdict::Done,
            }
        }

        #[inline]
        fn record_attempts(&self, res: &mut http::Response<B>, attempts: u32) {
            res.extensions_mut().insert(Attempts(attempts));
            if self.header {
                res.headers_mut()
                    .insert(X_RETRY_ATTEMPTS.clone(), HeaderValue::from(attempts));
            }
        }
    }

    /// Reads `Retry-After`: delta-seconds, or an HTTP date measured against the `Date` header (or
    /// `now()` without one).
    pub(crate) fn retry_after(
        headers: &HeaderMap,
        now: impl FnOnce() -> SystemTime,
    ) -> Option<Duration> {
        let value = headers
            .get(http::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim();
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            // Saturate absurdly long values rather than ignoring them; the policy caps them.
            return Some(Duration::from_secs(
                value.parse::<u64>().unwrap_or(u64::MAX),
            ));
        }
        let at = httpdate::parse_http_date(value).ok()?;
        let reference = headers
            .get(http::header::DATE)
            .and_then(|d| d.to_str().ok())
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .unwrap_or_else(now);
        Some(at.duration_since(reference).unwrap_or(Duration::ZERO))
    }

    /// gRPC: errors, and `grpc-status` `UNAVAILABLE` (14) and `RESOURCE_EXHAUSTED` (8), are
    /// worth retrying (the set can be changed); the server's pushback is honoured.
    ///
    /// Works on trailers-only `http::Response`s (how servers answer unary calls that fail; a status
    /// in trailers after a streamed body is not seen; an HTTP `429`, `502`, `503` or `504` without
    /// a `grpc-status`, from a proxy in between, counts as `UNAVAILABLE`, as gRPC's own clients read
    /// it), and, with the `tonic` feature, on
    /// `Result<tonic::Response<T>, tonic::Status>`, the results of tonic's generated clients.
    ///
    /// The pushback is `grpc-retry-pushback-ms` (gRPC's retry design, A6: a negative or unreadable
    /// value means "do not retry"), or else the `retry_delay` of a `google.rpc.RetryInfo` in the
    /// status details.
    #[derive(Clone, Copy, Debug)]
    pub struct GrpcClassifier {
        /// Bit `n` set: code `n` is retried.
        codes: u32,
        errors: bool,
        header: bool,
    }

    impl Default for GrpcClassifier {
        fn default() -> Self {
            Self::new()
        }
    }

    impl GrpcClassifier {
        /// Errors, `UNAVAILABLE` and `RESOURCE_EXHAUSTED` are retried.
        pub const fn new() -> Self {
            Self {
                codes: 1 << 14 | 1 << 8,
                errors: true,
                header: false,
            }
        }

        /// Retries exactly these codes (instead of `UNAVAILABLE` and `RESOURCE_EXHAUSTED`); with
        /// tonic, `tonic::Code::Aborted as i32` and so on. Codes outside 1 to 16 are ignored.
        #[must_use]
        pub fn codes(mut self, codes: impl IntoIterator<Item = i32>) -> Self {
            self.codes = 0;
            for c in codes {
                self = self.retry_on(c);
            }
            self
        }

        /// Also retries `code`. Codes outside 1 to 16 are ignored.
        #[must_use]
        pub const fn retry_on(mut self, code: i32) -> Self {
            if code >= 1 && code <= 16 {
                self.codes |= 1 << code;
            }
            self
        }

        /// Whether transport errors from the inner service are retried (default: yes).
        #[must_use]
        pub const fn errors(mut self, retry: bool) -> Self {
            self.errors = retry;
            self
        }

        /// Also sends the number of attempts in `x-retry-attempts` metadata on the final response.
        #[must_use]
        pub const fn attempts_header(mut self, yes: bool) -> Self {
            self.header = yes;
            self
        }

        /// Whether `code` is retried.
        pub const fn retries(&self, code: i32) -> bool {
            code >= 1 && code <= 16 && self.codes & (1 << code) != 0
        }

        /// The verdict for a status `code` with `pushback` headers and `details`.
        fn verdict(&self, code: i32, headers: &HeaderMap, details: Option<&[u8]>) -> Verdict {
            if !self.retries(code) {
                return Verdict::Done;
            }
            let reason = Reason::GrpcStatus(code);
            match pushback(headers) {
                Pushback::After(d) => Verdict::retry_after(reason, d),
                Pushback::DoNotRetry => Verdict::DoNotRetry { reason },
                Pushback::None => Verdict::Retry {
                    reason,
                    after: details.and_then(retry_info_delay),
                },
            }
        }
    }

    impl<B, E> Classify<http::Response<B>, E> for GrpcClassifier
    where
        B: 'static,
        E: 'static,
    {
        fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
            match result {
                Ok(res) => {
                    let code = match res.headers().get(GRPC_STATUS) {
                        Some(v) => match parse_code(v) {
                            Some(code) => code,
                            None => return Verdict::Done,
                        },
                        // No gRPC status: an HTTP error from something in between (a proxy, a
                        // load balancer), read as gRPC's HTTP-to-gRPC mapping says.
                        None => match res.status().as_u16() {
                            200 => return Verdict::Done,
                            429 | 502 | 503 | 504 => 14, // UNAVAILABLE
                            _ => return Verdict::Done,
                        },
                    };
                    let details = res
                        .headers()
                        .get(GRPC_STATUS_DETAILS_BIN)
                        .and_then(|v| decode_base64(v.as_bytes()));
                    self.verdict(code, res.headers(), details.as_deref())
                }
                Err(_) if self.errors => Verdict::retry(Reason::Error),
                Err(_) => Verdict::Done,
            }
        }

        #[inline]
        fn record_attempts(&self, res: &mut http::Response<B>, attempts: u32) {
            res.extensions_mut().insert(Attempts(attempts));
            if self.header {
                res.headers_mut()
                    .insert(X_RETRY_ATTEMPTS.clone(), HeaderValue::from(attempts));
            }
        }
    }

    #[cfg(feature = "tonic")]
    impl<T: 'static> Classify<tonic::Response<T>, tonic::Status> for GrpcClassifier {
        fn classify(&self, result: &Result<tonic::Response<T>, tonic::Status>) -> Verdict {
            match result {
                Ok(_) => Verdict::Done,
                Err(status) => self.verdict(
                    status.code() as i32,
                    status.metadata().as_ref(),
                    Some(status.details()),
                ),
            }
        }

        #[inline]
        fn record_attempts(&self, res: &mut tonic::Response<T>, attempts: u32) {
            res.extensions_mut().insert(Attempts(attempts));
            if self.header {
                res.metadata_mut()
                    .insert(X_RETRY_ATTEMPTS.as_str(), attempts.into());
            }
        }
    }

    fn parse_code(v: &HeaderValue) -> Option<i32> {
        std::str::from_utf8(v.as_bytes()).ok()?.trim().parse().ok()
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Pushback {
        None,
        After(Duration),
        DoNotRetry,
    }

    fn pushback(headers: &HeaderMap) -> Pushback {
        let Some(v) = headers.get(GRPC_RETRY_PUSHBACK_MS) else {
            return Pushback::None;
        };
        let text = v.to_str().unwrap_or("").trim();
        if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
            Pushback::After(Duration::from_millis(text.parse().unwrap_or(u64::MAX)))
        } else {
            Pushback::DoNotRetry
        }
    }

    fn decode_base64(b: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine;
        let trimmed = b.strip_suffix(b"==").or(b.strip_suffix(b"=")).unwrap_or(b);
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(trimmed)
            .ok()
    }

    /// The `retry_delay` of a `google.rpc.RetryInfo` in an encoded `google.rpc.Status`.
    pub(crate) fn retry_info_delay(status: &[u8]) -> Option<Duration> {
        const RETRY_INFO: &[u8] = b"type.googleapis.com/google.rpc.RetryInfo";
        // Status { 3: repeated Any details }, Any { 1: type_url, 2: value }.
        for detail in fields(status).filter_map(|f| f.bytes(3)) {
            let mut type_url = None;
            let mut value = None;
            for f in fields(detail) {
                if let Some(b) = f.bytes(1) {
                    type_url = Some(b);
                } else if let Some(b) = f.bytes(2) {
                    value = Some(b);
                }
            }
            if type_url != Some(RETRY_INFO) {
                continue;
            }
            // RetryInfo { 1: Duration retry_delay }, Duration { 1: int64 seconds, 2: int32 nanos }.
            let duration = fields(value?).find_map(|f| f.bytes(1))?;
            let (mut secs, mut nanos) = (0i64, 0i64);
            for f in fields(duration) {
                match f {
                    Field::Varint(1, v) => secs = v as i64,
                    Field::Varint(2, v) => nanos = v as i32 as i64,
                    _ => {}
                }
            }
            if secs < 0 || nanos < 0 {
                return Some(Duration::ZERO);
            }
            return Some(Duration::new(secs as u64, 0) + Duration::from_nanos(nanos as u64));
        }
        None
    }

    /// A protobuf field: what the decoder needs of the wire format.
    enum Field<'a> {
        Varint(u64, u64),
        Bytes(u64, &'a [u8]),
        Other,
    }

    impl<'a> Field<'a> {
        fn bytes(&self, number: u64) -> Option<&'a [u8]> {
            match *self {
                Field::Bytes(n, b) if n == number => Some(b),
                _ => None,
            }
        }
    }

    /// The fields of a protobuf message; stops at the first malformed byte.
    fn fields(mut buf: &[u8]) -> impl Iterator<Item = Field<'_>> {
        std::iter::from_fn(move || {
            let key = varint(&mut buf)?;
            let (number, wire) = (key >> 3, key & 7);
            let field = match wire {
                0 => Field::Varint(number, varint(&mut buf)?),
                1 => {
                    buf = buf.get(8..)?;
                    Field::Other
                }
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).ok()?;
                    let (b, rest) = (buf.get(..len)?, buf.get(len..)?);
                    buf = rest;
                    Field::Bytes(number, b)
                }
                5 => {
                    buf = buf.get(4..)?;
                    Field::Other
                }
                _ => return None,
            };
            Some(field)
        })
    }

    fn varint(buf: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let (&b, rest) = buf.split_first()?;
            *buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn response(status: u16, headers: &[(&'static str, &str)]) -> http::Response<()> {
            let mut res = http::Response::new(());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                res.headers_mut().insert(*k, v.parse().unwrap());
            }
            res
        }

        #[test]
        fn http_defaults_and_retry_after() {
            let c = HttpClassifier::new();
            let v = |res| Classify::<_, ()>::classify(&c, &Ok(res));
            assert_eq!(v(response(200, &[])), Verdict::Done);
            assert_eq!(v(response(500, &[])), Verdict::Done);
            assert_eq!(v(response(404, &[])), Verdict::Done);
            for s in [429, 502, 503, 504] {
                assert_eq!(v(response(s, &[])), Verdict::retry(Reason::Status(s)));
            }
            assert_eq!(
                v(response(503, &[("retry-after", "7")])),
                Verdict::retry_after(Reason::Status(503), Duration::from_secs(7))
            );
            assert_eq!(
                v(response(
                    429,
                    &[
                        ("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT"),
                        ("date", "Wed, 21 Oct 2015 07:28:00 GMT")
                    ]
                )),
                Verdict::retry_after(Reason::Status(429), Duration::from_secs(30))
            );
            // Unreadable values are ignored: the backoff decides.
            assert_eq!(
                v(response(503, &[("retry-after", "soon")])),
                Verdict::retry(Reason::Status(503))
            );
            let c = c
                .statuses([StatusCode::INTERNAL_SERVER_ERROR])
                .errors(false);
            assert_eq!(
                Classify::<_, ()>::classify(&c, &Ok(response(500, &[]))),
                Verdict::retry(Reason::Status(500))
            );
            assert_eq!(
                Classify::<_, ()>::classify(&c, &Ok(response(503, &[]))),
                Verdict::Done
            );
            assert_eq!(
                Classify::<http::Response<()>, ()>::classify(&c, &Err(())),
                Verdict::Done
            );
        }

        #[test]
        fn http_dates_in_the_past_mean_now_and_without_date_the_system_clock_is_used() {
            let past = [
                ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
                ("date", "Wed, 21 Oct 2015 07:29:00 GMT"),
            ];
            let h = response(503, &past).headers().clone();
            assert_eq!(retry_after(&h, SystemTime::now), Some(Duration::ZERO));
            let h = response(503, &past[..1]).headers().clone();
            let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:27:00 GMT").unwrap();
            assert_eq!(retry_after(&h, || now), Some(Duration::from_secs(60)));
        }

        #[test]
        fn grpc_codes_pushback_and_retry_info() {
            let c = GrpcClassifier::new();
            let v = |res| Classify::<_, ()>::classify(&c, &Ok(res));
            assert_eq!(v(response(200, &[])), Verdict::Done);
            assert_eq!(v(response(200, &[("grpc-status", "0")])), Verdict::Done);
            assert_eq!(v(response(200, &[("grpc-status", "13")])), Verdict::Done);
            // A proxy's 503 without a gRPC status is UNAVAILABLE; its 404 is not retried.
            assert_eq!(
                v(response(503, &[])),
                Verdict::retry(Reason::GrpcStatus(14))
            );
            assert_eq!(v(response(404, &[])), Verdict::Done);
            assert_eq!(
                v(response(200, &[("grpc-status", "14")])),
                Verdict::retry(Reason::GrpcStatus(14))
            );
            assert_eq!(
                v(response(
                    200,
                    &[("grpc-status", "8"), ("grpc-retry-pushback-ms", "1500")]
                )),
                Verdict::retry_after(Reason::GrpcStatus(8), Duration::from_millis(1500))
            );
            for bad in ["-1", "soon"] {
                assert_eq!(
                    v(response(
                        200,
                        &[("grpc-status", "14"), ("grpc-retry-pushback-ms", bad)]
                    )),
                    Verdict::DoNotRetry {
                        reason: Reason::GrpcStatus(14)
                    },
                    "{bad}"
                );
            }
            // RetryInfo, as this crate's own gRPC refusals carry it.
            let details = crate::grpc::status_details(8, "x", Some(Duration::new(6, 5)));
            use base64::Engine;
            let encoded = base64::engine::general_purpose::STANDARD.encode(&details);
            assert_eq!(
                v(response(
                    200,
                    &[("grpc-status", "8"), ("grpc-status-details-bin", &encoded)]
                )),
                Verdict::retry_after(Reason::GrpcStatus(8), Duration::new(6, 5))
            );
            let c = c.codes([10]);
            assert!(c.retries(10) && !c.retries(14) && !c.retries(0) && !c.retries(99));
        }

        #[test]
        fn malformed_status_details_are_ignored() {
            assert_eq!(retry_info_delay(&[0xff; 12]), None);
            assert_eq!(retry_info_delay(&[0x1a, 0x40, 1, 2]), None);
            assert_eq!(retry_info_delay(&[]), None);
        }
    }
}
