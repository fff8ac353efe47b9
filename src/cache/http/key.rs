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
///   client, or a server answering for several hosts, add them with
///   [`with_authority`](Self::with_authority) (or key on the `host` header).
/// - Responses that `Vary` on a header are cached only if the key includes it
///   ([`header`](Self::header)); `Vary: *` never is.
///
/// Keys look like `GET /path?query` followed, for each chosen header, by `\nname=value` (or
/// `\nname` when the request does not have it), so [`CacheHandle::invalidate_prefix`] with
/// `"GET /path"` reaches every variant.
///
/// [`CacheHandle::invalidate_prefix`]: crate::cache::CacheHandle::invalidate_prefix
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

    /// Also keys on the URI's scheme and authority, when it has them (as a client's requests
    /// do): `GET https://api.example.com/path`.
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
}

impl<B> ExtractKey<Request<B>> for HttpKey {
    #[inline]
    fn extract(&self, req: &Request<B>) -> Result<CacheKey, KeyError> {
        let mut key = KeyBuf::new();
        key.push(req.method().as_str().as_bytes());
        key.push_byte(b' ');
        let uri = req.uri();
        if self.authority
            && let Some(authority) = uri.authority()
        {
            key.push(uri.scheme_str().unwrap_or("http").as_bytes());
            key.push(b"://");
            key.push(authority.as_str().as_bytes());
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
