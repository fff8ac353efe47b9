//! The count-based sliding window: the outcomes of the last `size` calls, lock-free.
//!
//! A ring of one-byte slots and three counters. Recording a call claims the next slot with one
//! `fetch_add`, swaps the outcome in, and adjusts the counters by the difference between the new
//! outcome and the one it pushed out of the window, so the counters always equal the ring's content
//! once concurrent recorders are done. No lock is taken: closed-state calls never wait on each other.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const EMPTY: u8 = 0;
const SUCCESS: u8 = 1;
const FAILURE: u8 = 2;

/// The counts in a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(EMPTY)).collect(),
            head: AtomicU64::new(0),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
        }
    }

    /// Records one call and returns the window's counts after it.
    #[inline]
    pub(crate) fn record(&self, failed: bool) -> Counts {
        let i = self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let new = if failed { FAILURE } else { SUCCESS };
        let old = self.slots[i as usize].swap(new, Ordering::AcqRel);
        let mut calls = self.calls.load(Ordering::Relaxed);
        if old == EMPTY {
            calls = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        }
        let failures = match (old == FAILURE, failed) {
            (false, true) => self.failures.fetch_add(1, Ordering::Relaxed) + 1,
            (true, false) => self.failures.fetch_sub(1, Ordering::Relaxed) - 1,
            _ => self.failures.load(Ordering::Relaxed),
        };
        Counts { calls, failures }
    }

    pub(crate) fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
        }
    }

    /// Empties the window (on closing the circuit). Callers serialise resets with transitions; a
    /// call recorded concurrently with a reset may survive it.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(EMPTY, Ordering::Relaxed);
        }
        self.calls.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_the_last_n_outcomes() {
        let w = CountWindow::new(3);
        assert_eq!(
            w.record(true),
            Counts {
                calls: 1,
                failures: 1
            }
        );
        assert_eq!(
            w.record(false),
            Counts {
                calls: 2,
                failures: 1
            }
        );
        assert_eq!(
            w.record(true),
            Counts {
                calls: 3,
                failures: 2
            }
        );
        // The first failure slides out.
        assert_eq!(
            w.record(false),
            Counts {
                calls: 3,
                failures: 1
            }
        );
        assert_eq!(
            w.record(false),
            Counts {
                calls: 3,
                failures: 1
            }
        );
        assert_eq!(
            w.record(false),
            Counts {
                calls: 3,
                failures: 0
            }
        );
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
                        w.record((i + t) % 4 == 0);
                    }
                });
            }
        });
        let failures = w
            .slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) == FAILURE)
            .count();
        assert_eq!(
            w.counts(),
            Counts {
                calls: 64,
                failures: failures as u32
            }
        );
    }
}
