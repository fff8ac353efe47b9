//! How a cache layer keeps and replays responses: [`Cloned`] for services whose responses are
//! `Clone` (plain values, gRPC messages), `HttpMode` (feature `http`) for HTTP services, whose
//! bodies it buffers.
//!
//! A mode decides which requests may use the cache, which responses may be stored, what is stored,
//! and how a stored value becomes a response again. Most applications pick one through the
//! builder (`.http()` or the default) and never name this trait.
//!
//! # Example: the clone mode, tuned
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::cache::CacheLayer;
//! use tower_rampart::key::key_fn;
//!
//! #[derive(Clone)]
//! struct Report { rows: Vec<String>, partial: bool }
//!
//! let layer = CacheLayer::builder()
//!     .ttl(Duration::from_secs(60))
//!     .key(key_fn(|day: &u32| Some(*day)))
//!     // Partial reports are not worth keeping.
//!     .predicate(|r: &Report| !r.partial)
//!     // Count the rows' heap data against the 64 MiB bound, not just the struct.
//!     .weigher(|r: &Report| r.rows.iter().map(|s| s.len() + 24).sum::<usize>() + 32)
//!     // A failing call's error is handed to every request that waited for it.
//!     .share_errors()
//!     .build()
//!     .unwrap();
//! # let _: &tower_rampart::backend::memory::MemoryCacheStore<Report> = layer.store();
//! ```

use std::any::Any;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::sync::Arc;

use tokio::time::Instant;

use super::entry::{CacheEntry, Lifetimes};
use crate::key::KeyExtractor;

/// Where a response came from, as told to the client (`x-cache` in HTTP mode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CacheStatus {
    /// Served from the cache, fresh.
    Hit,
    /// Fetched from the inner service (by this request, or by the concurrent request it waited for).
    Miss,
    /// Served from the cache after its TTL: while it is refreshed in the background, or because the
    /// refresh failed.
    Stale,
}

impl CacheStatus {
    /// `HIT`, `MISS` or `STALE`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hit => "HIT",
            Self::Miss => "MISS",
            Self::Stale => "STALE",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a request may do with the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestPolicy {
    /// Served from the cache when it can be; a miss is fetched and stored.
    Lookup,
    /// As [`Lookup`](Self::Lookup), for a request that carries validators (HTTP `If-None-Match`,
    /// `If-Modified-Since`): a stored response they match is answered by
    /// [`CacheMode::not_modified`] (HTTP `304 Not Modified`) rather than replayed: a hit, a
    /// revalidating answer, and the answer of a fill it waited for (this process's or another
    /// replica's, or its own stale entry when that fill failed). The call that fills the key for
    /// every client is made without them ([`CacheMode::unconditional`]); the request that made it
    /// keeps them ([`CacheMode::validators`]) and is answered
    /// [`CacheMode::kept_not_modified`] when they match the entry its fill stored (or its stale
    /// entry, when the call failed). A call through that is not stored keeps them.
    Conditional,
    /// Not served from the cache, but its response is stored (HTTP `Cache-Control: no-cache`).
    /// Validators it carries are kept for its own answer ([`CacheMode::validators`]) while its
    /// call asks for the whole response.
    Refresh,
    /// Neither: straight to the inner service, response not stored (`no-store`, `Authorization`,
    /// ...).
    Bypass,
    /// Straight to the inner service, response not stored; when the mode judges the response a
    /// success ([`CacheMode::invalidates`]), the entries of the resource the request's key names
    /// ([`KeyExtractor::resource_of`]) are invalidated before it is answered (HTTP's unsafe
    /// methods, RFC 9111 §4.4).
    ///
    /// [`KeyExtractor::resource_of`]: crate::key::KeyExtractor::resource_of
    Invalidate,
    /// As [`Lookup`](Self::Lookup) (or [`Conditional`](Self::Conditional), with
    /// [`Bounds::conditional`]), for a request that says what stored answer it accepts (HTTP
    /// `Cache-Control: max-age=N`, `min-fresh=N`, `only-if-cached`; RFC 9111 §5.2.1): a stored
    /// answer outside its bounds is refreshed as for [`Refresh`](Self::Refresh), and with
    /// `only_if_cached` a request the cache cannot answer gets [`CacheMode::unsatisfiable`]
    /// (HTTP `504`) instead of a call.
    Bounded(Bounds),
}

/// What stored answer a request accepts ([`RequestPolicy::Bounded`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Bounds {
    /// The oldest answer accepted (HTTP `max-age`).
    pub max_age: Option<std::time::Duration>,
    /// The least freshness an answer must have left (HTTP `min-fresh`).
    pub min_fresh: Option<std::time::Duration>,
    /// Answer from the cache or not at all (HTTP `only-if-cached`).
    pub only_if_cached: bool,
    /// The request carries validators, as for [`RequestPolicy::Conditional`].
    pub conditional: bool,
}

