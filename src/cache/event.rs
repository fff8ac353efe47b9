//! What a cache tells its hooks ([`on_event`](super::CacheBuilder::on_event)).

use crate::hooks::Event;

/// An event of a cache, as its [hooks](crate::hooks) see it. Each request is one of `Hit`,
/// `Miss` (a `Coalesced` one too), `Stale`, `StaleIfError` or `Unusable`; fills and store
/// operations add `FillFailed` and `StoreFailed`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheEvent {
    /// A request was answered from a fresh entry.
    #[non_exhaustive]
    Hit {
        /// The cache's name.
        name: &'static str,
    },
    /// A request found no fresh entry (it calls the upstream, or waits for another request's
    /// call: then `Coalesced` follows).
    #[non_exhaustive]
    Miss {
        /// The cache's name.
        name: &'static str,
    },
    /// A missing request shared another request's upstream call (single flight).
    #[non_exhaustive]
    Coalesced {
        /// The cache's name.
        name: &'static str,
    },
    /// A request was answered with a stale entry while it is refreshed
    /// (stale-while-revalidate).
    #[non_exhaustive]
    Stale {
        /// The cache's name.
        name: &'static str,
    },
    /// A request was answered with a stale entry because the upstream failed (stale-if-error).
    #[non_exhaustive]
    StaleIfError {
        /// The cache's name.
        name: &'static str,
    },
    /// A request the cache could not key, or whose stored entry could not be replayed: it went
    /// to the upstream as a miss.
    #[non_exhaustive]
    Unusable {
        /// The cache's name.
        name: &'static str,
    },
    /// A fill's upstream call failed: nothing was stored (a stale entry may still have been
    /// served, with `StaleIfError`).
    #[non_exhaustive]
    FillFailed {
        /// The cache's name.
        name: &'static str,
    },
    /// A store operation failed (Redis down, say); the request went on without the store.
    #[non_exhaustive]
    StoreFailed {
        /// The cache's name.
        name: &'static str,
        /// The operation: `get`, `put`, `lock`, `unlock`, ...
        op: &'static str,
        /// The store's error, as text.
        error: String,
    },
}

impl Event for CacheEvent {
    fn layer_name(&self) -> &str {
        match self {
            Self::Hit { name }
            | Self::Miss { name }
            | Self::Coalesced { name }
            | Self::Stale { name }
            | Self::StaleIfError { name }
            | Self::Unusable { name }
            | Self::FillFailed { name }
            | Self::StoreFailed { name, .. } => name,
        }
    }

    /// `hit`, `miss`, `coalesced`, `stale`, `stale_if_error`, `unusable`, `fill_failed` or
    /// `store_failed`.
    fn kind(&self) -> &'static str {
        match self {
            Self::Hit { .. } => "hit",
            Self::Miss { .. } => "miss",
            Self::Coalesced { .. } => "coalesced",
            Self::Stale { .. } => "stale",
            Self::StaleIfError { .. } => "stale_if_error",
            Self::Unusable { .. } => "unusable",
            Self::FillFailed { .. } => "fill_failed",
            Self::StoreFailed { .. } => "store_failed",
        }
    }
}
