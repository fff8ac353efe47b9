//! The sliding windows the failure and slow-call rates are measured over, both lock-free.
//!
//! - [`CountWindow`]: the last `size` calls. A ring of one-byte slots and three counters. Recording
//!   a call claims the next slot with one `fetch_add`, swaps the outcome in, and adjusts the counters
//!   by the difference between the new outcome and the one it pushed out, so the counters equal the
//!   ring's content once concurrent recorders are done.
//! - [`TimeWindow`]: the calls of the last `span`, in `buckets` buckets. Each bucket counts the
//!   calls of one slice of time and is recycled when time comes round to it again; the window's
//!   counts are the sum of the buckets still inside the span.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use crate::clock::Nanos;

const EMPTY: u8 = 0;
const FILLED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

/// The counts in a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

/// A count-based or time-based window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records one call (at `now`, for the time window) and returns the counts after it.
    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, now: Nanos) -> Counts {
        match self {
            Self::Count(w) => w.record(failed, slow),
            Self::Time(w) => w.record(failed, slow, now),
        }
    }

    pub(crate) fn counts(&self, now: Nanos) -> Counts {
        match self {
            Self::Count(w) => w.counts(),
            Self::Time(w) => w.counts(now),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }

    /// Whether recording needs the time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Self::Time(_))
    }
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// Adds the difference `new - old` (each 0 or 1) to `counter`, returning its value after.
#[inline]
fn adjust(counter: &AtomicU32, old: bool, new: bool) -> u32 {
    match (old, new) {
        (false, true) => counter.fetch_add(1, Ordering::Relaxed) + 1,
        (true, false) => counter.fetch_sub(1, Ordering::Relaxed) - 1,
        _ => counter.load(Ordering::Relaxed),
    }
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(EMPTY)).collect(),
            head: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Counts {
        let i = self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let new = FILLED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let old = self.slots[i as usize].swap(new, Ordering::AcqRel);
        Counts {
            calls: adjust(&self.calls, old != EMPTY, true),
            failures: adjust(&self.failures, old & FAILED != 0, failed),
            slow: adjust(&self.slow, old & SLOW != 0, slow),
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    /// Empties the window. Callers serialise resets with transitions; a call recorded concurrently
    /// with a reset may survive it.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(EMPTY, Ordering::Relaxed);
        }
        self.calls.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which slice of time (`now / width`, plus one so that 0 means never used) this bucket counts.
    slice: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    width: Nanos,
}

impl TimeWindow {
    /// A window of `buckets` slices of `width` nanoseconds each.
    pub(crate) fn new(width: Nanos, buckets: u32) -> Self {
        Self {
            buckets: (0..buckets.max(1)).map(|_| Bucket::default()).collect(),
            width: width.max(1),
        }
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, now: Nanos) -> Counts {
        let slice = now / self.width + 1;
        let bucket = &self.buckets[(slice % self.buckets.len() as u64) as usize];
        let seen = bucket.slice.load(Ordering::Acquire);
        if seen != slice
            && bucket
                .slice
                .compare_exchange(seen, slice, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This slice's first call recycles the bucket. A call racing with the recycling may be
            // lost from it: the window is a measurement, not an account.
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.counts(now)
    }

    /// The sum of the buckets whose slice is within the last `buckets` slices up to `now`.
    pub(crate) fn counts(&self, now: Nanos) -> Counts {
        let current = now / self.width + 1;
        let oldest = (current + 1).saturating_sub(self.buckets.len() as u64);
        let mut c = Counts::default();
        for b in self.buckets.iter() {
            let slice = b.slice.load(Ordering::Acquire);
            if slice >= oldest && slice <= current {
                c.calls += b.calls.load(Ordering::Relaxed);
                c.failures += b.failures.load(Ordering::Relaxed);
                c.slow += b.slow.load(Ordering::Relaxed);
            }
        }
        c
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.slice.store(0, Ordering::Relaxed);
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(calls: u32, failures: u32, slow: u32) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn count_window_follows_the_last_n_outcomes() {
        let w = CountWindow::new(3);
        assert_eq!(w.record(true, false), c(1, 1, 0));
        assert_eq!(w.record(false, true), c(2, 1, 1));
        assert_eq!(w.record(true, true), c(3, 2, 2));
        // The first failure slides out.
        assert_eq!(w.record(false, false), c(3, 1, 2));
        assert_eq!(w.record(false, false), c(3, 1, 1));
        assert_eq!(w.record(false, false), c(3, 0, 0));
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn concurrent_recorders_leave_exact_counts() {
        let w = CountWindow::new(64);
        std::thread::scope(|s| {
            for t in 0..2 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..100_000u32 {
                        w.record((i + t) % 4 == 0, (i + t) % 3 == 0);
                    }
                });
            }
        });
        let has = |bit| {
            w.slots
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) & bit != 0)
                .count() as u32
        };
        assert_eq!(w.counts(), c(64, has(FAILED), has(SLOW)));
    }

    #[test]
    fn time_window_forgets_calls_older_than_its_span() {
        // 4 buckets of 10 ns: a span of 40 ns.
        let w = TimeWindow::new(10, 4);
        assert_eq!(w.record(true, false, 5), c(1, 1, 0));
        assert_eq!(w.record(false, false, 15), c(2, 1, 0));
        assert_eq!(w.record(false, true, 39), c(3, 1, 1));
        // At 40 the slice of 0-9 has left the span.
        assert_eq!(w.counts(40), c(2, 0, 1));
        // The bucket of 0-9 is recycled for 40-49.
        assert_eq!(w.record(true, false, 41), c(3, 1, 1));
        assert_eq!(w.counts(1_000), Counts::default());
    }
}
