//! In-memory rate-limit store.

use std::fmt;
use std::hash::Hash;

use super::MemoryBackend;
use super::map::{BoundedMap, Expiring};
use crate::backend::BackendError;
use crate::clock::{Clock, Nanos};
use crate::error::ConfigError;
use crate::rate_limit::algorithm::gcra::GcraCell;
use crate::rate_limit::algorithm::sliding_window::WindowCell;
use crate::rate_limit::quota::{Algorithm, Limits};
use crate::rate_limit::{Check, Decision, RateLimitBackend, RateLimitSpec, RateLimitStore};

impl Expiring for GcraCell {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, _: &Limits, now: Nanos) -> bool {
        GcraCell::is_idle(self, now)
    }

    fn due(&self, _: &Limits) -> Nanos {
        GcraCell::due(self)
    }
}

impl Expiring for WindowCell {
    type Context = Limits;

    #[inline]
    fn is_idle(&self, limits: &Limits, now: Nanos) -> bool {
        WindowCell::is_idle(self, limits, now)
    }

    fn due(&self, limits: &Limits) -> Nanos {
        WindowCell::due(self, limits)
    }
}

/// The in-memory [`RateLimitStore`]: lock-free GCRA cells (or tiny per-key mutexes for the sliding
/// window) in a bounded sharded map. Built by [`MemoryBackend`].
///
/// A key type with no data (such as the global key `()`) skips the map altogether: the whole
/// limiter is then one atomic word.
pub struct MemoryRateLimitStore<K, C = crate::clock::TokioClock> {
    limits: Limits,
    clock: C,
    cells: Cells<K>,
}

enum Cells<K> {
    Gcra {
        single: GcraCell,
        map: BoundedMap<K, GcraCell>,
    },
    Window {
        single: WindowCell,
        map: BoundedMap<K, WindowCell>,
    },
}

impl<K, C: fmt::Debug> fmt::Debug for MemoryRateLimitStore<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithm = match self.cells {
            Cells::Gcra { .. } => Algorithm::Gcra,
            Cells::Window { .. } => Algorithm::SlidingWindow,
        };
        f.debug_struct("MemoryRateLimitStore")
            .field("limits", &self.limits)
            .field("algorithm", &algorithm)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, C: Clock> MemoryRateLimitStore<K, C> {
    /// Decides one request for `key` now.
    #[inline]
    pub fn decide(&self, key: &K) -> Decision {
        let now = self.clock.now();
        let limits = &self.limits;
        // Keys without data are all equal: one cell serves them, with no hashing or locking.
        let keyless = std::mem::size_of::<K>() == 0;
        match &self.cells {
            Cells::Gcra { single, .. } if keyless => {
                single.check_with(limits, now, || self.clock.now())
            }
            Cells::Gcra { map, .. } => map.with(key, limits, now, |c| {
                c.check_with(limits, now, || self.clock.now())
            }),
            Cells::Window { single, .. } if keyless => single.check(limits, now),
            Cells::Window { map, .. } => map.with(key, limits, now, |c| c.check(limits, now)),
        }
    }

    /// How many keys the store holds right now (idle ones included until they are swept).
    pub fn len(&self) -> usize {
        match &self.cells {
            Cells::Gcra { map, .. } => map.len(),
            Cells::Window { map, .. } => map.len(),
        }
    }

    /// Whether the store holds no keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most keys the store will hold.
    pub fn capacity(&self) -> usize {
        match &self.cells {
            Cells::Gcra { map, .. } => map.capacity(),
            Cells::Window { map, .. } => map.capacity(),
        }
    }
}

impl<K, C> RateLimitStore<K> for MemoryRateLimitStore<K, C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    type Future = std::future::Pending<Result<Decision, BackendError>>;

    #[inline]
    fn check(&self, key: &K) -> Check<Self::Future> {
        Check::Ready(Ok(self.decide(key)))
    }
}

impl<K, C> RateLimitBackend<K> for MemoryBackend<C>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    C: Clock,
{
    type Store = MemoryRateLimitStore<K, C>;

    fn rate_limit_store(&self, spec: &RateLimitSpec) -> Result<Self::Store, ConfigError> {
        let max_keys = self.checked_max_keys()?;
        let cells = match spec.algorithm {
            Algorithm::Gcra => Cells::Gcra {
                single: GcraCell::default(),
                map: BoundedMap::new(max_keys),
            },
            Algorithm::SlidingWindow => Cells::Window {
                single: WindowCell::default(),
                map: BoundedMap::new(max_keys),
            },
        };
        Ok(MemoryRateLimitStore {
            limits: spec.limits,
            clock: self.clock.clone(),
            cells,
        })
    }
}
