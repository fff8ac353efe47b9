//! The `RateLimit` and `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers), the legacy
//! `X-RateLimit-*` headers, and `Retry-After`.

#[cfg(feature = "rate-limit")]
use std::fmt::Write;
use std::time::Duration;

#[cfg(feature = "rate-limit")]
use http::HeaderValue;
use http::{HeaderMap, HeaderName};

#[cfg(feature = "rate-limit")]
use crate::rate_limit::{Decision, error::Policy};

/// `RateLimit-Policy`: the quota, e.g. `"default";q=10;w=60`.
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`: the live counters, e.g. `"default";r=9;t=6`.
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// Legacy `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// Legacy `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// Legacy `X-RateLimit-Reset` (seconds until the quota resets).
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Whole seconds, rounded up, so a client that waits that long is never early.
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(feature = "rate-limit")]
fn value(s: &str) -> HeaderValue {
    // Only digits, letters and `-_.:";=` reach here (names are checked when the layer is built).
    HeaderValue::from_str(s).expect("rate limit header values are visible ASCII")
}

#[cfg(feature = "rate-limit")]
/// Adds the rate limit fields for `decision` under `policy`. Appends, so stacked limiters each
/// contribute their own list member.
pub(crate) fn write_rate_limit(headers: &mut HeaderMap, policy: &Policy, decision: &Decision) {
    let reset = ceil_secs(decision.reset());
    let mut buf = String::with_capacity(48);
    let _ = write!(
        buf,
        "\"{}\";q={};w={}",
        policy.name,
        decision.limit(),
        policy.window_secs
    );
    headers.append(RATELIMIT_POLICY.clone(), value(&buf));
    buf.clear();
    let _ = write!(
        buf,
        "\"{}\";r={};t={}",
        policy.name,
        decision.remaining(),
        reset
    );
    headers.append(RATELIMIT.clone(), value(&buf));
    if policy.legacy_headers {
        headers.insert(X_RATELIMIT_LIMIT.clone(), decision.limit().into());
        headers.insert(X_RATELIMIT_REMAINING.clone(), decision.remaining().into());
        headers.insert(X_RATELIMIT_RESET.clone(), reset.into());
    }
}

/// Sets `Retry-After` in whole seconds (at least 1).
pub(crate) fn write_retry_after(headers: &mut HeaderMap, retry_after: Duration) {
    headers.insert(
        http::header::RETRY_AFTER,
        ceil_secs(retry_after).max(1).into(),
    );
}
