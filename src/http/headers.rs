//! The `RateLimit` and `RateLimit-Policy` fields (draft-ietf-httpapi-ratelimit-headers), the legacy
//! `X-RateLimit-*` headers, and `Retry-After`.

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

/// The `RateLimit-Policy` value `"name";q=limit;w=window`, made once per distinct policy and kept
/// for the life of the process (a few dozen bytes per policy; rebuilding a layer reuses it), so that
/// responses carry it without allocating or touching a shared reference count.
#[cfg(feature = "rate-limit")]
pub(crate) fn policy_value(name: &str, limit: u32, window_secs: u64) -> &'static HeaderValue {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static INTERNED: OnceLock<Mutex<HashMap<String, &'static HeaderValue>>> = OnceLock::new();
    let text = format!("\"{name}\";q={limit};w={window_secs}");
    let mut map = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(text).or_insert_with_key(|text| {
        // Names are checked when the layer is built: letters, digits and -_.: only.
        let value = HeaderValue::from_str(text).expect("policy names are visible ASCII");
        Box::leak(Box::new(value))
    })
}

/// Appends the decimal digits of `n` to `buf`.
#[cfg(feature = "rate-limit")]
fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

/// Adds the rate limit fields for `decision` under `policy`. Appends, so stacked limiters each
/// contribute their own list member.
#[cfg(feature = "rate-limit")]
pub(crate) fn write_rate_limit(headers: &mut HeaderMap, policy: &Policy, decision: &Decision) {
    let reset = ceil_secs(decision.reset());
    let remaining = decision.remaining();
    let mut buf = Vec::with_capacity(policy.name.len() + 32);
    buf.push(b'"');
    buf.extend_from_slice(policy.name.as_bytes());
    buf.extend_from_slice(b"\";r=");
    push_u64(&mut buf, u64::from(remaining));
    buf.extend_from_slice(b";t=");
    push_u64(&mut buf, reset);
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(buf))
        .expect("a checked name and digits are a valid header value");
    headers.append(RATELIMIT_POLICY.clone(), policy.header.clone());
    headers.append(RATELIMIT.clone(), value);
    if policy.legacy_headers {
        headers.insert(X_RATELIMIT_LIMIT.clone(), decision.limit().into());
        headers.insert(X_RATELIMIT_REMAINING.clone(), remaining.into());
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
