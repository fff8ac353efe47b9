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
    // Kept as `std`'s instant: tokio's `now` (which honours paused time) is read, and the difference
    // taken with one call into `std` rather than through tokio's and `std`'s saturating wrappers.
    epoch: std::time::Instant,
}

impl TokioClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        Self {
            epoch: tokio::time::Instant::now().into_std(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    /// `instructions` bench, `u64/rampart_rate_limit_global`: `epoch.elapsed()` then
    /// `as_nanos()` cost 106 instructions per read (tokio's `elapsed`, `std`'s `duration_since`,
    /// `sub_timespec`, a 128-bit conversion); this form saves the two wrappers and the 128-bit
    /// arithmetic (see README's performance section for the figure after).
    #[inline]
    fn now(&self) -> Nanos {
        let now = tokio::time::Instant::now().into_std();
        match now.checked_duration_since(self.epoch) {
            // 584 years of nanoseconds fit in a u64; a clock running longer saturates.
            Some(d) => d
                .as_secs()
                .saturating_mul(1_000_000_000)
                .saturating_add(u64::from(d.subsec_nanos())),
            None => 0,
        }
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
