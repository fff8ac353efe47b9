//! `HttpKey`: the default key of the HTTP cache, method and URI plus chosen headers.

use http::Request;
use http::header::HeaderName;

use crate::cache::key::{CacheKey, KeyBuf};
use crate::key::{ExtractKey, KeyError, KeyExtractor};

/// Keys HTTP requests by method and URI path and query (`"GET /api/metrics/summary?type=cpu"`),
/// plus the values of chosen request headers.
///
/// - The query string is taken as sent: `?a=1&b=2` and `?b=2&a=1` are different entries.
/// - The URI's scheme and authority are left out by default, so a server's keys are the same
///   over HTTP/1.1 (whose request target is a path) and HTTP/2 (whose URI has both). For a
///   client, or a server answering for several hosts, add the host with
///   [`with_authority`](Self::with_authority).
/// - Under axum, the path is the one the client sent ([`OriginalUri`]), also inside a
///   [`Router::nest`], which strips its prefix from the request's own URI: two nested routers
///   sharing a layer (or a Redis backend) do not share entries, and
///   [`CacheHandle::invalidate_prefix`] takes the path as clients see it.
/// - Responses that `Vary` on a header are cached only if the key includes it
///   ([`header`](Self::header)); `Vary: *` never is.
///
/// Keys look like `GET /path?query` followed, for each chosen header, by `\nname=value` (or
/// `\nname` when the request does not have it), so [`CacheHandle::invalidate_prefix`] with
/// `"GET /path"` reaches every variant.
///
/// [`CacheHandle::invalidate_prefix`]: crate::cache::CacheHandle::invalidate_prefix
/// [`OriginalUri`]: https://docs.rs/axum/0.8/axum/extract/struct.OriginalUri.html
/// [`Router::nest`]: https://docs.rs/axum/0.8/axum/struct.Router.html#method.nest
#[derive(Clone, Debug, Default)]
pub struct HttpKey {
    headers: Vec<HeaderName>,
    authority: bool,
}

impl HttpKey {
    /// Method, path and query.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also keys on the values of request header `name` (for example `accept` when the response
    /// depends on content negotiation).
    #[must_use]
    pub fn header(mut self, name: HeaderName) -> Self {
        if !self.headers.contains(&name) {
            self.headers.push(name);
        }
        self
    }

    /// Also keys on the host the request is for, lowercased: the URI's authority when it has one
    /// (a client's requests, HTTP/2's `:authority`, an HTTP/1.1 request in absolute form),
    /// otherwise the `Host` header (an HTTP/1.1 request to a server), in one form either way:
    /// `GET //api.example.com/path`. The scheme is not part of the key (an HTTP/1.1 request has
    /// none to give). A `Host` that is not a host (`a.example/admin`) gives no key: the request
    /// is not cached. A request with neither is keyed without a host.
    #[must_use]
    pub fn with_authority(mut self) -> Self {
        self.authority = true;
        self
    }
}

impl KeyExtractor for HttpKey {
    type Key = CacheKey;

    fn covers_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.as_str() == name)
    }

    /// The request target (with the host when keyed on it): what follows the method, up to the
    /// headers' fields.
    fn resource_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let (_, rest) = key.split_at(key.iter().position(|&b| b == b' ')? + 1);
        let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        Some(&rest[..end])
    }
}

impl<B> ExtractKey<Request<B>> for HttpKey {
    #[inline]
    fn extract(&self, req: &Request<B>) -> Result<CacheKey, KeyError> {
        let mut key = KeyBuf::new();
        key.push(req.method().as_str().as_bytes());
        key.push_byte(b' ');
        let uri = original_uri(req);
        if self.authority {
            // The URI's authority, else (RFC 9112 §3.2: an origin-form request names its host in
            // `Host` alone) the `Host` header's, which must parse as one: raw, a `Host:
            // a.example/admin` would write the key of another path. Lowercase, and in one form
            // whichever carried it (`//host`: an HTTP/1.1 request has no scheme to write), so
            // HTTP/1.1 and HTTP/2 share entries and one prefix invalidates both.
            let authority = match uri.authority() {
                Some(authority) => Some(std::borrow::Cow::Borrowed(authority)),
                None => match req.headers().get(http::header::HOST) {
                    Some(host) => Some(std::borrow::Cow::Owned(
                        http::uri::Authority::try_from(host.as_bytes())
                            .map_err(|_| KeyError::new("the host header is not a host"))?,
                    )),
                    None => None,
                },
            };
            if let Some(authority) = authority {
                // No userinfo (`user:pass@`): it does not name another resource, and keys reach logs.
                let host = authority.as_str();
                let host = host.rsplit('@').next().unwrap_or(host);
                key.push(b"//");
                for b in host.bytes() {
                    key.push_byte(b.to_ascii_lowercase());
                }
            }
        }
        match uri.path_and_query() {
            Some(pq) => key.push(pq.as_str().as_bytes()),
            None => key.push(b"/"),
        }
        for name in &self.headers {
            let mut values = req.headers().get_all(name).iter().peekable();
            if values.peek().is_none() {
                key.push_byte(b'\n');
                key.push(name.as_str().as_bytes());
            }
            for value in values {
                key.push_byte(b'\n');
                key.push(name.as_str().as_bytes());
                key.push_byte(b'=');
                key.push(value.as_bytes());
            }
        }
        Ok(key.finish())
    }
}

/// The URI the client sent: axum's [`OriginalUri`](axum::extract::OriginalUri) where a router
/// recorded it (a nested router's own URI has lost its prefix), else the request's.
#[inline]
fn original_uri<B>(req: &Request<B>) -> &http::Uri {
    #[cfg(feature = "axum")]
    if let Some(original) = req.extensions().get::<axum::extract::OriginalUri>() {
        return &original.0;
    }
    req.uri()
}
