//! The HTTP mode: buffered bodies, `Cache-Control`, `Vary`, `x-cache` and `age`.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::entry::{CacheEntry, Lifetimes};
use super::key::{CacheKey, KeyBuf};
use super::layer::{CacheBuilder, ModeConfig};
use super::mode::{CacheMode, CacheStatus, Captured, RequestPolicy};
use crate::error::ConfigError;
use crate::key::{ExtractKey, KeyError, KeyExtractor};

/// `x-cache`: `HIT`, `MISS` or `STALE`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The default cap on a buffered response body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

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
/// [`CacheHandle::invalidate_prefix`]: super::CacheHandle::invalidate_prefix
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
        key.push(b" ");
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
                key.push(b"\n");
                key.push(name.as_str().as_bytes());
            }
            for value in values {
                key.push(b"\n");
                key.push(name.as_str().as_bytes());
                key.push(b"=");
                key.push(value.as_bytes());
            }
        }
        Ok(key.finish())
    }
}

/// A stored HTTP response: status, version, headers and the whole body.
///
/// Hop-by-hop headers (`connection`, `transfer-encoding`, ...) are not kept. The HTTP mode keeps
/// its own `x-cache` and `age` fields in the map, as placeholders it overwrites on each answer.
/// Cloning it copies the header map and shares the body.
#[derive(Clone, Debug)]
pub struct CachedResponse {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    /// Checked once when made, not on every replay: see [`is_consistent`](Self::is_consistent).
    consistent: bool,
}

/// Headers that describe one connection, not the response, and the cache's own.
fn is_not_stored(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
            | "age"
            | "x-cache"
    )
}

impl CachedResponse {
    /// A stored response (as decoded by a shared store, for example). Hop-by-hop headers and
    /// `age` / `x-cache` are removed from `headers`.
    pub fn new(status: StatusCode, version: Version, mut headers: HeaderMap, body: Bytes) -> Self {
        if headers.keys().any(is_not_stored) {
            let names: Vec<HeaderName> = headers
                .keys()
                .filter(|n| is_not_stored(n))
                .cloned()
                .collect();
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
    fn with_placeholders(mut self, mode: &HttpMode) -> Self {
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

/// The `Cache-Control` directives the cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
}

impl Directives {
    /// Parses every `Cache-Control` field of `headers`. Unknown directives are ignored; a
    /// number that does not parse counts as 0 (the response is then treated as stale at once).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for item in split_list(value.as_bytes()) {
                let (name, arg) = match item.iter().position(|&b| b == b'=') {
                    Some(i) => (trim(&item[..i]), Some(unquote(trim(&item[i + 1..])))),
                    None => (item, None),
                };
                let seconds = || arg.map(parse_seconds).unwrap_or(0);
                let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
                if is("no-store") {
                    d.no_store = true;
                } else if is("no-cache") {
                    d.no_cache = true;
                } else if is("private") {
                    d.private = true;
                } else if is("public") {
                    d.public = true;
                } else if is("must-revalidate") || is("proxy-revalidate") {
                    d.must_revalidate = true;
                } else if is("max-age") {
                    d.max_age.get_or_insert_with(seconds);
                } else if is("s-maxage") {
                    d.s_maxage.get_or_insert_with(seconds);
                } else if is("stale-while-revalidate") {
                    d.stale_while_revalidate.get_or_insert_with(seconds);
                } else if is("stale-if-error") {
                    d.stale_if_error.get_or_insert_with(seconds);
                }
            }
        }
        d
    }
}

/// Splits a comma-separated list, ignoring commas inside double quotes; items are trimmed and
/// empty ones skipped.
fn split_list(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                match b {
                    b'"' => quoted = !quoted,
                    b',' if !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let item = trim(&rest[..end]);
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                &[]
            };
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn unquote(b: &[u8]) -> &[u8] {
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        &b[1..b.len() - 1]
    } else {
        b
    }
}

