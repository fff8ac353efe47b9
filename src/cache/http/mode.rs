//! `HttpMode`: its settings, the builder's HTTP setters, and the rules it applies to requests and
//! responses (what is looked up, what is stored, how a stored response is replayed).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use tokio::time::Instant;

use crate::cache::entry::{CacheEntry, Lifetimes};
use crate::cache::layer::{CacheBuilder, ModeConfig};
use crate::cache::mode::Validators;
use crate::cache::mode::{CacheMode, CacheStatus, RequestPolicy};
use crate::error::ConfigError;
use crate::key::KeyExtractor;

use super::body::{CacheBody, CaptureState, HttpCapture};
use super::directives::{Directives, age_value, split_list};
use super::response::CachedResponse;
use super::{DEFAULT_MAX_BODY_BYTES, X_CACHE};

type StatusPredicate = dyn Fn(StatusCode, &HeaderMap) -> bool + Send + Sync;

/// The mode for HTTP services; set with [`CacheBuilder::http`]. See the
/// [module documentation](crate::cache#http) for the rules it follows.
#[derive(Clone)]
pub struct HttpMode {
    pub(super) max_body_bytes: usize,
    honor_cache_control: bool,
    request_no_cache: bool,
    cache_authorized: bool,
    invalidate_on_write: bool,
    pub(super) x_cache: Option<HeaderName>,
    pub(super) age: bool,
    cacheable: Option<Arc<StatusPredicate>>,
}

impl fmt::Debug for HttpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMode")
            .field("max_body_bytes", &self.max_body_bytes)
            .field("honor_cache_control", &self.honor_cache_control)
            .field("request_no_cache", &self.request_no_cache)
            .field("cache_authorized", &self.cache_authorized)
            .field("invalidate_on_write", &self.invalidate_on_write)
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
    /// 200, 203 and 204 responses stored, and other 2xx but 206 when they carry `max-age`,
    /// `s-maxage` or `Expires`.
    pub fn new() -> Self {
        Self {
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            honor_cache_control: true,
            request_no_cache: true,
            cache_authorized: false,
            invalidate_on_write: true,
            x_cache: Some(X_CACHE.clone()),
            age: true,
            cacheable: None,
        }
    }

    /// Whether `status` may be stored: the app's rule, or by default the 2xx statuses a cache
    /// may store without being told how long they stay fresh (RFC 9110 §15.1: 200, 203, 204;
    /// 206 is a range, never stored here) and the other 2xx when the origin says (`explicit`:
    /// a `max-age`, `s-maxage` or future `Expires` that is honoured). A `202 Accepted` for a job still running, or a
    /// `201 Created`, is not served again for the layer's TTL.
    fn is_cacheable_status(&self, status: StatusCode, headers: &HeaderMap, explicit: bool) -> bool {
        match &self.cacheable {
            Some(f) => f(status, headers),
            None => {
                matches!(status.as_u16(), 200 | 203 | 204)
                    || (explicit && status.is_success() && status != StatusCode::PARTIAL_CONTENT)
            }
        }
    }

    pub(super) fn mark(&self, headers: &mut HeaderMap, status: CacheStatus) {
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
        let cc = Directives::parse(headers);
        let max_age = cc.s_maxage.or(cc.max_age);
        // `Expires` counts only where no `max-age` or `s-maxage` does (RFC 9111 §5.3).
        let expires = match (self.honor_cache_control, max_age) {
            (true, None) => expires_in(headers),
            _ => None,
        };
        let explicit = self.honor_cache_control && (max_age.is_some() || expires.is_some());
        if !self.is_cacheable_status(status, headers, explicit) {
            return Err("status");
        }
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
            if let Some(secs) = max_age {
                if secs == 0 {
                    return Err("max-age=0");
                }
                lifetimes.ttl = Duration::from_secs(secs);
            }
            // An `Expires` counted from now (no `Date`) is already what is left of the response's
            // life: its lifetime is that plus its `Age`, which is not taken off it twice.
            let mut aged = true;
            match expires {
                Some(Some((ttl, dated))) => {
                    lifetimes.ttl = ttl;
                    aged = dated;
                }
                Some(None) => return Err("expires"),
                None => {}
            }
            // `s-maxage` carries `proxy-revalidate`'s meaning for a shared cache (RFC 9111
            // §5.2.2.10): no stale answers from the layer's own windows. The origin's own
            // `stale-while-revalidate` / `stale-if-error` (RFC 5861) still apply: it asked for
            // them (`s-maxage=1, stale-while-revalidate=59`, as CDNs read it).
            if cc.s_maxage.is_some() {
                lifetimes.stale_while_revalidate = Duration::ZERO;
                lifetimes.stale_if_error = Duration::ZERO;
            }
            if let Some(secs) = cc.stale_while_revalidate {
                lifetimes.stale_while_revalidate = Duration::from_secs(secs);
            }
            if let Some(secs) = cc.stale_if_error {
                lifetimes.stale_if_error = Duration::from_secs(secs);
            }
            // A response a cache upstream has kept for a while is that much older (RFC 9111
            // §4.2.3): its freshness counts from when it was made, and its `Age` on replay
            // includes the time upstream. One already past its lifetime is not stored.
            if let Some(age) = origin_age(headers) {
                if !aged {
                    lifetimes.ttl = lifetimes.ttl.saturating_add(age);
                }
                if age >= lifetimes.ttl {
                    return Err("age");
                }
                lifetimes.age = age;
            }
            // `must-revalidate` / `proxy-revalidate`: no stale answers at all.
            if cc.must_revalidate {
                lifetimes.stale_while_revalidate = Duration::ZERO;
                lifetimes.stale_if_error = Duration::ZERO;
            }
        }
        Ok(lifetimes)
    }
}

