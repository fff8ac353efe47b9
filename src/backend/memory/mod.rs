//! The in-memory backend (default): fast, bounded, per process.
//!
//! Every layer built with it keeps its state in this process only. Memory is bounded: idle keys are
//! dropped without anyone calling anything, and a flood of distinct keys never holds more than
//! [`max_keys`](MemoryBackend::max_keys) of them.
//!
//! # Memory use
//!
//! Measured by the `rate_limit_flood` test, which floods a store with 1,000,000 distinct IP-address
//! keys that all stay active: at its peak (table growth and eviction included) a store holds
//! **53 bytes per key of capacity with GCRA** and **74 with the sliding window**; the test fails
//! above 64 and 96. The default cap of 100,000 keys therefore bounds one limiter at about 5.4 MB
//! (GCRA) or 7.5 MB (sliding window), whatever the traffic. Larger keys (strings, header values)
//! add their own size, and a key limited by more than one limit its other limits' cells (one
//! allocation per key: 16 bytes per limit with GCRA, 40 with the sliding window, rounded up to
//! four limits, and 24 bytes more).
//!
//! The cache's store, [`MemoryCacheStore`] (feature `cache`), is bounded by bytes instead (entries
//! and tables, measured by the `cache_flood` test): see its documentation.
//!
//! # Eviction
//!
//! A GCRA key whose theoretical arrival time has passed, or a sliding-window key whose windows
//! have both slid out, is in exactly the state of a key never seen: dropping it changes no decision.
//! Such idle keys are swept from a shard whenever a key is added to it and at least 10 seconds
//! have passed since its last sweep, and whenever it is full. If a shard is full of keys that are all
//! still active (a flood of distinct clients inside one period), it forgets the eighth of them that
//! would have become idle soonest; those clients start again with a full quota.
//!
//! # Example
//!
//! ```
//! use tower_rampart::backend::MemoryBackend;
//! use tower_rampart::rate_limit::{Quota, RateLimitLayer};
//!
//! let layer = RateLimitLayer::builder()
//!     .quota(Quota::per_second(50))
//!     .backend(MemoryBackend::new().max_keys(10_000))
//!     .build()
//!     .expect("valid configuration");
//! # let _ = layer;
//! ```

#[cfg(feature = "cache")]
mod cache;
#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
pub(crate) mod map;
#[cfg(feature = "rate-limit")]
mod rate_limit;

#[cfg(feature = "cache")]
pub use self::cache::MemoryCacheStore;
#[cfg(feature = "rate-limit")]
pub use self::rate_limit::MemoryRateLimitStore;

use crate::clock::{Clock, TokioClock};

/// The default number of keys one in-memory store holds at most.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

/// Configuration of the in-memory backend. Cheap to clone; each layer built with it gets its own
/// store.
#[derive(Clone, Debug)]
pub struct MemoryBackend<C = TokioClock> {
    max_keys: usize,
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    clock: C,
}

impl MemoryBackend {
    /// The default backend: up to [`DEFAULT_MAX_KEYS`] keys per store, time from
    /// [`tokio::time`].
    pub fn new() -> Self {
        Self {
            max_keys: DEFAULT_MAX_KEYS,
            clock: TokioClock::new(),
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl<C: Clock> MemoryBackend<C> {
    /// At most about `max_keys` keys per store (rounded up to a multiple of the shard count).
    /// Must be at least 1; checked when the layer is built.
    #[must_use]
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// Takes time from `clock` instead of [`tokio::time`] (for benchmarks and simulations).
    #[must_use]
    pub fn clock<C2: Clock>(self, clock: C2) -> MemoryBackend<C2> {
        MemoryBackend {
            max_keys: self.max_keys,
            clock,
        }
    }

    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    fn checked_max_keys(&self) -> Result<usize, crate::ConfigError> {
        if self.max_keys == 0 {
            return Err(crate::ConfigError::new(
                "max_keys",
                "the in-memory backend must be allowed at least 1 key (got 0)",
            ));
        }
        Ok(self.max_keys)
    }
}
