//! What the limiter does with a request its key extractor finds no key for.
//!
//! The extractors themselves ([`GlobalKey`](crate::key::GlobalKey), [`key_fn`](crate::key::key_fn),
//! [`PeerIp`](crate::key::PeerIp), ...) are in [`crate::key`], shared with the other keyed layers.
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
//! use tower_rampart::key::key_fn;
//! use tower_rampart::rate_limit::{MissingKey, Quota, RateLimitLayer};
//!
//! // One bucket per tenant; jobs without a tenant are not limited.
//! struct Job { tenant: Option<u64> }
//!
//! let layer = RateLimitLayer::builder()
//!     .quota(Quota::per_second(100))
//!     .key(key_fn(|job: &Job| job.tenant))
//!     .on_missing_key(MissingKey::Allow)
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! ```

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
