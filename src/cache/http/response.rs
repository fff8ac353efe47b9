//! `CachedResponse`: what the HTTP cache stores (status, version, headers, whole body).

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Version};

use super::mode::HttpMode;

/// A stored HTTP response: status, version, headers and the whole body.
///
/// Hop-by-hop headers (`connection`, `transfer-encoding`, ...) are not kept. The HTTP mode keeps
/// its own `x-cache` and `age` fields in the map, as placeholders it overwrites on each answer.
/// Cloning it copies the header map and shares the body.
#[derive(Clone, Debug)]
pub struct CachedResponse {
    pub(super) status: StatusCode,
    pub(super) version: Version,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// Checked once when made, not on every replay: see [`is_consistent`](Self::is_consistent).
    pub(super) consistent: bool,
    /// Whether the map has both the `x-cache` and the `age` placeholder whatever the mode sends
    /// ([`with_all_placeholders`](Self::with_all_placeholders)): a replay removes those its mode
    /// does not send.
    pub(super) all_placeholders: bool,
}

/// Headers that describe one connection, not the response, those a cache must not store (RFC
/// 9111 §3.1: `Proxy-Authenticate`, `Proxy-Authentication-Info`), and the cache's own.
fn is_not_stored(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authentication-info"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "age"
            | "x-cache"
    )
}

/// Whether `name` is one of the fields `headers`' `Connection` lists: fields for that connection
/// only (RFC 9110 §7.6.1), not stored with the response.
fn is_named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|option| {
            option
                .trim_ascii()
                .eq_ignore_ascii_case(name.as_str().as_bytes())
        })
}

impl CachedResponse {
    /// A stored response (as decoded by a shared store, for example). Hop-by-hop headers (and
    /// those `Connection` names), `Proxy-Authenticate`, `Proxy-Authentication-Info` and `age` /
    /// `x-cache` are removed from `headers`.
    pub fn new(status: StatusCode, version: Version, mut headers: HeaderMap, body: Bytes) -> Self {
        // (`Connection` is one of those fields: the fields it names are looked for only then.)
        if headers.keys().any(is_not_stored) {
            let connection = headers.contains_key(http::header::CONNECTION);
            let dropped = |n: &HeaderName| {
                is_not_stored(n) || (connection && is_named_by_connection(&headers, n))
            };
            let names: Vec<HeaderName> = headers.keys().filter(|n| dropped(n)).cloned().collect();
            for name in names {
                headers.remove(name);
            }
        }
        let mut stored = Self {
            status,
            version,
            headers,
            body,
            consistent: false,
            all_placeholders: false,
        };
        stored.consistent = stored.is_consistent();
        stored
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Bytes taken by the response: the body, the header map's tables (sized by its capacity,
    /// as allocated) and the bytes of header names and values, and the struct itself. It errs
    /// high (names and values that are static strings are counted as if allocated), so that the
    /// store's byte bound holds for the memory really used (the `cache_flood` test checks it).
    pub fn weight(&self) -> usize {
        // A header map slot: its entry (hash, name, value, links: 104 bytes on 64-bit targets)
        // and its share of the index (4 bytes per position, a third more positions than slots).
        const SLOT: usize = 112;
        // A second value for a name: the value and two links.
        const EXTRA_VALUE: usize = 72;
        // The reference-count block a body gets once it is shared (replayed).
        const SHARED_BODY: usize = 32;
        let text: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len())
            .sum();
        let extra_values = self.headers.len() - self.headers.keys_len();
        std::mem::size_of::<Self>()
            + self.body.len()
            + SHARED_BODY
            + self.headers.capacity() * SLOT
            + extra_values * EXTRA_VALUE
            + text
    }

    /// Whether it can be replayed as it is: a `content-length` field, if any, matches the body
    /// (unless the body is empty, as for `HEAD`). Checked once, when it is made; an entry that is
    /// not replayable is treated as a miss.
    pub fn is_replayable(&self) -> bool {
        self.consistent
    }

    /// Adds the `x-cache` and `age` fields the mode will set on each answer, so that replaying
    /// replaces values in a clone of this map instead of growing it (a clone has no spare room).
    pub(super) fn with_placeholders(mut self, mode: &HttpMode) -> Self {
        if let Some(name) = &mode.x_cache {
            self.headers
                .insert(name.clone(), HeaderValue::from_static("HIT"));
        }
        if mode.age {
            self.headers
                .insert(header::AGE, HeaderValue::from_static("0"));
        }
        self
    }

    /// Adds both placeholders, `x-cache` and `age`, for a layer whose mode is not known here (an
    /// entry decoded by a shared store): its replay sets them in place, or removes those its mode
    /// does not send.
    #[cfg(feature = "redis")]
    pub(crate) fn with_all_placeholders(mut self) -> Self {
        self.headers
            .insert(super::X_CACHE.clone(), HeaderValue::from_static("HIT"));
        self.headers
            .insert(header::AGE, HeaderValue::from_static("0"));
        self.all_placeholders = true;
        self
    }

    /// Whether the stored data can be replayed: a `content-length` must match the body (unless
    /// the body is empty, as for `HEAD`).
    fn is_consistent(&self) -> bool {
        if self.body.is_empty() {
            return true;
        }
        let mut lengths = self.headers.get_all(header::CONTENT_LENGTH).iter();
        match (lengths.next(), lengths.next()) {
            (None, _) => true,
            (Some(len), None) => {
                len.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok())
                    == Some(self.body.len() as u64)
            }
            (Some(_), Some(_)) => false,
        }
    }
}