impl Bounds {
    /// Bounds from their parts.
    pub const fn new(
        max_age: Option<std::time::Duration>,
        min_fresh: Option<std::time::Duration>,
        only_if_cached: bool,
        conditional: bool,
    ) -> Self {
        Self {
            max_age,
            min_fresh,
            only_if_cached,
            conditional,
        }
    }
}

/// What a mode made of a fresh response from the inner service.
#[derive(Debug)]
pub enum Captured<V, R> {
    /// Store `value` (which weighs `weight` bytes) for `lifetimes`, and answer with `response`.
    Store {
        /// What goes into the cache.
        value: V,
        /// Its size in bytes.
        weight: usize,
        /// How long it is fresh, then usable stale.
        lifetimes: Lifetimes,
        /// The answer to the request that fetched it.
        response: R,
    },
    /// Do not store; answer with `response`. `reason` is for logs (`"status"`, `"no-store"`, ...).
    Pass {
        /// The answer.
        response: R,
        /// Why it was not stored.
        reason: &'static str,
    },
}

/// A conditional request's validators, kept by [`CacheMode::validators`]: whether they match a
/// stored entry.
pub struct Validators<V>(Box<Matches<V>>);

/// What [`Validators`] keep: a judge of entries.
type Matches<V> = dyn Fn(&CacheEntry<V>) -> bool + Send + Sync;

impl<V> Validators<V> {
    /// Validators that `matches` judges.
    pub fn new(matches: impl Fn(&CacheEntry<V>) -> bool + Send + Sync + 'static) -> Self {
        Self(Box::new(matches))
    }

    /// Whether they match `entry`.
    pub fn matches(&self, entry: &CacheEntry<V>) -> bool {
        (self.0)(entry)
    }
}

impl<V> fmt::Debug for Validators<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Validators").finish_non_exhaustive()
    }
}

