//! Time sources.
//!
//! Every decision in this crate is a pure function of some state and "now". "Now" comes from a
//! [`Clock`], expressed as nanoseconds since the clock's own epoch. The default, [`TokioClock`], reads
//! [`tokio::time::Instant`], so tests can freeze and advance time with
//! `tokio::time::pause` / `tokio::time::advance` (or `#[tokio::test(start_paused = true)]`).
//! [`ManualClock`] is moved by hand, for unit tests and benchmarks that run outside a runtime.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! assert_eq!(clock.now(), 0);
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now(), 1_500_000_000);
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds since a clock's epoch.
pub type Nanos = u64;

/// A monotonic time source.
///
/// Implementations must never go backwards. Clones share one timeline.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Nanoseconds elapsed since this clock's epoch.
    fn now(&self) -> Nanos;
}

/// The default clock: [`tokio::time::Instant`], which honours paused time in tests.
///
/// Its epoch is the moment it was created.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    epoch: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    #[inline]
    fn now(&self) -> Nanos {
        duration_to_nanos(self.epoch.elapsed())
    }
}

/// A clock that only moves when told to. Clones share one timeline.
#[derive(Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_to_nanos(by), Ordering::AcqRel);
    }

    /// Sets the clock to `at` nanoseconds. Used to replay recorded times; it must not go backwards.
    ///
    /// # Panics
    ///
    /// Panics if `at` is earlier than the current time.
    pub fn set(&self, at: Nanos) {
        let prev = self.now.swap(at, Ordering::AcqRel);
        assert!(
            at >= prev,
            "ManualClock::set must not move time backwards ({prev} -> {at})"
        );
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Nanos {
        self.now.load(Ordering::Acquire)
    }
}

/// Converts a duration to nanoseconds, saturating at `u64::MAX` (about 584 years).
#[inline]
pub(crate) fn duration_to_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
