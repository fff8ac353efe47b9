//! HTTP: status sets, and `Retry-After`.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use super::{Attempts, Classify, Pushback, Reason, Verdict, X_RETRY_ATTEMPTS};

/// Words of a status set: `StatusCode` holds 100 to 999, and `999 / 64 == 15`.
const STATUS_WORDS: usize = 16;
const _: () = assert!(999 / 64 < STATUS_WORDS);

/// A set of HTTP statuses. Bit `n` set: status `n` is in. 16 words cover 0 to 1023, every status
/// `StatusCode` can hold (100 to 999).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatusSet([u64; STATUS_WORDS]);

impl StatusSet {
    const EMPTY: Self = Self([0; STATUS_WORDS]);

    /// `500` to `599`.
    const SERVER_ERRORS: Self = {
        let mut set = Self::EMPTY;
        let mut n = 500;
        while n < 600 {
            set.0[n / 64] |= 1 << (n % 64);
            n += 1;
        }
        set
    };

    /// `429`, `502`, `503` and `504`.
    const TRANSIENT: Self = Self::EMPTY
        .with(StatusCode::TOO_MANY_REQUESTS)
        .with(StatusCode::BAD_GATEWAY)
        .with(StatusCode::SERVICE_UNAVAILABLE)
        .with(StatusCode::GATEWAY_TIMEOUT);

    const fn with(mut self, status: StatusCode) -> Self {
        let n = status.as_u16() as usize;
        self.0[n / 64] |= 1 << (n % 64);
        self
    }

    fn from_statuses(statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        statuses.into_iter().fold(Self::EMPTY, Self::with)
    }

    const fn contains(&self, status: StatusCode) -> bool {
        let n = status.as_u16() as usize;
        self.0[n / 64] & (1 << (n % 64)) != 0
    }
}

/// HTTP. By default:
///
/// | result | verdict | circuit breaker | retry |
/// |---|---|---|---|
/// | an error from the inner service | [`Transient`](Verdict::Transient) | failure | retried |
/// | `502`, `503`, `504` | [`Transient`](Verdict::Transient) | failure | retried |
/// | other `5xx` | [`Failure`](Verdict::Failure) | failure | returned |
/// | `429 Too Many Requests` | [`Throttled`](Verdict::Throttled) | success | retried |
/// | any other response | [`Success`](Verdict::Success) | success | returned |
///
/// Two sets of statuses decide: the *failure* statuses (`5xx`; change them with
/// [`failure_statuses`](Self::failure_statuses) and [`fail_on`](Self::fail_on)) are the
/// upstream's failures, the *retry* statuses (`429`, `502`, `503`, `504`; change them with
/// [`retry_statuses`](Self::retry_statuses) and [`retry_on`](Self::retry_on)) are worth another
/// attempt. A status in both is transient, in the retry set only throttled.
///
/// `Retry-After` is read on retried statuses. It may be a number of seconds or an HTTP date. A
/// date is measured against the response's own `Date` header when it has one (so that the two
/// clocks need not agree), against the system clock otherwise; a date in the past means "now".
#[derive(Clone, Copy, Debug)]
pub struct HttpClassifier {
    failures: StatusSet,
    retried: StatusSet,
    retry_errors: bool,
    header: bool,
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpClassifier {
    /// Errors, `502`, `503` and `504` are transient failures, other `5xx` failures, `429`
    /// throttled.
    pub const fn new() -> Self {
        Self {
            failures: StatusSet::SERVER_ERRORS,
            retried: StatusSet::TRANSIENT,
            retry_errors: true,
            header: false,
        }
    }

    /// Retries exactly these statuses (instead of `429`, `502`, `503` and `504`).
    #[must_use]
    pub fn retry_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.retried = StatusSet::from_statuses(statuses);
        self
    }

    /// Also retries `status`.
    #[must_use]
    pub const fn retry_on(mut self, status: StatusCode) -> Self {
        self.retried = self.retried.with(status);
        self
    }

    /// Counts exactly these statuses as failures (instead of `5xx`).
    #[must_use]
    pub fn failure_statuses(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.failures = StatusSet::from_statuses(statuses);
        self
    }

    /// Also counts `status` as a failure: `fail_on(StatusCode::TOO_MANY_REQUESTS)` trips the
    /// circuit on an upstream shedding load.
    #[must_use]
    pub const fn fail_on(mut self, status: StatusCode) -> Self {
        self.failures = self.failures.with(status);
        self
    }

    /// Whether errors from the inner service (connection refused, reset, ...) are retried
    /// (default: yes). They are failures either way.
    #[must_use]
    pub const fn retry_errors(mut self, retry: bool) -> Self {
        self.retry_errors = retry;
        self
    }

    /// Also sends the number of attempts in an `x-retry-attempts` header on the retry layer's
    /// final response (default: only the [`Attempts`] extension).
    #[must_use]
    pub const fn attempts_header(mut self, yes: bool) -> Self {
        self.header = yes;
        self
    }