/// How long a response's `Expires` keeps it fresh (RFC 9111 §5.3): `None` without the field,
/// `Some(None)` when it is already expired: a date not after the response's `Date` (or now,
/// without one), or a value that is not a date (`Expires: 0` says "expired" that way), which a
/// cache must treat as in the past.
///
/// With the TTL, whether it counts from the response's `Date` (`false`: from now).
fn expires_in(headers: &HeaderMap) -> Option<Option<(Duration, bool)>> {
    let expires = headers.get(header::EXPIRES)?;
    let date = |v: &HeaderValue| {
        v.to_str()
            .ok()
            .and_then(|s| httpdate::parse_http_date(s).ok())
    };
    let Some(at) = date(expires) else {
        return Some(None);
    };
    let dated = headers.get(header::DATE).and_then(date);
    let base = dated.unwrap_or_else(std::time::SystemTime::now);
    Some(
        at.duration_since(base)
            .ok()
            .filter(|d| !d.is_zero())
            .map(|ttl| (ttl, dated.is_some())),
    )
}

/// A response's `Age` (RFC 9111 §5.1): its first member, in seconds; `None` without the field
/// or when it is not a number of seconds (the RFC has a cache ignore it then).
fn origin_age(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::AGE)?.as_bytes();
    let first = value.split(|&b| b == b',').next()?.trim_ascii();
    if first.is_empty() || !first.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Digits only: a value too large for a u64 is more than 584 billion years.
    let secs = std::str::from_utf8(first).ok()?.parse().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs))
}

/// Which of the fields a request's policy depends on it has.
#[derive(Default)]
struct RequestFields {
    authorization: bool,
    range: bool,
    cache_control: bool,
    pragma: bool,
    /// `If-None-Match` or `If-Modified-Since`.
    conditional: bool,
    /// `If-Match` or `If-Unmodified-Since`: preconditions the origin evaluates (a `412`).
    precondition: bool,
}

impl RequestFields {
    /// Requests have few fields: one pass comparing names (standard names compare as small
    /// integers) rather than four lookups, each hashing a name (`contains_key` and `get_all`:
    /// about 230 instructions per request with one field, in the `instructions` bench's
    /// `redis64/rampart_cache_hit` row). A request with many fields is looked up by name.
    #[inline]
    fn of(headers: &HeaderMap) -> Self {
        let mut seen = Self::default();
        if headers.keys_len() > 8 {
            seen.authorization = headers.contains_key(header::AUTHORIZATION);
            seen.range = headers.contains_key(header::RANGE);
            seen.cache_control = headers.contains_key(header::CACHE_CONTROL);
            seen.pragma = headers.contains_key(header::PRAGMA);
            seen.conditional = headers.contains_key(header::IF_NONE_MATCH)
                || headers.contains_key(header::IF_MODIFIED_SINCE);
            seen.precondition = headers.contains_key(header::IF_MATCH)
                || headers.contains_key(header::IF_UNMODIFIED_SINCE);
            return seen;
        }
        for name in headers.keys() {
            if *name == header::AUTHORIZATION {
                seen.authorization = true;
            } else if *name == header::RANGE {
                seen.range = true;
            } else if *name == header::CACHE_CONTROL {
                seen.cache_control = true;
            } else if *name == header::PRAGMA {
                seen.pragma = true;
            } else if *name == header::IF_NONE_MATCH || *name == header::IF_MODIFIED_SINCE {
                seen.conditional = true;
            } else if *name == header::IF_MATCH || *name == header::IF_UNMODIFIED_SINCE {
                seen.precondition = true;
            }
        }
        seen
    }
}