/// How a cache layer keeps and replays the responses `Res` (and errors `E`) of a service taking
/// `Req`.
pub trait CacheMode<Req, Res, E>: Clone + Send + Sync + 'static {
    /// What the store keeps.
    type Stored: Send + Sync + 'static;
    /// What the layered service answers.
    type Response;
    /// Turns a response into [`Captured`] (for HTTP: reads its body, up to a cap).
    type Capture: Future<Output = Captured<Self::Stored, Self::Response>>;

    /// What `req` may do with the cache (default: [`RequestPolicy::Lookup`]).
    fn request_policy(&self, req: &Req) -> RequestPolicy {
        let _ = req;
        RequestPolicy::Lookup
    }

    /// Whether `res`, the answer to a request whose policy is [`RequestPolicy::Invalidate`],
    /// invalidates the resource's entries (HTTP: a 2xx or 3xx status). Default: no.
    fn invalidates(&self, res: &Res) -> bool {
        let _ = res;
        false
    }

    /// Decides whether `res` is stored, and what is. `defaults` are the layer's lifetimes; `key`
    /// is the layer's key extractor (HTTP mode asks it about `Vary`).
    fn capture<X: KeyExtractor>(&self, res: Res, defaults: Lifetimes, key: &X) -> Self::Capture;

    /// A response from a stored entry, or `None` when the entry cannot be used (it is then a miss).
    fn replay(
        &self,
        entry: &CacheEntry<Self::Stored>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<Self::Response>;

    /// The answer to `req`, a [`RequestPolicy::Conditional`] request, from the stored response
    /// `entry` when the request's validators match it (HTTP: a `304 Not Modified`, without the
    /// body), or `None` to replay the entry. Default: `None`.
    fn not_modified(
        &self,
        req: &Req,
        entry: &CacheEntry<Self::Stored>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<Self::Response> {
        let _ = (req, entry, status, now);
        None
    }

    /// The answer to `req`, a [`RequestPolicy::Bounded`] request with `only_if_cached`, that the
    /// cache cannot answer within its bounds (HTTP: `504 Gateway Timeout`, RFC 9111 §5.2.1.7), or
    /// `None` to call the inner service as for any miss. Default: `None`.
    fn unsatisfiable(&self, req: &Req) -> Option<Self::Response> {
        let _ = req;
        None
    }

    /// `req`, a [`RequestPolicy::Conditional`] request that goes to the inner service to fill the
    /// cache (a miss, a refresh), without its validators: the answer is stored for every client,
    /// and a `304` for this one's copy would not be (HTTP: `If-None-Match` and
    /// `If-Modified-Since` removed). Default: unchanged.
    fn unconditional(&self, req: Req) -> Req {
        req
    }

    /// What of `req`, a conditional request ([`RequestPolicy::Conditional`],
    /// [`RequestPolicy::Bounded`] with [`Bounds::conditional`], or a [`RequestPolicy::Refresh`]
    /// with validators) whose miss is about to fill the
    /// cache ([`unconditional`](Self::unconditional)), decides [`not_modified`](Self::not_modified),
    /// kept to judge what its fill brings: whether the request's validators match an entry. The
    /// request is then answered [`kept_not_modified`](Self::kept_not_modified) when they match
    /// the entry its fill brought (stored or not), or the stale entry it is served when the fill
    /// fails, instead of that whole response. Default: `None` (it is answered in full).
    fn validators(&self, req: &Req) -> Option<Validators<Self::Stored>> {
        let _ = req;
        None
    }

    /// The answer to a request whose kept [`validators`](Self::validators) match `entry`: what
    /// [`not_modified`](Self::not_modified) answers when they do (HTTP: a `304 Not Modified`), or
    /// `None` to answer in full. Default: `None`.
    fn kept_not_modified(
        &self,
        entry: &CacheEntry<Self::Stored>,
        status: CacheStatus,
        now: Instant,
    ) -> Option<Self::Response> {
        let _ = (entry, status, now);
        None
    }

    /// The answer for a response that is passed on without being stored.
    fn pass(&self, res: Res, status: Option<CacheStatus>) -> Self::Response;

    /// Whether `res` is a failure that a stale entry should be served instead of (stale-if-error).
    /// Errors from the inner service always are; by default no response is.
    fn is_failure(&self, res: &Res) -> bool {
        let _ = res;
        false
    }

    /// The inner service's error `e` in a form the requests that waited for this call can each
    /// take a copy of, or `None` (the default) to have each of them call the inner service itself.
    fn share_error(&self, e: &E) -> Option<Arc<dyn Any + Send + Sync>> {
        let _ = e;
        None
    }

    /// A waiting request's copy of an error shared by [`share_error`](Self::share_error).
    fn shared_error(&self, shared: &Arc<dyn Any + Send + Sync>) -> Option<E> {
        let _ = shared;
        None
    }
}

/// What the requests that waited for a failed call get.
pub trait ErrorSharing<E>: Clone + Send + Sync + 'static {
    /// `e`, shareable; `None` to have each waiting request call the inner service itself.
    fn share(&self, e: &E) -> Option<Arc<dyn Any + Send + Sync>>;
    /// A waiting request's copy.
    fn copy(&self, shared: &Arc<dyn Any + Send + Sync>) -> Option<E>;
}

/// The default: when the call a request waited for fails, the request calls the inner service
/// itself (as if the cache were not there). Works for any error type; nothing is cached.
#[derive(Clone, Copy, Debug, Default)]
pub struct CallThrough;

impl<E> ErrorSharing<E> for CallThrough {
    #[inline]
    fn share(&self, _: &E) -> Option<Arc<dyn Any + Send + Sync>> {
        None
    }

    #[inline]
    fn copy(&self, _: &Arc<dyn Any + Send + Sync>) -> Option<E> {
        None
    }
}

/// When the call that requests waited for fails, each of them gets a clone of its error
/// (for `Clone` errors such as `tonic::Status`): a failing upstream sees one call, not one per
/// waiting request. Set with [`CacheBuilder::share_errors`](super::CacheBuilder::share_errors).
#[derive(Clone, Copy, Debug, Default)]
pub struct ShareErrors;

impl<E: Clone + Send + Sync + 'static> ErrorSharing<E> for ShareErrors {
    fn share(&self, e: &E) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(e.clone()))
    }

    fn copy(&self, shared: &Arc<dyn Any + Send + Sync>) -> Option<E> {
        shared.downcast_ref::<E>().cloned()
    }
}

/// Decides which responses of the [`Cloned`] mode are stored.
pub trait Predicate<T>: Clone + Send + Sync + 'static {
    /// Whether `value` may be stored.
    fn is_cacheable(&self, value: &T) -> bool;
}

/// Every successful response is stored.
#[derive(Clone, Copy, Debug, Default)]
pub struct Always;

impl<T> Predicate<T> for Always {
    #[inline]
    fn is_cacheable(&self, _: &T) -> bool {
        true
    }
}

/// A predicate from a closure; made by [`CacheBuilder::predicate`](super::CacheBuilder::predicate).
#[derive(Clone)]
pub struct PredicateFn<F>(pub(crate) F);

