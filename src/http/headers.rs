//! The names of the `RateLimit` and `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers)
//! and of the legacy `X-RateLimit-*` headers, and `Retry-After`. The rate limiter writes its
//! fields' values itself (`rate_limit::headers`).

use std::time::Duration;

use http::{HeaderMap, HeaderName};

use crate::clock::ceil_secs;

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

/// Sets `Retry-After` in whole seconds (at least 1).
pub(crate) fn write_retry_after(headers: &mut HeaderMap, retry_after: Duration) {
    headers.insert(
        http::header::RETRY_AFTER,
        ceil_secs(retry_after).max(1).into(),
    );
}
