//! Response caching: a read-through cache as a Tower layer, with single-flight misses,
//! stale-while-revalidate and stale-if-error.
//!
//! - **Two kinds of service.** Any service whose response is `Clone` (plain values, gRPC
//!   messages), keyed by a [key extractor](crate::key) — the default [`Cloned`] mode; and HTTP services
//!   (`.http()`, [`HttpMode`]), whose bodies are buffered up to a cap so they can be replayed,
//!   keyed by method and URI ([`HttpKey`]).
//! - **One call per key.** Concurrent misses on one key make exactly one call to the inner
//!   service; the others wait for its answer (see [single flight](#single-flight)).
//! - **Stale answers.** After the TTL, an entry can be served at once while one background call
//!   refreshes it ([stale-while-revalidate](CacheBuilder::stale_while_revalidate)), and served
//!   instead of a failure ([stale-if-error](CacheBuilder::stale_if_error)).
//! - **Bounded.** The in-memory store ([`MemoryCacheStore`](crate::backend::memory::MemoryCacheStore))
//!   holds at most [`max_bytes`](CacheBuilder::max_bytes) (64 MiB by default, its tables
//!   included), evicts by CLOCK (entries read recently survive a scan of one-off keys), and never
//!   serves an entry after its last window ends.
//! - **Invalidation.** A [`CacheHandle`] drops one key, a prefix, or everything, at once.
//! - **Shared by replicas.** With `.backend(redis)` (feature `redis`), every replica serves from
//!   one cache in Redis, with single flight and invalidation across replicas
//!   ([`RedisCacheStore`](crate::backend::redis::RedisCacheStore)).
//!
//! The layer adds no errors of its own: its error type is the inner service's, so axum's
//! `Router::layer` and tonic accept it as is. A cache store that fails (a shared one that is
//! down) makes the layer call through, never fail the request.
//!
//! # Example: axum
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_rampart::cache::CacheLayer;
//!
//! let app: Router = Router::new()
//!     .route("/api/metrics/summary", get(|| async { r#"{"count":3}"# }))
//!     // GET and HEAD, 200/203/204, fresh for 5 minutes (or the response's max-age); x-cache on answers.
//!     .route_layer(CacheLayer::http(Duration::from_secs(300)));
//! # let _ = app;
//! ```
//!
//! # Example: any service with `Clone` responses
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::cache::CacheLayer;
//! use tower_rampart::key::key_fn;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! #[derive(Clone, Debug, PartialEq)]
//! struct Summary { count: u64 }
//!
//! let layer = CacheLayer::builder()
//!     .ttl(Duration::from_secs(60))
//!     .stale_while_revalidate(Duration::from_secs(30))
//!     .key(key_fn(|metric: &String| Some(format!("summary:{metric}"))))
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(service_fn(|metric: String| async move {
//!     Ok::<_, std::convert::Infallible>(Summary { count: metric.len() as u64 })
//! }));
//! let first = svc.ready().await.unwrap().call("cpu".into()).await.unwrap(); // a miss
//! let again = svc.ready().await.unwrap().call("cpu".into()).await.unwrap(); // a hit
//! assert_eq!(first, again);
//! # }
//! ```
//!
//! # Single flight
//!
//! The first request that misses a key becomes the *leader*: it calls the inner service. Requests
//! for the same key that miss while that call runs wait for it, and then:
//!
//! | the leader's call | the waiting requests get |
//! |---|---|
//! | returned a response that was stored | a copy of it (`x-cache: MISS`) |
//! | failed, and a stale entry may be served ([stale-if-error](CacheBuilder::stale_if_error)) | the stale entry (`STALE`), as the leader does |
//! | returned a response that may not be stored (an error status, `no-store`, `Set-Cookie`, too large, ...) | each calls the inner service itself |
//! | returned an error | each calls the inner service itself; or, with [`share_errors`](CacheBuilder::share_errors) (errors that are `Clone`, such as `tonic::Status`), a clone of the error |
//! | was cancelled (its request was dropped) | one of them becomes the leader and calls; the rest wait for it |
//!
//! Nothing is stored in the failing cases, and no request ever waits for a call that will not
//! answer it. A response that may not be stored is never handed to other requests: it may be
//! private to the request that asked (a `Set-Cookie`, a `private` page). Calling through is
//! also why the inner service must be `Clone`: a waiting request keeps a ready clone for it.
//!
//! # Stale-while-revalidate and what it requires
//!
//! An entry past its TTL but within the stale-while-revalidate window is answered at once
//! (`STALE`), and one background call refreshes it — one per key, however many requests see it
//! stale, and at most [`max_background_refreshes`](CacheBuilder::max_background_refreshes) in
//! all (beyond that, stale answers go on without starting a refresh). The refresh runs with
//! `tokio::spawn` on the runtime of the request that found the entry stale, so:
//!
//! - the inner service's future (and, in HTTP mode, its response body) must be `Send +
//!   'static`, and the request type `'static`; this is checked on the `Service` impl, as for
//!   every axum, tonic or hyper service;
//! - outside a tokio runtime, the request that finds the entry stale refreshes it itself (it is
//!   then answered like a miss, with the stale entry as its stale-if-error fallback).
//!
//! A refresh that fails leaves the stale entry in place; the next stale answer tries again.
//!
//! # HTTP
//!
//! With `.http()` ([`CacheLayer::http`]), the layer follows the rules of a shared cache (RFC
//! 9111) where they matter for an application's own responses:
//!
//! - **Writes.** A request with any other method but `OPTIONS`, `TRACE` and `CONNECT` (`POST`, `PUT`,
//!   `PATCH`, `DELETE`, ...) goes straight through; when it is answered with a 2xx or 3xx, the
//!   `GET` and `HEAD` entries of its target (every variant) are invalidated before the answer is
//!   passed on, in Redis too with a shared store (RFC 9111 §4.4;
//!   [`invalidate_on_write`](CacheBuilder::invalidate_on_write)). Other URIs the write changed (a
//!   list, a summary) are the app's to invalidate, with a [`CacheHandle`].
//! - **Requests.** Only `GET` and `HEAD` use the cache (they are separate entries). Requests with
//!   `Authorization` or `Range` pass straight through (see
//!   [`cache_authorized`](CacheBuilder::cache_authorized)), as do requests with
//!   `Cache-Control: no-store`. `Cache-Control: no-cache` (or `max-age=0`, or `Pragma: no-cache`)
//!   skips the lookup and stores the fresh answer ([`request_no_cache`](CacheBuilder::request_no_cache));
//!   `max-age=N` and `min-fresh=N` refresh a stored answer older, or fresh for less, than the
//!   request accepts; `only-if-cached` is answered from the cache or with a `504 Gateway
//!   Timeout`, never by the origin (RFC 9111 §5.2.1). Such a request is served only a fresh
//!   answer within its bounds (not a stale one, even within `stale-while-revalidate`; the
//!   refresh it makes has no stale fallback). `max-stale` is not honoured: stale answers go out
//!   only as the response's own `stale-while-revalidate` / `stale-if-error` allow.
//! - **Responses stored.** 200, 203 and 204 by default, and the other 2xx but 206 when they say
//!   how long they stay fresh (`max-age`, `s-maxage` or `Expires`): a `202 Accepted` or `201 Created` is
//!   not served again for the layer's TTL ([`cacheable`](CacheBuilder::cacheable)), and
//!   never with `Cache-Control: no-store`, `private` or `no-cache`, with `Set-Cookie`, with
//!   `Vary: *`, or with a `Vary` naming a request header the key does not include (key on it
//!   with [`HttpKey::header`]; put a compression layer *outside* the cache, or key on
//!   `accept-encoding`, for responses that vary by encoding). Cookies on *requests* are not looked
//!   at: responses that depend on them must say `private` or `Vary: cookie`.
//! - **Lifetime.** `s-maxage`, else `max-age`, sets the TTL, and `stale-while-revalidate` /
//!   `stale-if-error` (RFC 5861) the stale windows, unless
//!   [`honor_cache_control`](CacheBuilder::honor_cache_control) is off; `must-revalidate` and
//!   `proxy-revalidate` turn the stale windows off, and `s-maxage` (RFC 9111 §5.2.2.10) the
//!   layer's own (a response's `stale-while-revalidate` / `stale-if-error` still apply with it).
//!   Without either, `Expires` sets the TTL (counted from the response's `Date`); an `Expires`
//!   already past, or not a date (`Expires: 0`), means the response is not stored. A response's
//!   own `Age` (from a cache upstream) counts: it is fresh for the TTL less that age, its `age`
//!   on replay includes it, and one already older than its TTL is not stored.
//! - **Bodies.** Read whole before answering, up to [`max_body_bytes`](CacheBuilder::max_body_bytes)
//!   (1 MiB by default). A response whose `content-length` (or size hint) is larger is passed
//!   through without being read; one found larger while reading, or ending with trailers, is
//!   passed through with what was read replayed first. Nothing beyond the cap is ever buffered.
//! - **Conditional requests.** A request whose `If-None-Match` names the stored response's
//!   `ETag` (weak comparison, or `*`) or, without `If-None-Match`, whose `If-Modified-Since` is
//!   no earlier than its `Last-Modified` (else `Date`) is answered `304 Not Modified` from a
//!   stored `200`, with its `ETag`, `Cache-Control`, `Date`, `Expires`, `Vary` and
//!   `Content-Location` and no body (RFC 9111 §4.3.2): one found fresh (or revalidating) by its
//!   lookup, one another request's fill stored while it waited (in this process, or another
//!   replica's), or its own stale entry when that fill failed (stale-if-error). Any other gets
//!   the stored response. The call that fills a key asks the inner service for the whole
//!   response, without the client's validators; a miss that made it keeps them, and gets `304`
//!   when they match what its fill brought (the entry, stored or not) or its stale entry when
//!   the call failed; a reload (`no-cache`) with validators likewise. A waiter that calls through
//!   instead (the fill's answer was not stored) keeps them in its call, so that the origin can
//!   answer `304` itself. Requests with `If-Match` or `If-Unmodified-Since` (preconditions the
//!   origin evaluates) pass straight through.
//! - **Answers.** `x-cache: HIT | MISS | STALE` ([`x_cache_header`](CacheBuilder::x_cache_header))
//!   and, on hits and stale answers, `age` ([`age_header`](CacheBuilder::age_header)). Requests the
//!   cache does not handle (a `POST`, an `Authorization`) get no `x-cache`. Hop-by-hop headers are
//!   not stored. A 5xx counts as a failure for stale-if-error.
//! - **Body type.** Answers carry a [`CacheBody`] (a stored body, or the inner body streaming
//!   through), which axum, hyper and tonic accept as a response body.
//!
//! # Invalidation
//!
//! [`CacheLayer::handle`] gives a [`CacheHandle`]; after a write, invalidate what it made stale.
//! An invalidation takes effect at once, and a response fetched by a call that was running when
//! it happened is not stored (the call may have read the old data). HTTP keys read
//! `GET /path?query`, so `handle.invalidate_prefix("GET /api/metrics/summary")` drops every
//! summary fetched with `GET` (`HEAD` requests have entries of their own, `HEAD /path?query`:
//! invalidate those too where clients send them). With the in-memory store a prefix invalidation
//! walks the entries (it is exact, and O(entries)), but for the variants of one resource
//! (`GET /path?query\n`, a prefix whose only newline ends it: what a successful write
//! invalidates), which each shard indexes.
//!
//! # Observability
//!
//! `tracing` events: misses that wait, responses not stored and why (`debug`), stale answers and
//! refreshes (`debug`), unusable entries and store failures (`warn`, rate-limited); keys are
//! logged up to their first newline, so header values an [`HttpKey`] includes (which may be
//! credentials) stay out of logs. With the
//! `metrics` feature, labelled `name=<name>`: `rampart_cache_hits_total`,
//! `rampart_cache_misses_total` (every request the cache could not answer, those that waited for
//! another's call included), `rampart_cache_stale_total`, `rampart_cache_stale_if_error_total`,
//! `rampart_cache_coalesced_total` (the misses that waited for another's call),
//! `rampart_cache_not_stored_total{reason}`, `rampart_cache_evictions_total{reason=size|expired}`,
//! `rampart_cache_invalidations_total{what}`, `rampart_cache_unusable_total`,
//! `rampart_cache_backend_errors_total{op}`, and the gauge `rampart_cache_bytes`.

#[cfg(feature = "http")]
pub mod codec;
#[cfg(feature = "serde")]
mod config;
pub mod entry;
mod event;
mod flight;
pub mod future;
mod handle;
#[cfg(feature = "http")]
mod http;
pub mod key;
mod layer;
pub mod mode;
mod service;
mod store;

#[cfg(feature = "serde")]
pub use self::config::{CacheConfig, FillLockConfig};
pub use self::entry::CacheEntry;
pub use self::event::CacheEvent;
pub use self::handle::{CacheHandle, Invalidation};
#[cfg(feature = "http")]
pub use self::http::{
    CacheBody, CachedResponse, DEFAULT_MAX_BODY_BYTES, HttpCapture, HttpKey, HttpMode, X_CACHE,
};
pub use self::key::CacheKey;
pub use self::layer::{
    CacheBuilder, CacheLayer, DEFAULT_LOCK_HOLD, DEFAULT_LOCK_WAIT, DEFAULT_MAX_BYTES,
    DEFAULT_MAX_REFRESHES, ModeConfig, NoBackend,
};
pub use self::mode::{CacheMode, CacheStatus, Cloned, Validators};
pub use self::service::Cache;
pub use self::store::{CacheBackend, CacheSpec, CacheStore, FillLock, Found, LockMode, StoreOp};
