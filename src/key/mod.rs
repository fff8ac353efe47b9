//! What a request is keyed by, for every keyed layer: the rate limiter's buckets, the circuit
//! breaker's per-key circuits and the cache's entries.
//!
//! One extractor works with any of them, set with the same builder verb, `.key(k)`:
//!
//! | extractor | key | feature |
//! |---|---|---|
//! | [`GlobalKey`] | `()`: one key for every request | |
//! | [`key_fn`] (nameable as [`KeyFnPtr`]) | whatever the closure returns; `None` is no key | |
//! | [`PeerIp`] | the TCP peer's IP address | `http` |
//! | [`ClientIp`] | the client's IP address, from a forwarding header set by a trusted proxy | `http` |
//! | [`HeaderKey`] | the value of a request header (an API key, a tenant) | `http` |
//! | [`UpstreamHost`] | an outbound request's `host[:port]` | `http` |
//!
//! The cache's own default, [`HttpKey`](crate::cache::HttpKey) (method, URI and chosen headers),
//! is an extractor of this family too.
//!
//! # When no key can be extracted
//!
//! An extractor may find nothing to key on: no peer address because the server was not set up to
//! record it, a missing header, a key function returning `None`. Each layer does what suits it:
//!
//! - **Rate limiter**: follows its [`MissingKey`](crate::rate_limit::MissingKey) setting, by
//!   default refusing the request (HTTP 500 naming the cause) so a deployment mistake shows up on
//!   the first request instead of as a silently disabled limit.
//! - **Cache**: the request is not cached; it goes straight to the inner service.
//! - **Circuit breaker** (per-key): the call goes straight to the inner service, through no
//!   circuit, and its outcome is not recorded. [`GlobalKey`] and [`UpstreamHost`] always give a
//!   key.
//!
//! # How keys are used by each layer
//!
//! The key types the crate's extractors produce work with every layer and backend. A key of your
//! own (from [`key_fn`]) needs, besides `Hash + Eq + Clone + Debug`:
//!
//! - for the cache, a conversion into its byte string: `Into<`[`CacheKey`](crate::cache::CacheKey)`>`
//!   (strings, byte strings, integers, IP addresses, header values, [`CacheKey`](crate::cache::CacheKey)
//!   itself);
//! - for per-key circuits, a [`KeyLabel`]: how the key reads in logs, refusals and metrics labels;
//! - with the Redis backend, a [`RedisKey`](crate::backend::redis::RedisKey) (feature `redis`).
//!
//! # Example: one extractor, three layers
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::cache::CacheLayer;
//! use tower_rampart::circuit_breaker::CircuitBreakerLayer;
//! use tower_rampart::key::key_fn;
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! struct Job { tenant: u64 }
//!
//! let by_tenant = key_fn(|job: &Job| Some(job.tenant));
//! let limit = RateLimitLayer::builder().quota(Quota::per_second(100)).key(by_tenant.clone()).build();
//! let breaker = CircuitBreakerLayer::builder().key(by_tenant.clone()).build();
//! let cache = CacheLayer::builder().ttl(Duration::from_secs(5)).key(by_tenant).build::<String>();
//! assert!(limit.is_ok() && breaker.is_ok() && cache.is_ok());
//! ```

use std::fmt;
use std::hash::Hash;

use crate::error::ConfigError;

mod function;
#[cfg(feature = "http")]
mod http;
mod label;

pub use self::function::{GlobalKey, KeyFn, KeyFnPtr, key_fn};
#[cfg(feature = "http")]
pub use self::http::{ClientIp, ForwardedHeader, HeaderKey, PeerIp, UpstreamHost};
pub use self::label::KeyLabel;

/// The kind of key an extractor produces, and what the layer asks of it before any request.
///
/// Implemented together with [`ExtractKey`], which does the extracting for a particular request
/// type. The two are split so a layer's state (store, circuits) can be built before any request
/// type is known.
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key: requests with equal keys share a bucket, a circuit or a cache entry.
    type Key: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static;

    /// The key, if it does not depend on the request (as for [`GlobalKey`]).
    ///
    /// The rate limiter in waiting mode uses it to reserve capacity in `poll_ready`, before the
    /// request is seen.
    fn fixed_key(&self) -> Option<Self::Key> {
        None
    }

    /// Checks the extractor's own configuration; called by the layer's `build`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting that cannot work.
    fn validate(&self) -> Result<(), ConfigError> {
        Ok(())
    }

    /// Whether keys include the request header `name` (lowercase), so that requests that differ
    /// in it get different keys. The cache stores a response that `Vary`s on a header only when
    /// its key covers that header.
    fn covers_header(&self, name: &str) -> bool {
        let _ = name;
        false
    }

    /// The part of a cache key that names the resource, for keys of the form `METHOD resource`,
    /// optionally followed by a newline and fields (as [`HttpKey`]'s are): `/items/1` in `PUT
    /// /items/1`. When a request that may change the resource (an HTTP `POST`, `PUT`, `PATCH`,
    /// `DELETE`, ...) succeeds, the HTTP cache invalidates that resource's `GET` and `HEAD`
    /// entries, every variant of them (RFC 9111 §4.4). `None`, the default: such requests
    /// invalidate nothing.
    ///
    /// [`HttpKey`]: crate::cache::HttpKey
    fn resource_of<'k>(&self, key: &'k [u8]) -> Option<&'k [u8]> {
        let _ = key;
        None
    }
}

/// Extracts a key from requests of type `Req`.
pub trait ExtractKey<Req>: KeyExtractor {
    /// The key for `req`, or why there is none.
    ///
    /// # Errors
    ///
    /// When the request carries nothing to key on; each layer then does what the
    /// [module documentation](self#when-no-key-can-be-extracted) says.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;
}

/// Why no key could be extracted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyError {
    reason: &'static str,
}

impl KeyError {
    /// A key error with a lowercase explanation that says how to fix it.
    pub const fn new(reason: &'static str) -> Self {
        Self { reason }
    }

    /// The explanation.
    pub const fn reason(&self) -> &'static str {
        self.reason
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason)
    }
}

impl std::error::Error for KeyError {}