impl<F> fmt::Debug for PredicateFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PredicateFn")
    }
}

impl<T, F> Predicate<T> for PredicateFn<F>
where
    F: Fn(&T) -> bool + Clone + Send + Sync + 'static,
{
    #[inline]
    fn is_cacheable(&self, value: &T) -> bool {
        (self.0)(value)
    }
}

/// Says how many bytes a stored value of the [`Cloned`] mode takes, for the store's bound.
pub trait Weigher<T>: Clone + Send + Sync + 'static {
    /// The size of `value` in bytes, heap data included.
    fn weigh(&self, value: &T) -> usize;
}

/// Weighs values at their inline size, `size_of::<T>()`: right for plain values, an
/// underestimate for values that own heap data (use
/// [`CacheBuilder::weigher`](super::CacheBuilder::weigher) for those).
#[derive(Clone, Copy, Debug, Default)]
pub struct SizeOf;

impl<T> Weigher<T> for SizeOf {
    #[inline]
    fn weigh(&self, _: &T) -> usize {
        std::mem::size_of::<T>()
    }
}

/// A weigher from a closure; made by [`CacheBuilder::weigher`](super::CacheBuilder::weigher).
#[derive(Clone)]
pub struct WeigherFn<F>(pub(crate) F);

impl<F> fmt::Debug for WeigherFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WeigherFn")
    }
}

impl<T, F> Weigher<T> for WeigherFn<F>
where
    F: Fn(&T) -> usize + Clone + Send + Sync + 'static,
{
    #[inline]
    fn weigh(&self, value: &T) -> usize {
        (self.0)(value)
    }
}

/// The default mode: stores a clone of each successful response (that `P` accepts) and answers
/// hits with clones of it. For plain values, gRPC messages, anything `Clone`.
///
/// Every request may use the cache (a key extractor returning `None` opts a request out); errors
/// from the inner service are never stored.
///
/// When the call that other requests for the same key waited for fails, they each call the inner
/// service themselves ([`CallThrough`]), or get a clone of its error ([`ShareErrors`]).
pub struct Cloned<P = Always, W = SizeOf, G = CallThrough> {
    pub(crate) predicate: P,
    pub(crate) weigher: W,
    pub(crate) errors: G,
}

impl<P: Clone, W: Clone, G: Clone> Clone for Cloned<P, W, G> {
    fn clone(&self) -> Self {
        Self {
            predicate: self.predicate.clone(),
            weigher: self.weigher.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl<P: fmt::Debug, W: fmt::Debug, G: fmt::Debug> fmt::Debug for Cloned<P, W, G> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cloned")
            .field("predicate", &self.predicate)
            .field("weigher", &self.weigher)
            .field("errors", &self.errors)
            .finish()
    }
}

impl Cloned {
    /// Stores every successful response, weighed at its inline size.
    pub const fn new() -> Self {
        Self {
            predicate: Always,
            weigher: SizeOf,
            errors: CallThrough,
        }
    }
}

impl Default for Cloned {
    fn default() -> Self {
        Self::new()
    }
}

/// The overhead of an entry of the clone mode beyond its value (the entry's own header).
const CLONED_OVERHEAD: usize = 48;

impl<Req, Res, E, P, W, G> CacheMode<Req, Res, E> for Cloned<P, W, G>
where
    Res: Clone + Send + Sync + 'static,
    P: Predicate<Res>,
    W: Weigher<Res>,
    G: ErrorSharing<E>,
{
    type Stored = Res;
    type Response = Res;
    type Capture = Ready<Captured<Res, Res>>;

    #[inline]
    fn capture<X: KeyExtractor>(&self, res: Res, defaults: Lifetimes, _: &X) -> Self::Capture {
        ready(if self.predicate.is_cacheable(&res) {
            Captured::Store {
                weight: self.weigher.weigh(&res).saturating_add(CLONED_OVERHEAD),
                value: res.clone(),
                lifetimes: defaults,
                response: res,
            }
        } else {
            Captured::Pass {
                response: res,
                reason: "predicate",
            }
        })
    }

    #[inline]
    fn replay(&self, entry: &CacheEntry<Res>, _: CacheStatus, _: Instant) -> Option<Res> {
        Some(entry.value().clone())
    }

    #[inline]
    fn pass(&self, res: Res, _: Option<CacheStatus>) -> Res {
        res
    }

    fn share_error(&self, e: &E) -> Option<Arc<dyn Any + Send + Sync>> {
        self.errors.share(e)
    }

    fn shared_error(&self, shared: &Arc<dyn Any + Send + Sync>) -> Option<E> {
        self.errors.copy(shared)
    }
}