/// Delta-seconds; too large saturates, anything else that is not digits is 0.
fn parse_seconds(b: &[u8]) -> u64 {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    b.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// `age` values for the first five minutes, made once: cloning one costs a reference count
/// instead of formatting and allocating a new value on every hit.
fn age_value(secs: u64) -> HeaderValue {
    const CACHED: u64 = 300;
    static AGES: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    if secs >= CACHED {
        return HeaderValue::from(secs);
    }
    let ages = AGES.get_or_init(|| (0..CACHED).map(HeaderValue::from).collect());
    ages[secs as usize].clone()
}

type StatusPredicate = dyn Fn(StatusCode, &HeaderMap) -> bool + Send + Sync;

/// The mode for HTTP services; set with [`CacheBuilder::http`]. See the
/// [module documentation](super#http) for the rules it follows.
#[derive(Clone)]
pub struct HttpMode {
    max_body_bytes: usize,
    honor_cache_control: bool,
    request_no_cache: bool,
    cache_authorized: bool,
    x_cache: Option<HeaderName>,
    age: bool,
    cacheable: Option<Arc<StatusPredicate>>,
}

impl fmt::Debug for HttpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMode")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("honor_cache_control", &self.honor_cache_control)
            .field("request_no_cache", &self.request_no_cache)
            .field("cache_authorized", &self.cache_authorized)
            .field("x_cache", &self.x_cache)
            .field("age", &self.age)
            .field("custom_cacheable", &self.cacheable.is_some())
            .finish()
    }
}

impl Default for HttpMode {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpMode {
    /// The defaults: bodies up to 1 MiB, `Cache-Control` honoured, `x-cache` and `age` sent,
    /// 2xx responses (but 206) stored.
    pub fn new() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            honor_cache_control: true,
            request_no_cache: true,
            cache_authorized: false,
            x_cache: Some(X_CACHE.clone()),
            age: true,
            cacheable: None,
        }
    }

    fn is_cacheable_status(&self, status: StatusCode, headers: &HeaderMap) -> bool {
        match &self.cacheable {
            Some(f) => f(status, headers),
            None => status.is_success() && status != StatusCode::PARTIAL_CONTENT,
        }
    }

    fn mark(&self, headers: &mut HeaderMap, status: CacheStatus) {
        if let Some(name) = &self.x_cache {
            headers.insert(name.clone(), HeaderValue::from_static(status.as_str()));
        }
    }

    /// Decides from the status and headers alone: `Err(reason)` when the response may not be
    /// stored, or its lifetimes.
    fn check(
        &self,
        status: StatusCode,
        headers: &HeaderMap,
        defaults: Lifetimes,
        key: &impl KeyExtractor,
    ) -> Result<Lifetimes, &'static str> {
        if !self.is_cacheable_status(status, headers) {
            return Err("status");
        }
        let cc = Directives::parse(headers);
        if cc.no_store {
            return Err("no-store");
        }
        if cc.private {
            return Err("private");
        }
        if cc.no_cache {
            return Err("no-cache");
        }
        if headers.contains_key(header::SET_COOKIE) {
            return Err("set-cookie");
        }
        for vary in headers.get_all(header::VARY) {
            for name in split_list(vary.as_bytes()) {
                if name == b"*" {
                    return Err("vary");
                }
                let covered = std::str::from_utf8(name)
                    .is_ok_and(|n| key.covers_header(&n.to_ascii_lowercase()));
                if !covered {
                    return Err("vary");
                }
            }
        }
        let mut lifetimes = defaults;
        if self.honor_cache_control {
            if let Some(secs) = cc.s_maxage.or(cc.max_age) {
                if secs == 0 {
                    return Err("max-age=0");
                }
                lifetimes.ttl = Duration::from_secs(secs);
            }
            if let Some(secs) = cc.stale_while_revalidate {
                lifetimes.stale_while_revalidate = Duration::from_secs(secs);
            }
            if let Some(secs) = cc.stale_if_error {
                lifetimes.stale_if_error = Duration::from_secs(secs);
            }
            if cc.must_revalidate {
                lifetimes.stale_while_revalidate = Duration::ZERO;
                lifetimes.stale_if_error = Duration::ZERO;
            }
        }
        Ok(lifetimes)
    }
}

