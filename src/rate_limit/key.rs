//! What a limit is counted against: one global bucket, a client IP, a header, or anything a closure
//! can compute from the request.
//!
//! HTTP extractors ([`PeerIp`](crate::http::PeerIp), [`ClientIp`](crate::http::ClientIp),
//! [`HeaderKey`](crate::http::HeaderKey)) live in [`crate::http`].
//!
//! # When no key can be extracted
//!
//! An extractor may find nothing to key on: no peer address because the server was not set up to
//! record it, a missing header. What the layer does then is [`MissingKey`]: by default it **refuses**
//! the request (HTTP 500 naming the cause) rather than let it through unlimited, so a deployment
//! mistake shows up on the first request instead of as a silently disabled limit.
//!
//! # Example
//!
//! ```
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer, key::key_fn};
//!
//! // One bucket per tenant, taken from the request itself.
//! struct Job { tenant: u64 }
//!
//! let layer = RateLimitLayer::builder()
//!     .quota(Quota::per_second(100))
//!     .key(key_fn(|job: &Job| Some(job.tenant)))
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! ```

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// The kind of key an extractor produces.
///
/// Implemented together with [`ExtractKey`], which does the extracting for a particular request type.
/// The two are split so a layer's store can be built before any request type is known.
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key limits are counted against.
    type Key: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static;

    /// The key, if it does not depend on the request (as for [`GlobalKey`]).
    ///
    /// Layers in waiting mode use it to reserve capacity in `poll_ready`, before the request is seen.
    fn fixed_key(&self) -> Option<Self::Key> {
        None
    }

    /// Checks the extractor's own configuration; called by the layer's `build`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`](crate::ConfigError) naming the setting that cannot work.
    fn validate(&self) -> Result<(), crate::ConfigError> {
        Ok(())
    }
}

/// Extracts a key from requests of type `Req`.
pub trait ExtractKey<Req>: KeyExtractor {
    /// The key for `req`, or why there is none.
    ///
    /// # Errors
    ///
    /// When the request carries nothing to key on; the layer then follows its [`MissingKey`] setting.
    fn extract(&self, req: &Req) -> Result<Self::Key, KeyError>;
}

/// What to do with a request an extractor finds no key for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum MissingKey {
    /// Refuse it with [`KeyMissing`](super::error::KeyMissing) (HTTP 500): the default, so a
    /// misconfigured server fails loudly instead of running without limits.
    #[default]
    Reject,
    /// Let it through without counting it.
    Allow,
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

/// One bucket for all requests: the limit applies to the service as a whole.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    type Key = ();

    #[inline]
    fn fixed_key(&self) -> Option<()> {
        Some(())
    }
}

impl<Req> ExtractKey<Req> for GlobalKey {
    #[inline]
    fn extract(&self, _: &Req) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A key computed by a closure; `None` means "no key" (see [`MissingKey`]). Made by [`key_fn`].
pub struct KeyFn<F, K> {
    f: F,
    _key: PhantomData<fn() -> K>,
}

/// Keys requests with `f`. Returning `None` means the request has no key (see [`MissingKey`]).
pub fn key_fn<Req, F, K>(f: F) -> KeyFn<F, K>
where
    F: Fn(&Req) -> Option<K>,
{
    KeyFn {
        f,
        _key: PhantomData,
    }
}

impl<F: Clone, K> Clone for KeyFn<F, K> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _key: PhantomData,
        }
    }
}

impl<F, K> fmt::Debug for KeyFn<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn")
            .field("key", &std::any::type_name::<K>())
            .finish()
    }
}

impl<F, K> KeyExtractor for KeyFn<F, K>
where
    F: Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    type Key = K;
}

impl<F, K, Req> ExtractKey<Req> for KeyFn<F, K>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    #[inline]
    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.f)(req).ok_or(KeyError::new(
            "the key function returned no key for this request",
        ))
    }
}
