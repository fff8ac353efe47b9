//! gRPC: status code sets, and the server's pushback.

use http::{HeaderMap, HeaderValue};

use super::retry_info::{
    GRPC_STATUS_DETAILS_BIN, decode_details_header, pushback, retry_info_delay,
};
use super::{Attempts, Classify, GrpcCode, Pushback, Reason, Verdict, X_RETRY_ATTEMPTS};

/// `grpc-status`.
pub const GRPC_STATUS: &str = "grpc-status";

/// A set of gRPC status codes other than `OK`: bit `n` set, code `n` is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct CodeSet(u32);

impl CodeSet {
    const fn with(self, code: GrpcCode) -> Self {
        match code {
            // `OK` is never a failure, nor retried.
            GrpcCode::Ok => self,
            _ => Self(self.0 | 1 << code.as_i32()),
        }
    }

    fn from_codes<C: Into<GrpcCode>>(codes: impl IntoIterator<Item = C>) -> Self {
        codes
            .into_iter()
            .fold(Self(0), |set, code| set.with(code.into()))
    }

    const fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code.as_i32()) != 0
    }
}

/// gRPC. By default:
///
/// | result | verdict | circuit breaker | retry |
/// |---|---|---|---|
/// | an error from the inner service (a transport error) | [`Transient`](Verdict::Transient) | failure | retried |
/// | `UNAVAILABLE` | [`Transient`](Verdict::Transient) | failure | retried |
/// | `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL` | [`Failure`](Verdict::Failure) | failure | returned |
/// | `RESOURCE_EXHAUSTED` | [`Throttled`](Verdict::Throttled) | success | retried |
/// | an HTTP `429`, `502`, `503` or `504` without a `grpc-status` | as `UNAVAILABLE` | failure | retried |
/// | a `grpc-status` that is not a code | as `UNKNOWN` | failure | returned |
/// | any other status, or none | [`Success`](Verdict::Success) | success | returned |
///
/// Two sets of codes decide, as for [`HttpClassifier`](super::HttpClassifier): the *failure*
/// codes ([`failure_codes`](Self::failure_codes), [`fail_on`](Self::fail_on)) and the *retry*
/// codes ([`retry_codes`](Self::retry_codes), [`retry_on`](Self::retry_on)); `OK` is in neither.
///
/// Works on trailers-only `http::Response`s (how servers answer unary calls that fail; a status in
/// trailers after a streamed body is not seen) and, with the `tonic` feature, on
/// `Result<tonic::Response<T>, tonic::Status>`, the results of tonic's generated clients. An HTTP
/// error without a `grpc-status` comes from something in between (a proxy, a load balancer): it
/// is read as `UNAVAILABLE`, as gRPC's HTTP-to-gRPC mapping says and tonic's clients read it (a
/// proxy's `502` means the service cannot be reached: a failure for the circuit, which a
/// half-open probe must not take for a success). A `grpc-status` that is not a code is read as
/// `UNKNOWN`, as the gRPC spec says.
///
/// The pushback read on retried codes is `grpc-retry-pushback-ms` (gRPC's retry design, A6: a
/// negative or unreadable value means "do not retry"), or else the `retry_delay` of a
/// `google.rpc.RetryInfo` in the status details.
#[derive(Clone, Copy, Debug)]
pub struct GrpcClassifier {
    failures: CodeSet,
    retried: CodeSet,
    retry_errors: bool,
    header: bool,
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcClassifier {
    /// Errors and `UNAVAILABLE` are transient failures; `UNKNOWN`, `DEADLINE_EXCEEDED` and
    /// `INTERNAL` failures; `RESOURCE_EXHAUSTED` throttled.
    pub const fn new() -> Self {
        Self {
            failures: CodeSet(0)
                .with(GrpcCode::Unknown)
                .with(GrpcCode::DeadlineExceeded)
                .with(GrpcCode::Internal)
                .with(GrpcCode::Unavailable),
            retried: CodeSet(0)
                .with(GrpcCode::Unavailable)
                .with(GrpcCode::ResourceExhausted),
            retry_errors: true,
            header: false,
        }
    }

    /// Retries exactly these codes (instead of `UNAVAILABLE` and `RESOURCE_EXHAUSTED`): a
    /// [`GrpcCode`], or with the `tonic` feature a `tonic::Code`. `OK` is ignored.
    #[must_use]
    pub fn retry_codes<C: Into<GrpcCode>>(mut self, codes: impl IntoIterator<Item = C>) -> Self {
        self.retried = CodeSet::from_codes(codes);
        self
    }

    /// Also retries `code` (`OK` is ignored).
    #[must_use]
    pub const fn retry_on(mut self, code: GrpcCode) -> Self {
        self.retried = self.retried.with(code);
        self
    }

    /// Counts exactly these codes as failures (instead of `UNKNOWN`, `DEADLINE_EXCEEDED`,
    /// `INTERNAL` and `UNAVAILABLE`). `OK` is ignored.
    #[must_use]
    pub fn failure_codes<C: Into<GrpcCode>>(mut self, codes: impl IntoIterator<Item = C>) -> Self {
        self.failures = CodeSet::from_codes(codes);
        self
    }

    /// Also counts `code` as a failure (`OK` is ignored).
    #[must_use]
    pub const fn fail_on(mut self, code: GrpcCode) -> Self {
        self.failures = self.failures.with(code);
        self
    }

    /// Whether transport errors from the inner service are retried (default: yes). They are
    /// failures either way.
    #[must_use]
    pub const fn retry_errors(mut self, retry: bool) -> Self {
        self.retry_errors = retry;
        self
    }

    /// Also sends the number of attempts in `x-retry-attempts` metadata on the retry layer's
    /// final response.
    #[must_use]
    pub const fn attempts_header(mut self, yes: bool) -> Self {
        self.header = yes;
        self
    }

    /// Whether `code` is retried.
    pub const fn retries(&self, code: GrpcCode) -> bool {
        self.retried.contains(code)
    }

    /// Whether `code` is a failure.
    pub const fn fails(&self, code: GrpcCode) -> bool {
        self.failures.contains(code)
    }

    /// The verdict for a status `code` that is a failure or not, with `headers` (for the
    /// pushback) and status `details`.
    fn verdict(
        &self,
        code: GrpcCode,
        failure: bool,
        headers: &HeaderMap,
        details: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Verdict {
        let reason = Reason::GrpcStatus(code);
        if !self.retries(code) {
            return if failure {
                Verdict::Failure { reason }
            } else {
                Verdict::Success
            };
        }
        let pushback = match pushback(headers) {
            Pushback::None => details()
                .and_then(|d| retry_info_delay(&d))
                .map_or(Pushback::None, Pushback::After),
            asked => asked,
        };
        if failure {
            Verdict::Transient { reason, pushback }
        } else {
            Verdict::Throttled { reason, pushback }
        }
    }

    fn errors(&self) -> Verdict {
        if self.retry_errors {
            Verdict::transient(Reason::Error)
        } else {
            Verdict::failure(Reason::Error)
        }
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for GrpcClassifier {
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
        let res = match result {
            Ok(res) => res,
            Err(e) => return super::refused_or(e, self.errors()),
        };
        // A refusal rendered by one of this crate's layers below (see `Refused`).
        if let Some(verdict) = res
            .extensions()
            .get::<crate::rejection::Refused>()
            .and_then(|r| r.verdict())
        {
            return verdict;
        }
        let headers = res.headers();
        let (code, failure) = match headers.get(GRPC_STATUS) {
            Some(v) => {
                let code = parse_code(v).unwrap_or(GrpcCode::Unknown);
                (code, self.fails(code))
            }
            // No gRPC status: an HTTP error from something in between (a proxy, a load
            // balancer), read as gRPC's HTTP-to-gRPC mapping says (and tonic's clients do).
            None => match res.status().as_u16() {
                429 | 502 | 503 | 504 => (GrpcCode::Unavailable, self.fails(GrpcCode::Unavailable)),
                _ => return Verdict::Success,
            },
        };
        self.verdict(code, failure, headers, || {
            headers
                .get(GRPC_STATUS_DETAILS_BIN)
                .and_then(|v| decode_details_header(v.as_bytes()))
        })
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
            Ok(_) => Verdict::Success,
            Err(status) => {
                let code = GrpcCode::from(status.code());
                self.verdict(code, self.fails(code), status.metadata().as_ref(), || {
                    Some(status.details().to_vec())
                })
            }
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

fn parse_code(v: &HeaderValue) -> Option<GrpcCode> {
    let code = std::str::from_utf8(v.as_bytes())
        .ok()?
        .trim()
        .parse()
        .ok()?;
    GrpcCode::from_i32(code)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::retry_info::status_details;
    use super::*;

    fn response(status: u16, headers: &[(&'static str, &str)]) -> http::Response<()> {
        let mut res = http::Response::new(());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            res.headers_mut().insert(*k, v.parse().unwrap());
        }
        res
    }

    const UNAVAILABLE: Reason = Reason::GrpcStatus(GrpcCode::Unavailable);
    const EXHAUSTED: Reason = Reason::GrpcStatus(GrpcCode::ResourceExhausted);

    #[test]
    fn codes_pushback_and_retry_info() {
        let c = GrpcClassifier::new();
        let v = |res| Classify::<_, ()>::classify(&c, &Ok(res));
        assert_eq!(v(response(200, &[])), Verdict::Success);
        assert_eq!(v(response(200, &[("grpc-status", "0")])), Verdict::Success);
        assert_eq!(
            v(response(200, &[("grpc-status", "13")])),
            Verdict::failure(Reason::GrpcStatus(GrpcCode::Internal))
        );
        // A proxy's 429, 502, 503 or 504 without a gRPC status is UNAVAILABLE, as gRPC maps it
        // and tonic's clients read it: retried, and a failure for the circuit; its 404 is
        // neither. A status that is not a code is UNKNOWN.
        for status in [429, 502, 503, 504] {
            assert_eq!(
                v(response(status, &[])),
                Verdict::transient(UNAVAILABLE),
                "{status}"
            );
        }
        assert_eq!(v(response(404, &[])), Verdict::Success);
        for bad in ["x", "17", "-1"] {
            assert_eq!(
                v(response(200, &[("grpc-status", bad)])),
                Verdict::failure(Reason::GrpcStatus(GrpcCode::Unknown)),
                "{bad}"
            );
        }
        assert_eq!(
            v(response(200, &[("grpc-status", "14")])),
            Verdict::transient(UNAVAILABLE)
        );
        assert_eq!(
            v(response(
                200,
                &[("grpc-status", "8"), ("grpc-retry-pushback-ms", "1500")]
            )),
            Verdict::Throttled {
                reason: EXHAUSTED,
                pushback: Pushback::After(Duration::from_millis(1500))
            }
        );
        for bad in ["-1", "soon"] {
            assert_eq!(
                v(response(
                    200,
                    &[("grpc-status", "14"), ("grpc-retry-pushback-ms", bad)]
                )),
                Verdict::Transient {
                    reason: UNAVAILABLE,
                    pushback: Pushback::DoNotRetry
                },
                "{bad}"
            );
        }
        // RetryInfo, as this crate's own gRPC refusals carry it.
        let details = status_details(GrpcCode::ResourceExhausted, "x", Some(Duration::new(6, 5)));
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(&details);
        assert_eq!(
            v(response(
                200,
                &[("grpc-status", "8"), ("grpc-status-details-bin", &encoded)]
            )),
            Verdict::Throttled {
                reason: EXHAUSTED,
                pushback: Pushback::After(Duration::new(6, 5))
            }
        );
        let c = c.retry_codes([GrpcCode::Aborted]);
        assert!(c.retries(GrpcCode::Aborted) && !c.retries(GrpcCode::Unavailable));
        assert!(!c.retries(GrpcCode::Ok) && !c.retry_on(GrpcCode::Ok).retries(GrpcCode::Ok));
    }

    /// The circuit breaker's view: errors, and `UNKNOWN`, `DEADLINE_EXCEEDED`, `INTERNAL`,
    /// `UNAVAILABLE`, are failures.
    #[test]
    fn failures() {
        let c = GrpcClassifier::new();
        let failed =
            |c: &GrpcClassifier, res| Classify::<_, ()>::classify(c, &Ok(res)).is_failure();
        assert!(!failed(&c, response(200, &[])));
        assert!(!failed(&c, response(200, &[("grpc-status", "0")])));
        assert!(
            !failed(&c, response(200, &[("grpc-status", "5")])),
            "NOT_FOUND"
        );
        assert!(!failed(&c, response(200, &[("grpc-status", "8")])));
        // A proxy's 503 (the service cannot be reached) is a failure, as UNAVAILABLE is.
        assert!(failed(&c, response(503, &[])));
        for code in ["2", "4", "13", "14"] {
            assert!(
                failed(&c, response(200, &[("grpc-status", code)])),
                "{code}"
            );
        }
        assert!(Classify::<http::Response<()>, ()>::classify(&c, &Err(())).is_failure());
        let c = c.fail_on(GrpcCode::ResourceExhausted);
        assert!(failed(&c, response(200, &[("grpc-status", "8")])));
        let c = c.failure_codes([GrpcCode::NotFound]);
        assert!(failed(&c, response(200, &[("grpc-status", "5")])));
        assert!(!failed(&c, response(200, &[("grpc-status", "13")])));
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn tonic_statuses() {
        let c = GrpcClassifier::new();
        let v = |r: Result<tonic::Response<()>, tonic::Status>| c.classify(&r);
        assert_eq!(v(Ok(tonic::Response::new(()))), Verdict::Success);
        assert_eq!(
            v(Err(tonic::Status::unavailable("x"))),
            Verdict::transient(UNAVAILABLE)
        );
        assert_eq!(v(Err(tonic::Status::not_found("x"))), Verdict::Success);
        assert!(v(Err(tonic::Status::internal("x"))).is_failure());
    }
}
