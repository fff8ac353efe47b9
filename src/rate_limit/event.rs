//! What a rate limiter tells its hooks ([`on_event`](super::RateLimitBuilder::on_event)).

use std::time::Duration;

use crate::hooks::Event;

/// An event of a rate limiter, as its [hooks](crate::hooks) see it.
///
/// Admissions are not events (they are the hot path; count them with the
/// `rampart_rate_limit_admitted_total` metric).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitEvent {
    /// A request was refused: its key is over the limit.
    #[non_exhaustive]
    Refused {
        /// The limiter's name.
        name: &'static str,
        /// How long until a request with this key may be admitted.
        retry_after: Duration,
    },
    /// A request would have been refused by a shadow limit (or by any limit, in the layer's shadow
    /// mode) and was admitted.
    #[non_exhaustive]
    ShadowRefused {
        /// The limiter's name.
        name: &'static str,
        /// The limit that would have refused.
        policy: &'static str,
    },
    /// A request was refused because its cost is more than a limit admits at once.
    #[non_exhaustive]
    CostTooHigh {
        /// The limiter's name.
        name: &'static str,
        /// The limit that cannot admit it.
        policy: &'static str,
        /// The units asked for.
        cost: u32,
        /// The most the limit admits at once.
        capacity: u32,
    },
    /// A request was refused because the backend could not decide (Redis unreachable, say, under
    /// a failure policy that refuses).
    #[non_exhaustive]
    BackendUnavailable {
        /// The limiter's name.
        name: &'static str,
        /// The backend's error, as text.
        error: String,
    },
    /// A request was refused because the key extractor found no key in it.
    #[non_exhaustive]
    KeyMissing {
        /// The limiter's name.
        name: &'static str,
    },
    /// Redis could not make a decision; the store's failure policy made it instead (to admit,
    /// to decide in memory, or to refuse: a refusal is then also a `BackendUnavailable`).
    #[non_exhaustive]
    BackendFallback {
        /// The limiter's name.
        name: &'static str,
        /// The failure policy followed: `open`, `closed` or `local`.
        policy: &'static str,
        /// The backend's error, as text.
        error: String,
    },
}

impl Event for RateLimitEvent {
    fn layer_name(&self) -> &str {
        match self {
            Self::Refused { name, .. }
            | Self::ShadowRefused { name, .. }
            | Self::CostTooHigh { name, .. }
            | Self::BackendUnavailable { name, .. }
            | Self::KeyMissing { name }
            | Self::BackendFallback { name, .. } => name,
        }
    }

    /// `refused`, `shadow_refused`, `cost_too_high`, `backend_unavailable`, `key_missing` or
    /// `backend_fallback`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::ShadowRefused { .. } => "shadow_refused",
            Self::CostTooHigh { .. } => "cost_too_high",
            Self::BackendUnavailable { .. } => "backend_unavailable",
            Self::KeyMissing { .. } => "key_missing",
            Self::BackendFallback { .. } => "backend_fallback",
        }
    }
}
