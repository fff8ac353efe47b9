//! The rate limiter's HTTP fields: `RateLimit-Policy` and `RateLimit` (and the legacy
//! `X-RateLimit-*` headers) written from a decision. The `RateLimit-Policy` value is built once per
//! policy; a `RateLimit` value seen before is a clone of a kept one ([`prebuilt`]); any other is
//! formatted per response with no allocation but one per few dozen.

mod prebuilt;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Decision, error::Policy};
use crate::clock::ceil_secs;
use crate::http::{X_RATELIMIT_LIMIT, X_RATELIMIT_REMAINING, X_RATELIMIT_RESET};

/// A set of limits' `RateLimit-Policy` value, and the `RateLimit` values its limits have sent.
pub(crate) struct PolicyHeader {
    /// The `RateLimit-Policy` value (`'static` bytes: cloning it copies two pointers).
    pub(crate) value: HeaderValue,
    /// `RateLimit` values kept for this set's limits.
    prebuilt: prebuilt::Prebuilt,
}

impl std::fmt::Debug for PolicyHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHeader")
            .field("value", &self.value)
            .field("prebuilt", &self.prebuilt)
            .finish()
    }
}

impl PartialEq for PolicyHeader {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl Eq for PolicyHeader {}

/// The `RateLimit-Policy` value listing several policies, `"minute";q=10;w=60, "day";q=1000;w=86400`,
/// made once per distinct
/// list and kept for the life of the process (a few dozen bytes per policy; rebuilding a layer
/// reuses it). Its bytes are `'static`, so cloning the value onto a response copies two pointers:
/// no allocation, no shared reference count.
///
/// Each item is a limit's name, quota and window in whole seconds, as
/// [`policy_window`](super::limit::policy_window) states them.
pub(crate) fn policy_list_value(items: &[(&str, u64, u64)]) -> &'static PolicyHeader {
    use std::collections::HashMap;
    use std::fmt::Write;
    use std::sync::{Mutex, OnceLock};
    static INTERNED: OnceLock<Mutex<HashMap<String, &'static PolicyHeader>>> = OnceLock::new();
    let mut text = String::with_capacity(32 * items.len());
    for (i, (name, limit, window_secs)) in items.iter().enumerate() {
        if i > 0 {
            text.push_str(", ");
        }
        let _ = write!(text, "\"{name}\";q={limit};w={window_secs}");
    }
    let mut map = INTERNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(text).or_insert_with_key(|text| {
        let text: &'static str = Box::leak(text.clone().into_boxed_str());
        // Names are checked when the layer is built: letters, digits and -_.: only.
        let value = HeaderValue::from_maybe_shared(bytes::Bytes::from_static(text.as_bytes()))
            .expect("policy names are visible ASCII");
        Box::leak(Box::new(PolicyHeader {
            value,
            prebuilt: prebuilt::Prebuilt::default(),
        }))
    })
}

// The two field names as constants: each use is a fresh `HeaderName` over the same `'static` bytes
// (four words written), where `RATELIMIT.clone()` calls through `Bytes`' vtable. The `AtomicPtr`
// clippy sees inside is `Bytes`' own, unused for static bytes; nothing is shared or mutated.
#[allow(clippy::declare_interior_mutable_const)]
const RATELIMIT_POLICY_NAME: HeaderName = HeaderName::from_static("ratelimit-policy");
#[allow(clippy::declare_interior_mutable_const)]
const RATELIMIT_NAME: HeaderName = HeaderName::from_static("ratelimit");

/// Per-request header values are cut from a per-thread buffer of this many bytes: one allocation
/// per about a hundred values instead of one per value (a value keeps its buffer alive until it is
/// dropped, as long as the response it is on).
const ARENA_BYTES: usize = 4096;

/// A small stack buffer for one header value: formatted here, copied once into the arena.
struct ValueBuf {
    bytes: [u8; 128],
    len: usize,
}

impl ValueBuf {
    #[inline]
    fn new() -> Self {
        Self {
            bytes: [0; 128],
            len: 0,
        }
    }

    #[inline]
    fn push(&mut self, s: &[u8]) {
        self.bytes[self.len..self.len + s.len()].copy_from_slice(s);
        self.len += s.len();
    }

    #[inline]
    fn push_u64(&mut self, n: u64) {
        self.push(itoa::Buffer::new().format(n).as_bytes());
    }