/// Sets the placeholder fields of a replayed map, `x-cache` (`name`) and `age`, to their values,
/// in place: the stored map has one value for each (see `CachedResponse::with_placeholders`);
/// one missing is inserted.
///
/// In place, because `HeaderMap::insert` on the clone of a stored map is costly: a new field is
/// pushed onto entries a clone has no spare room for (a reallocation), and even a replacement
/// first makes room for one more field, which regrows and rehashes a map at its load limit. On
/// the `instructions` bench's `redis64/rampart_cache_hit` row (`INSTRUCTIONS_ONLY=1
/// INSTRUCTIONS_CALLS=2000 cargo bench --bench instructions --all-features -- redis64/`) the two
/// inserts were about 870 instructions per hit, two lookups by name in place 250, and this one
/// pass over the fields (names compared, none hashed) fewer still: see BENCHMARKS.md's Redis cache rows.
#[inline]
fn set_placeholders(
    headers: &mut HeaderMap,
    mut x_cache: Option<(&HeaderName, HeaderValue)>,
    mut age: Option<HeaderValue>,
) {
    for (name, value) in headers.iter_mut() {
        if *name == header::AGE {
            if let Some(v) = age.take() {
                *value = v;
            }
        } else if let Some((x, _)) = &x_cache
            && *name == **x
        {
            *value = x_cache.take().expect("checked").1;
        }
        if x_cache.is_none() && age.is_none() {
            return;
        }
    }
    if let Some((name, v)) = x_cache {
        headers.insert(name.clone(), v);
    }
    if let Some(v) = age {
        headers.insert(header::AGE, v);
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

    fn max_entry_bytes(&self) -> Option<u64> {
        Some(self.max_body_bytes as u64)
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
    /// cache and refresh the entry, and its `max-age=N` and `min-fresh=N` refresh a stored answer
    /// older, or fresh for less, than it accepts (default on). Such requests still share one call
    /// per key. Off, clients cannot make the origin work; `only-if-cached` (answered from the
    /// cache or with a `504`) holds either way.
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

    /// Invalidate a resource's entries when a request that may change it succeeds (default on,
    /// as RFC 9111 §4.4 requires of caches): a request with any method but `GET`, `HEAD`,
    /// `OPTIONS`, `TRACE` and `CONNECT` answered with a 2xx or 3xx status invalidates the `GET` and `HEAD`
    /// entries of its target, every variant (with [`HttpKey`](crate::cache::HttpKey), or a key
    /// extractor that names the resource: [`KeyExtractor::resource_of`]), in this process and,
    /// with a shared store, in Redis, before the response is passed on. When the store fails to
    /// invalidate (Redis down), the response is still passed on (the write happened) and the
    /// failure reported as a `StoreFailed` event with `op` `invalidate`; entries of other URIs
    /// the write changed (a collection, `Location`) are the app's to invalidate, with a
    /// [`CacheHandle`](crate::cache::CacheHandle).
    pub fn invalidate_on_write(self, on: bool) -> Self {
        self.map_mode(|mut m| {
            m.invalidate_on_write = on;
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

    /// Which responses may be stored, by status and headers (default: 200, 203 and 204, and the
    /// other 2xx but 206 when they carry `max-age`, `s-maxage` or `Expires` and `Cache-Control`
    /// is honoured). The safety rules apply on top: `no-store`, `private`, `no-cache`, `Set-Cookie` and an uncovered `Vary`
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
            // Safe methods change nothing; `CONNECT` names a host, not a resource.
            let writes = !matches!(
                *req.method(),
                Method::OPTIONS | Method::TRACE | Method::CONNECT
            );
            return if self.invalidate_on_write && writes {
                RequestPolicy::Invalidate
            } else {
                RequestPolicy::Bypass
            };
        }
        let headers = req.headers();
        let seen = RequestFields::of(headers);
        if (!self.cache_authorized && seen.authorization) || seen.range || seen.precondition {
            return RequestPolicy::Bypass;
        }
        let lookup = if seen.conditional {
            RequestPolicy::Conditional
        } else {
            RequestPolicy::Lookup
        };
        if !seen.cache_control {
            if self.request_no_cache
                && seen.pragma
                && headers
                    .get_all(header::PRAGMA)
                    .iter()
                    .any(|v| split_list(v.as_bytes()).any(|d| d.eq_ignore_ascii_case(b"no-cache")))
            {
                return RequestPolicy::Refresh;
            }
            return lookup;
        }
        let cc = Directives::parse(headers);
        if cc.no_store {
            return RequestPolicy::Bypass;
        }
        let refresh = self.request_no_cache && (cc.no_cache || cc.max_age == Some(0));
        if refresh && !cc.only_if_cached {
            return RequestPolicy::Refresh;
        }
        // A client's demand for fresher answers makes the origin work, as `no-cache` does: the
        // same setting lets it. `only-if-cached` asks less of the origin, and always holds.
        let secs = |s: Option<u64>| {
            s.filter(|_| self.request_no_cache)
                .map(std::time::Duration::from_secs)
        };
        // `only-if-cached` with `no-cache` (or `max-age=0`): no stored answer will do, and the
        // origin may not be asked: a `504`.
        let max_age = match refresh {
            true => Some(std::time::Duration::ZERO),
            false => secs(cc.max_age),
        };
        let min_fresh = secs(cc.min_fresh);
        if max_age.is_some() || min_fresh.is_some() || cc.only_if_cached {
            return RequestPolicy::Bounded(crate::cache::mode::Bounds::new(
                max_age,
                min_fresh,
                cc.only_if_cached,
                lookup == RequestPolicy::Conditional,
            ));
        }
        lookup
    }

    fn unsatisfiable(&self, _req: &Request<ReqB>) -> Option<Self::Response> {
        let mut res = Response::new(CacheBody::full(bytes::Bytes::new()));
        *res.status_mut() = StatusCode::GATEWAY_TIMEOUT;
        self.mark(res.headers_mut(), CacheStatus::Miss);
        Some(res)
    }

    fn invalidates(&self, res: &Response<B>) -> bool {
        res.status().is_success() || res.status().is_redirection()
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
        // The clone has this mode's placeholders (one value each): set in place. An entry with
        // both (decoded by a shared store) loses those this mode does not send.
        // A miss (a waiter's answer, an entry another process stored) sends an age only if the
        // entry is a second old or more: one an upstream cache said was old already.
        let age = self.age
            && (status != CacheStatus::Miss || entry.age(now) >= std::time::Duration::from_secs(1));
        set_placeholders(
            headers,
            self.x_cache
                .as_ref()
                .map(|name| (name, HeaderValue::from_static(status.as_str()))),
            age.then(|| age_value(entry.age(now).as_secs())),
        );
        if self.x_cache.is_none() && stored.all_placeholders {
            headers.remove(&X_CACHE);
        }
        if !age && (self.age || stored.all_placeholders) {
            headers.remove(header::AGE);
        }
        Some(res)
    }

    /// `304 Not Modified` when the request's `If-None-Match` names the stored `ETag` (weak
    /// comparison, or `*`) or, without `If-None-Match`, its `If-Modified-Since` is no earlier
    /// than the stored `Last-Modified` (else `Date`) (RFC 9110 §13.1, RFC 9111 §4.3.2), with the
    /// fields a 304 carries (RFC 9110 §15.4.5) and the cache's own; only for a stored `200`.
    fn not_modified(
        &self,
        req: &Request<ReqB>,
        entry: &CacheEntry<CachedResponse>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<Self::Response> {
        if !validators_match(req.headers(), &entry.value().headers) {
            return None;
        }
        <Self as CacheMode<Request<ReqB>, Response<B>, E>>::kept_not_modified(
            self, entry, status, now,
        )
    }

    /// The request's `If-None-Match` and `If-Modified-Since`, matched as
    /// [`not_modified`](CacheMode::not_modified) matches them.
    fn validators(&self, req: &Request<ReqB>) -> Option<Validators<CachedResponse>> {
        let mut kept = HeaderMap::new();
        for name in [header::IF_NONE_MATCH, header::IF_MODIFIED_SINCE] {
            for value in req.headers().get_all(&name) {
                kept.append(name.clone(), value.clone());
            }
        }
        if kept.is_empty() {
            return None;
        }
        Some(Validators::new(
            move |entry: &CacheEntry<CachedResponse>| {
                validators_match(&kept, &entry.value().headers)
            },
        ))
    }

    /// The `304` of [`not_modified`](CacheMode::not_modified), for a stored `200` only.
    fn kept_not_modified(
        &self,
        entry: &CacheEntry<CachedResponse>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<Self::Response> {
        let stored = entry.value();
        if stored.status != StatusCode::OK || !stored.consistent {
            return None;
        }
        let mut res = Response::new(CacheBody::full(Bytes::new()));
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.version_mut() = stored.version;
        let headers = res.headers_mut();
        for name in [
            header::CACHE_CONTROL,
            header::CONTENT_LOCATION,
            header::DATE,
            header::ETAG,
            header::EXPIRES,
            header::VARY,
        ] {
            for value in stored.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        self.mark(headers, status);
        if self.age && status != CacheStatus::Miss {
            headers.insert(header::AGE, age_value(entry.age(now).as_secs()));
        }
        Some(res)
    }

    fn unconditional(&self, mut req: Request<ReqB>) -> Request<ReqB> {
        let headers = req.headers_mut();
        headers.remove(header::IF_NONE_MATCH);
        headers.remove(header::IF_MODIFIED_SINCE);
        req
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

/// Whether a request's validators match a stored response (RFC 9110 §13.1.2, §13.1.3):
/// `If-None-Match` by weak comparison of entity tags (or `*`); without it, `If-Modified-Since`
/// no earlier than the stored `Last-Modified`, else its `Date`.
fn validators_match(request: &HeaderMap, stored: &HeaderMap) -> bool {
    let mut none_match = request.get_all(header::IF_NONE_MATCH).iter().peekable();
    if none_match.peek().is_some() {
        let Some(etag) = stored
            .get(header::ETAG)
            .and_then(|e| opaque_tag(e.as_bytes()))
        else {
            // `*` matches any stored representation; a tag cannot match a response without one.
            return none_match.any(|v| v.as_bytes().trim_ascii() == b"*");
        };
        return none_match.any(|v| {
            let v = v.as_bytes();
            v.trim_ascii() == b"*" || entity_tags(v).any(|t| t == etag)
        });
    }
    // More than one `If-Modified-Since` is not a date: ignored (RFC 9110 §13.1.3).
    let mut since = request.get_all(header::IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (since.next(), since.next()) else {
        return false;
    };
    let Some(since) = since
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
    else {
        return false;
    };
    stored
        .get(header::LAST_MODIFIED)
        .or_else(|| stored.get(header::DATE))
        .and_then(|v| v.to_str().ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
        .is_some_and(|modified| modified <= since)
}

/// The opaque tag of one entity tag (`"xyz"` or `W/"xyz"`: `"xyz"` either way, for weak
/// comparison), or `None` if it is not one.
fn opaque_tag(tag: &[u8]) -> Option<&[u8]> {
    let tag = tag.trim_ascii();
    let tag = tag.strip_prefix(b"W/").unwrap_or(tag);
    (tag.len() >= 2
        && tag[0] == b'"'
        && tag[tag.len() - 1] == b'"'
        && !tag[1..tag.len() - 1].contains(&b'"'))
    .then_some(tag)
}

/// The opaque tags of a comma-separated list of entity tags (an opaque tag may hold commas);
/// stops at the first element that is not one.
fn entity_tags(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = list;
    std::iter::from_fn(move || {
        // Empty elements (`"a", , "b"`) are allowed and skipped (RFC 9110 §5.6.1.2).
        let start = rest
            .iter()
            .position(|&b| b != b',' && !b.is_ascii_whitespace())?;
        let trimmed = &rest[start..];
        let body = trimmed.strip_prefix(b"W/").unwrap_or(trimmed);
        let inner = body.strip_prefix(b"\"")?;
        let end = inner.iter().position(|&b| b == b'"')?;
        let tag = &body[..end + 2];
        rest = &inner[end + 1..];
        Some(tag)
    })
}