    /// Whether responses with `status` are retried.
    pub const fn retries(&self, status: StatusCode) -> bool {
        self.retried.contains(status)
    }

    /// Whether responses with `status` are failures.
    pub const fn fails(&self, status: StatusCode) -> bool {
        self.failures.contains(status)
    }
}

impl<B, E: 'static> Classify<http::Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: &Result<http::Response<B>, E>) -> Verdict {
        match result {
            Ok(res) => {
                let status = res.status();
                // A refusal rendered by one of this crate's layers below (see `Refused`).
                if status.as_u16() >= 400
                    && let Some(verdict) = res
                        .extensions()
                        .get::<crate::rejection::Refused>()
                        .and_then(|r| r.verdict())
                {
                    return verdict;
                }
                let reason = Reason::Status(status.as_u16());
                let failure = self.fails(status);
                if !self.retries(status) {
                    return if failure {
                        Verdict::Failure { reason }
                    } else {
                        Verdict::Success
                    };
                }
                let pushback = retry_after(res.headers(), SystemTime::now)
                    .map_or(Pushback::None, Pushback::After);
                if failure {
                    Verdict::Transient { reason, pushback }
                } else {
                    Verdict::Throttled { reason, pushback }
                }
            }
            Err(e) if self.retry_errors => super::refused_or(e, Verdict::transient(Reason::Error)),
            Err(e) => super::refused_or(e, Verdict::failure(Reason::Error)),
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
fn retry_after(headers: &HeaderMap, now: impl FnOnce() -> SystemTime) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn response(status: u16, headers: &[(&'static str, &str)]) -> http::Response<()> {
        let mut res = http::Response::new(());
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            res.headers_mut().insert(*k, v.parse().unwrap());
        }
        res
    }

    fn verdict(c: &HttpClassifier, res: http::Response<()>) -> Verdict {
        Classify::<_, ()>::classify(c, &Ok(res))
    }

    #[test]
    fn defaults_and_retry_after() {
        let c = HttpClassifier::new();
        let v = |res| verdict(&c, res);
        assert_eq!(v(response(200, &[])), Verdict::Success);
        assert_eq!(v(response(500, &[])), Verdict::failure(Reason::Status(500)));
        assert_eq!(v(response(404, &[])), Verdict::Success);
        for s in [502, 503, 504] {
            assert_eq!(v(response(s, &[])), Verdict::transient(Reason::Status(s)));
        }
        assert_eq!(
            v(response(429, &[])),
            Verdict::throttled(Reason::Status(429))
        );
        assert_eq!(
            v(response(503, &[("retry-after", "7")])),
            Verdict::transient_after(Reason::Status(503), Duration::from_secs(7))
        );
        assert_eq!(
            v(response(
                429,
                &[
                    ("retry-after", "Wed, 21 Oct 2015 07:28:30 GMT"),
                    ("date", "Wed, 21 Oct 2015 07:28:00 GMT")
                ]
            )),
            Verdict::Throttled {
                reason: Reason::Status(429),
                pushback: Pushback::After(Duration::from_secs(30))
            }
        );
        // Unreadable values are ignored: the backoff decides.
        assert_eq!(
            v(response(503, &[("retry-after", "soon")])),
            Verdict::transient(Reason::Status(503))
        );
        let c = c
            .retry_statuses([StatusCode::INTERNAL_SERVER_ERROR])
            .retry_errors(false);
        assert_eq!(
            verdict(&c, response(500, &[])),
            Verdict::transient(Reason::Status(500))
        );
        assert!(!verdict(&c, response(503, &[])).is_retryable());
        assert_eq!(
            Classify::<http::Response<()>, ()>::classify(&c, &Err(())),
            Verdict::failure(Reason::Error)
        );
    }

    /// The circuit breaker's view: errors and 5xx are failures, 429 only when asked.
    #[test]
    fn failures() {
        let c = HttpClassifier::new();
        let failed = |c: &HttpClassifier, s| verdict(c, response(s, &[])).is_failure();
        assert!(!failed(&c, 200) && !failed(&c, 404) && !failed(&c, 429));
        assert!(failed(&c, 500) && failed(&c, 503) && failed(&c, 599));
        assert!(Classify::<http::Response<()>, ()>::classify(&c, &Err(())).is_failure());
        let c = c.fail_on(StatusCode::TOO_MANY_REQUESTS);
        assert!(failed(&c, 429));
        assert_eq!(
            verdict(&c, response(429, &[])),
            Verdict::transient(Reason::Status(429))
        );
        let c = c.failure_statuses([StatusCode::NOT_FOUND]);
        assert!(failed(&c, 404) && !failed(&c, 500));
    }

    #[test]
    fn dates_in_the_past_mean_now_and_without_date_the_system_clock_is_used() {
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
}