    /// The value, cut from this thread's arena (no allocation but one per `ARENA_BYTES`).
    ///
    /// `instructions` bench, `http/rampart_global`, 10,000 calls: a fresh `Vec` and `Bytes` per
    /// value (`HeaderValue::from_bytes`: an allocation, a copy and a free per response) against
    /// the arena's shared buffer (a reference count, no allocation); see BENCHMARKS.md for the
    /// rows.
    fn value(&self) -> HeaderValue {
        use std::cell::RefCell;
        thread_local! {
            static ARENA: RefCell<Option<bytes::BytesMut>> = const { RefCell::new(None) };
        }
        let text = &self.bytes[..self.len];
        let bytes = ARENA.with(|arena| {
            let mut arena = arena.borrow_mut();
            let arena = match &mut *arena {
                Some(a) if a.capacity() - a.len() >= text.len() => a,
                other => other.insert(bytes::BytesMut::with_capacity(ARENA_BYTES)),
            };
            arena.extend_from_slice(text);
            arena.split().freeze()
        });
        HeaderValue::from_maybe_shared(bytes)
            .expect("a checked name and digits are a valid header value")
    }
}

/// The `RateLimit` value `"<name>";r=<remaining>;t=<reset>`, formatted and cut from the arena.
#[cold]
#[inline(never)]
fn rate_limit_value(name: &str, remaining: u32, reset: u64) -> HeaderValue {
    // `"` + name (at most 64, checked at build) + `";r=` + 10 digits + `;t=` + 20 digits < 128.
    let mut buf = ValueBuf::new();
    buf.push(b"\"");
    buf.push(name.as_bytes());
    buf.push(b"\";r=");
    buf.push_u64(u64::from(remaining));
    buf.push(b";t=");
    buf.push_u64(reset);
    buf.value()
}

/// Adds the rate limit fields for `decision` under `policy`. Appends, so stacked limiters each
/// contribute their own list member.
pub(crate) fn write_rate_limit(headers: &mut HeaderMap, policy: &Policy, decision: &Decision) {
    let reset = ceil_secs(decision.reset());
    let remaining = decision.remaining();
    // An empty map gets room for every field at once (rather than growing as they come); a map
    // that has entries has room for a few more already.
    if headers.is_empty() {
        headers.reserve(if policy.legacy_headers { 5 } else { 2 });
    }
    // `'static` bytes: cloning the policy value copies pointers; the names are constants (a copy
    // of four words, where cloning the statics calls through `Bytes`' vtable).
    headers.append(RATELIMIT_POLICY_NAME, policy.header.value.clone());
    let value = match policy.header.prebuilt.get(policy.name, remaining, reset) {
        Some(kept) => kept,
        None => rate_limit_value(policy.name, remaining, reset),
    };
    headers.append(RATELIMIT_NAME, value);
    if policy.legacy_headers {
        write_legacy(headers, decision.limit(), remaining, reset);
    }
}

/// The legacy `X-RateLimit-*` headers (opt-in), out of the default path's way.
#[cold]
#[inline(never)]
fn write_legacy(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: u64) {
    let number = |n: u64| {
        let mut buf = ValueBuf::new();
        buf.push_u64(n);
        buf.value()
    };
    headers.insert(X_RATELIMIT_LIMIT.clone(), number(u64::from(limit)));
    headers.insert(X_RATELIMIT_REMAINING.clone(), number(u64::from(remaining)));
    headers.insert(X_RATELIMIT_RESET.clone(), number(reset));
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_constant_names_are_the_public_ones() {
        assert_eq!(RATELIMIT_NAME, crate::http::RATELIMIT);
        assert_eq!(RATELIMIT_POLICY_NAME, crate::http::RATELIMIT_POLICY);
    }

    /// The fields are the same bytes whether the `RateLimit` value is kept, built and kept now, or
    /// built per response (a policy whose table cannot take it).
    #[test]
    fn kept_and_built_values_are_the_same_bytes() {
        let header = policy_list_value(&[("kept-or-built", 10, 60)]);
        let policy = Policy {
            name: "kept-or-built",
            period: 60_000_000_000,
            legacy_headers: true,
            header,
        };
        for (remaining, reset_ms) in [(9, 6_000), (9, 6_000), (0, 59_001), (3, 1), (3, 1)] {
            let decision = Decision::allowed(10, remaining, Duration::from_millis(reset_ms));
            let mut headers = HeaderMap::new();
            write_rate_limit(&mut headers, &policy, &decision);
            let t = reset_ms.div_ceil(1000);
            let text = format!("\"kept-or-built\";r={remaining};t={t}");
            assert_eq!(headers[&crate::http::RATELIMIT].as_bytes(), text.as_bytes());
            assert_eq!(
                headers[&crate::http::RATELIMIT_POLICY],
                "\"kept-or-built\";q=10;w=60"
            );
            assert_eq!(
                headers[&crate::http::X_RATELIMIT_REMAINING],
                remaining.to_string().as_str()
            );
            assert_eq!(
                headers[&crate::http::X_RATELIMIT_RESET],
                t.to_string().as_str()
            );
            assert_eq!(
                rate_limit_value("kept-or-built", remaining, t).as_bytes(),
                text.as_bytes()
            );
        }
    }
}