impl ModeConfig for HttpMode {
    fn validate(&self, max_bytes: u64) -> Result<(), ConfigError> {
        if self.max_body_bytes == 0 {
            return Err(ConfigError::new(
                "max_body_bytes",
                "must be at least 1 byte (got 0); bodies larger than it are passed through uncached",
            ));
        }
        if self.max_body_bytes as u64 > max_bytes {
            return Err(ConfigError::new(
                "max_body_bytes",
                format!(
                    "a body cap of {} bytes is larger than the whole cache ({max_bytes} bytes); \
                     lower it or raise max_bytes",
                    self.max_body_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl<X, B> CacheBuilder<X, B, HttpMode> {
    /// The largest body buffered to be stored (default 1 MiB). Larger responses, by their
    /// `content-length` or as they stream, are passed through uncached; nothing is buffered beyond
    /// this. The leader of a miss reads the body before answering.
    pub fn max_body_bytes(self, bytes: usize) -> Self {
        self.map_mode(|mut m| {
            m.max_body_bytes = bytes;
            m
        })
    }

    /// Take the TTL from the response's `s-maxage` or `max-age` (and the stale windows from its
    /// `stale-while-revalidate` / `stale-if-error`, RFC 5861) when it has them (default on). With
    /// it off, the layer's settings always apply. `no-store`, `private` and `no-cache` are
    /// honoured either way.
    pub fn honor_cache_control(self, on: bool) -> Self {
        self.map_mode(|mut m| {
            m.honor_cache_control = on;
            m
        })
    }

    /// Let a request's `Cache-Control: no-cache` (or `max-age=0`, or `Pragma: no-cache`) skip the
    /// cache and refresh the entry (default on). Such requests still share one call per key.
    pub fn request_no_cache(self, on: bool) -> Self {
        self.map_mode(|mut m| {
            m.request_no_cache = on;
            m
        })
    }

    /// Use the cache for requests with an `Authorization` header too (default off: they bypass it,
    /// as RFC 9111 asks of shared caches). Only turn this on with a key that includes the header
    /// (`HttpKey::new().header(AUTHORIZATION)`) or for responses that do not depend on who asks.
    pub fn cache_authorized(self, on: bool) -> Self {
        self.map_mode(|mut m| {
            m.cache_authorized = on;
            m
        })
    }

    /// Send `x-cache: HIT | MISS | STALE` (default on).
    pub fn x_cache_header(self, on: bool) -> Self {
        self.map_mode(|mut m| {
            m.x_cache = on.then(|| X_CACHE.clone());
            m
        })
    }

    /// Send `age` (seconds since the entry was stored) on hits and stale answers (default on).
    pub fn age_header(self, on: bool) -> Self {
        self.map_mode(|mut m| {
            m.age = on;
            m
        })
    }

    /// Which responses may be stored, by status and headers (default: 2xx but 206). The safety
    /// rules apply on top: `no-store`, `private`, `no-cache`, `Set-Cookie` and an uncovered `Vary`
    /// are never stored.
    pub fn cacheable<F>(self, f: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> bool + Send + Sync + 'static,
    {
        self.map_mode(|mut m| {
            m.cacheable = Some(Arc::new(f));
            m
        })
    }
}

impl<ReqB, B, E> CacheMode<Request<ReqB>, Response<B>, E> for HttpMode
where
    B: Body<Data = Bytes>,
{
    type Stored = CachedResponse;
    type Response = Response<CacheBody<B>>;
    type Capture = HttpCapture<B>;

    fn request_policy(&self, req: &Request<ReqB>) -> RequestPolicy {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return RequestPolicy::Bypass;
        }
        let headers = req.headers();
        if (!self.cache_authorized && headers.contains_key(header::AUTHORIZATION))
            || headers.contains_key(header::RANGE)
        {
            return RequestPolicy::Bypass;
        }
        if !headers.contains_key(header::CACHE_CONTROL) {
            if self.request_no_cache
                && headers
                    .get_all(header::PRAGMA)
                    .iter()
                    .any(|v| split_list(v.as_bytes()).any(|d| d.eq_ignore_ascii_case(b"no-cache")))
            {
                return RequestPolicy::Refresh;
            }
            return RequestPolicy::Lookup;
        }
        let cc = Directives::parse(headers);
        if cc.no_store {
            RequestPolicy::Bypass
        } else if self.request_no_cache && (cc.no_cache || cc.max_age == Some(0)) {
            RequestPolicy::Refresh
        } else {
            RequestPolicy::Lookup
        }
    }

    fn capture<X: KeyExtractor>(
        &self,
        res: Response<B>,
        defaults: Lifetimes,
        key: &X,
    ) -> Self::Capture {
        let (parts, body) = res.into_parts();
        let lifetimes = match self.check(parts.status, &parts.headers, defaults, key) {
            Ok(lifetimes) => lifetimes,
            Err(reason) => return HttpCapture::pass(self, parts, body, reason),
        };
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
            .max(body.size_hint().lower());
        if declared > self.max_body_bytes as u64 {
            return HttpCapture::pass(self, parts, body, "too large");
        }
        HttpCapture {
            state: Some(CaptureState::Reading {
                parts,
                body: Box::pin(body),
                chunks: Vec::new(),
                len: 0,
                lifetimes,
                mode: self.clone(),
            }),
        }
    }

    fn replay(
        &self,
        entry: &CacheEntry<CachedResponse>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<Self::Response> {
        let stored = entry.value();
        if !stored.consistent {
            return None;
        }
        let mut res = Response::new(CacheBody::full(stored.body.clone()));
        *res.status_mut() = stored.status;
        *res.version_mut() = stored.version;
        *res.headers_mut() = stored.headers.clone();
        let headers = res.headers_mut();
        self.mark(headers, status);
        if self.age {
            if status == CacheStatus::Miss {
                headers.remove(header::AGE);
            } else {
                headers.insert(header::AGE, age_value(entry.age(now).as_secs()));
            }
        }
        Some(res)
    }

    fn pass(&self, res: Response<B>, status: Option<CacheStatus>) -> Self::Response {
        let mut res = res.map(CacheBody::stream);
        if let Some(status) = status {
            self.mark(res.headers_mut(), status);
        }
        res
    }

    fn is_failure(&self, res: &Response<B>) -> bool {
        res.status().is_server_error()
    }
}

pin_project! {
    /// The body of responses from an HTTP-mode cache: a stored body replayed from memory, or the
    /// inner service's body streaming through (after whatever part of it was read while deciding
    /// whether it could be stored).
    pub struct CacheBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B, B::Error>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, E> {
        Full { data: Option<Bytes> },
        Stream { #[pin] body: B },
        Resumed {
            prefix: VecDeque<Frame<Bytes>>,
            error: Option<E>,
            rest: Pin<Box<B>>,
        },
    }
}

impl<B: Body> CacheBody<B> {
    /// A body of `data`, already in memory.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The inner service's body, streamed through.
    pub fn stream(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    fn resume(prefix: VecDeque<Frame<Bytes>>, error: Option<B::Error>, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Resumed {
                prefix,
                error,
                rest,
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { body } => body.poll_frame(cx),
            KindProj::Resumed {
                prefix,
                error,
                rest,
            } => {
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if let Some(e) = error.take() {
                    return Poll::Ready(Some(Err(e)));
                }
                rest.as_mut().poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Resumed {
                prefix,
                error,
                rest,
            } => prefix.is_empty() && error.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { body } => body.size_hint(),
            Kind::Resumed { prefix, rest, .. } => {
                let buffered: u64 = prefix
                    .iter()
                    .filter_map(|f| f.data_ref())
                    .map(|d| d.len() as u64)
                    .sum();
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + buffered);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

impl<B: Body> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Full { .. } => "full",
            Kind::Stream { .. } => "stream",
            Kind::Resumed { .. } => "resumed",
        };
        f.debug_struct("CacheBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Reads an HTTP response's body, up to the cap, to store it.
pub struct HttpCapture<B: Body> {
    state: Option<CaptureState<B>>,
}

enum CaptureState<B: Body> {
    /// Decided from the head alone: not stored.
    Pass {
        parts: http::response::Parts,
        body: B,
        reason: &'static str,
        mode: HttpMode,
    },
    Reading {
        parts: http::response::Parts,
        body: Pin<Box<B>>,
        chunks: Vec<Bytes>,
        len: usize,
        lifetimes: Lifetimes,
        mode: HttpMode,
    },
}

// The body is only ever polled behind its own `Pin<Box<_>>` (or moved, unpolled, out of `Pass`),
// so the capture itself may move.
impl<B: Body> Unpin for HttpCapture<B> {}

impl<B: Body> HttpCapture<B> {
    fn pass(mode: &HttpMode, parts: http::response::Parts, body: B, reason: &'static str) -> Self {
        Self {
            state: Some(CaptureState::Pass {
                parts,
                body,
                reason,
                mode: mode.clone(),
            }),
        }
    }
}

impl<B: Body> fmt::Debug for HttpCapture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            Some(CaptureState::Pass { .. }) => "pass",
            Some(CaptureState::Reading { .. }) => "reading",
            None => "done",
        };
        f.debug_struct("HttpCapture")
            .field("state", &state)
            .finish()
    }
}

impl<B> std::future::Future for HttpCapture<B>
where
    B: Body<Data = Bytes>,
{
    type Output = Captured<CachedResponse, Response<CacheBody<B>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = self
            .state
            .as_mut()
            .expect("capture polled after completion");
        let CaptureState::Reading {
            body,
            chunks,
            len,
            mode,
            ..
        } = state
        else {
            let Some(CaptureState::Pass {
                parts,
                body,
                reason,
                mode,
            }) = self.state.take()
            else {
                unreachable!("matched above")
            };
            let mut response = Response::from_parts(parts, CacheBody::stream(body));
            mode.mark(response.headers_mut(), CacheStatus::Miss);
            return Poll::Ready(Captured::Pass { response, reason });
        };
        let max = mode.max_body_bytes;
        // Not storable after all: answer with what was read so far, then the rest of the body.
        let (reason, last, error) = loop {
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if *len + data.len() > max => {
                        break ("too large", Some(Frame::data(data)), None);
                    }
                    Ok(data) => {
                        *len += data.len();
                        if !data.is_empty() {
                            chunks.push(data);
                        }
                    }
                    Err(trailers) => break ("trailers", Some(trailers), None),
                },
                Some(Err(e)) => break ("body error", None, Some(e)),
                None => {
                    let Some(CaptureState::Reading {
                        parts,
                        mut chunks,
                        len,
                        lifetimes,
                        mode,
                        ..
                    }) = self.state.take()
                    else {
                        unreachable!("reading")
                    };
                    let body = match chunks.len() {
                        0 => Bytes::new(),
                        1 => chunks.pop().expect("one chunk"),
                        _ => {
                            let mut all = BytesMut::with_capacity(len);
                            for c in chunks {
                                all.extend_from_slice(&c);
                            }
                            all.freeze()
                        }
                    };
                    let stored =
                        CachedResponse::new(parts.status, parts.version, parts.headers, body)
                            .with_placeholders(&mode);
                    let mut response = Response::new(CacheBody::full(stored.body.clone()));
                    *response.status_mut() = stored.status;
                    *response.version_mut() = stored.version;
                    *response.headers_mut() = stored.headers.clone();
                    *response.extensions_mut() = parts.extensions;
                    mode.mark(response.headers_mut(), CacheStatus::Miss);
                    response.headers_mut().remove(header::AGE);
                    return Poll::Ready(Captured::Store {
                        weight: stored.weight(),
                        value: stored,
                        lifetimes,
                        response,
                    });
                }
            }
        };
        let Some(CaptureState::Reading {
            parts,
            body,
            chunks,
            mode,
            ..
        }) = self.state.take()
        else {
            unreachable!("reading")
        };
        let mut prefix: VecDeque<Frame<Bytes>> = chunks.into_iter().map(Frame::data).collect();
        prefix.extend(last);
        let mut response = Response::from_parts(parts, CacheBody::resume(prefix, error, body));
        mode.mark(response.headers_mut(), CacheStatus::Miss);
        Poll::Ready(Captured::Pass { response, reason })
    }
}
