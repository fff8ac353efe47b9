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

/// A small stack buffer for header values: formatting one allocates nothing until the value is
/// copied, once, into the header.
#[cfg(feature = "rate-limit")]
struct ValueBuf {
    bytes: [u8; 128],
    len: usize,
}

#[cfg(feature = "rate-limit")]
impl ValueBuf {
    fn new() -> Self {
        Self {
            bytes: [0; 128],
            len: 0,
        }
    }

    fn push(&mut self, s: &[u8]) {
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }

    fn push_u64(&mut self, mut n: u64) {
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
        self.push(&digits[i..]);
    }

    fn value(&self) -> HeaderValue {
        HeaderValue::from_bytes(&self.bytes[..self.len])
            .expect("a checked name and digits are a valid header value")
    }
}

/// Adds the rate limit fields for `decision` under `policy`. Appends, so stacked limiters each
/// contribute their own list member.
#[cfg(feature = "rate-limit")]
pub(crate) fn write_rate_limit(headers: &mut HeaderMap, policy: &Policy, decision: &Decision) {
    let reset = ceil_secs(decision.reset());
    let remaining = decision.remaining();
    // `"` + name (at most 64, checked at build) + `";r=` + 10 digits + `;t=` + 20 digits < 128.
    let mut buf = ValueBuf::new();
    buf.push(b"\"");
    buf.push(policy.name.as_bytes());
    buf.push(b"\";r=");
    buf.push_u64(u64::from(remaining));
    buf.push(b";t=");
    buf.push_u64(reset);
    headers.append(RATELIMIT_POLICY.clone(), policy.header.clone());
    headers.append(RATELIMIT.clone(), buf.value());
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
