//! Sliding-window counter (as in Cloudflare's and nginx's descriptions).
//!
//! Time is cut into fixed windows of one period. A request at `now` is admitted when
//! `prev * (period - elapsed) / period + curr + 1 <= limit`, where `curr` counts the requests admitted
//! in the current window, `prev` those of the window before, and `elapsed` is how far `now` is into
//! the current window. All arithmetic is exact integer arithmetic in `u128`, so there is no rounding to
//! disagree about between backends.

use std::sync::Mutex;

use super::Decision;
use crate::clock::Nanos;
use crate::rate_limit::quota::Limits;

/// Counts of one key.
///
/// The window is kept as its start time and the period it was counted under, not as an index, so
/// that a limit whose period changes at run time keeps its counts: each count goes to the window of
/// the new period holding the latest instant it can have been made at, so none is forgotten before
/// it would have been under its own period (at worst one counts longer than it would have). The
/// state alone says when it stops counting (the store judges idleness by it, in the period of its
/// last decision: a key not decided since the change is swept by the period it was counted under).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Window {
    /// When the window `curr` counts began (a multiple of `period`), in nanoseconds.
    pub(crate) start: u64,
    /// The period the window was last decided under; 0 for a key never decided.
    pub(crate) period: u64,
    pub(crate) prev: u32,
    pub(crate) curr: u32,
}

impl Window {
    /// The counts as seen at `now`, in the window of `period` beginning at `start` (rolling
    /// forward if time moved on; [`rebased`](Self::rebased) if they were counted under another
    /// period). A window of the same period that begins later than `start`'s (a read of the clock
    /// older than the counts: the store reads it under the cell's lock, so only a caller of
    /// [`decide_units`] with an old instant) is taken as it is, its counts current: never
    /// forgotten.
    #[inline]
    pub(crate) fn at(self, start: u64, period: u64, now: Nanos) -> Self {
        if self.period != period && self.period != 0 {
            self.rebased(start, period, now)
        } else if self.start >= start.saturating_add(period) {
            self
        } else if self.start >= start {
            Self {
                start,
                period,
                ..self
            }
        } else if self.start.saturating_add(period) >= start {
            Self {
                start,
                period,
                prev: self.curr,
                curr: 0,
            }
        } else {
            // Two or more windows later (or a fresh key): nothing counts any more.
            Self {
                start,
                period,
                prev: 0,
                curr: 0,
            }
        }
    }

    /// Counts made under another period, seen at `now` in the window of `period` beginning at
    /// `start`: each goes to the window holding the latest instant it can have been made at
    /// (`curr`'s: `now` or its window's end; `prev`'s: its window's end), this one or the one
    /// before (or, for a window that begins after `start`'s, this one), or no longer counts. None
    /// is forgotten before it would have been under the period it was made under. (With the same
    /// period this is the roll of [`at`](Self::at).) `sliding_window.lua` moves them the same way.
    #[cold]
    fn rebased(self, start: u64, period: u64, now: Nanos) -> Self {
        let mut w = Self {
            start,
            period,
            prev: 0,
            curr: 0,
        };
        let mut place = |latest: u64, n: u32| {
            if latest >= start {
                w.curr = w.curr.saturating_add(n);
            } else if latest.saturating_add(period) >= start {
                w.prev = w.prev.saturating_add(n);
            }
        };
        place(
            now.min(self.start.saturating_add(self.period - 1)),
            self.curr,
        );
        if let Some(latest) = self.start.checked_sub(1) {
            place(latest, self.prev);
        }
        w
    }

    /// Whether nothing counted here counts at `now` any more (or nothing was counted): the key
    /// can be forgotten.
    #[inline]
    pub(crate) fn is_idle(self, now: Nanos) -> bool {
        (self.prev == 0 && self.curr == 0)
            || now >= self.start.saturating_add(self.period.saturating_mul(2))
            || (self.curr == 0 && now >= self.start.saturating_add(self.period))
    }

    /// When the key, forgotten at `now`, would have earned back what it has spent: its weighted
    /// count at `now`, at `limit` per period. The order a full shard forgets live keys in, as
    /// GCRA's theoretical arrival time orders its keys: ordered by when they become idle instead,
    /// every key counted in the current window would tie, and a key over its limit would be
    /// forgotten (and start afresh) as readily as one that made a single request.
    pub(crate) fn due(self, limit: u32, now: Nanos) -> Nanos {
        let period = u128::from(self.period.max(1));
        let into = u128::from(now.saturating_sub(self.start));
        let (prev, curr) = (u128::from(self.prev), u128::from(self.curr));
        let weighted = if into < period {
            prev * (period - into) / period + curr
        } else if into < 2 * period {
            curr * (2 * period - into) / period
        } else {
            0
        };
        let earn_back = weighted * period / u128::from(limit.max(1));
        now.saturating_add(u64::try_from(earn_back).unwrap_or(u64::MAX))
    }
}

/// Decides a request of `cost` units at `now`: admitted when the weighted count plus `cost` is at
/// most the limit. Returns the decision and the window to store (unchanged when refused or for a
/// cost of zero, apart from rolling forward). A cost above the limit is refused with no retry
/// time ([`Decision::exceeds_capacity`]).
pub(crate) fn decide_units(
    limits: &Limits,
    stored: Window,
    now: Nanos,
    cost: u32,
) -> (Decision, Window) {
    let period = u128::from(limits.period);
    let limit = u128::from(limits.limit);
    let elapsed = now % limits.period;
    let w = stored.at(now - elapsed, limits.period, now);
    let elapsed = u128::from(elapsed);
    let (prev, curr) = (u128::from(w.prev), u128::from(w.curr));
    let units = u128::from(cost);
    // Everything below is scaled by `period` to stay in integers.
    let weighted_prev = prev * (period - elapsed);
    let capacity = limit * period;
    let used = weighted_prev + (curr + units) * period;
    let to_window_end = period - elapsed;
    if units > limit {
        let reset = if curr > 0 {
            to_window_end + period
        } else {
            to_window_end
        };
        return (Decision::over_capacity(limits.limit, reset as u64), w);
    }
    // A cost of zero passes even past the limit (counts spent under a larger one, before a
    // change at run time): it spends nothing, so it has nothing to wait for.
    if used <= capacity || units == 0 {
        let next = Window {
            curr: w.curr.saturating_add(cost),
            ..w
        };
        // Everything counted now has decayed by the end of the next window.
        let reset = (to_window_end + period) as u64;
        // Remaining is (capacity - used) / period; divide now only if the numerator is too large to
        // keep for later.
        let slack = capacity.saturating_sub(used);
        let d = match u64::try_from(slack) {
            Ok(slack) => Decision::admitted(limits.limit, slack, limits.period, reset),
            Err(_) => {
                let remaining = (slack / period) as u64;
                Decision::admitted(limits.limit, remaining, 1, reset)
            }
        };
        (d, next)
    } else {
        let retry_after = if curr + units <= limit {
            // Still room in this window once enough of the previous one has slid out:
            // prev * (period - e) <= (limit - curr - cost) * period.
            let needed = period - ((limit - curr - units) * period) / prev;
            needed - elapsed
        } else {
            // Wait for the next window, where this window's count becomes `prev`.
            let needed = period - ((limit - units) * period) / curr;
            to_window_end + needed
        };
        let reset = if curr > 0 {
            to_window_end + period
        } else {
            to_window_end
        };
        let d = Decision::refused(limits.limit, reset as u64, retry_after as u64);
        (d, w)
    }
}

/// One key's sliding-window state behind a tiny mutex (held for a few arithmetic operations).
#[derive(Debug, Default)]
pub(crate) struct WindowCell {
    window: Mutex<Window>,
}

impl WindowCell {
    #[cfg(test)]
    #[inline]
    pub(crate) fn check(&self, limits: &Limits, now: Nanos) -> Decision {
        self.check_units(limits, 1, false, || now)
    }

    /// Locks the cell, then reads the time with `clock`, and decides `cost` units; stores the
    /// outcome unless `peek`.
    ///
    /// The clock is read under the lock so that no decision sees counts stored with a later clock
    /// read than its own: read before the lock, a decision preempted between the two could come
    /// to counts another one had rolled into the next window, and take them for a window two
    /// behind (forgetting them, so admitting too much), or weigh the previous window more than at
    /// its own time (refusing by the nanoseconds between the reads).
    #[inline]
    pub(crate) fn check_units(
        &self,
        limits: &Limits,
        cost: u32,
        peek: bool,
        clock: impl FnOnce() -> Nanos,
    ) -> Decision {
        // The traced decision with its trace dropped (inlined: the trace is never built).
        self.check_traced(limits, cost, peek, clock).0
    }

    /// [`check_units`](Self::check_units), also returning the counts before and after when
    /// spent.
    #[inline(always)]
    pub(crate) fn check_traced(
        &self,
        limits: &Limits,
        cost: u32,
        peek: bool,
        clock: impl FnOnce() -> Nanos,
    ) -> (Decision, Option<(Window, Window)>) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let old = *w;
        let (decision, next) = decide_units(limits, old, clock(), cost);
        if peek {
            return (decision, None);
        }
        *w = next;
        let spent = decision.is_allowed() && cost > 0;
        (decision, spent.then_some((old, next)))
    }

    /// Takes back `cost` units counted in `new`'s window, when a decision across several cells
    /// could not complete.
    pub(crate) fn undo(&self, new: Window, cost: u32) {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.start == new.start {
            w.curr = w.curr.saturating_sub(cost);
        }
    }

    /// Whether the key's counts have decayed to nothing at `now` (judged by the period they were
    /// counted under).
    #[inline]
    pub(crate) fn is_idle(&self, now: Nanos) -> bool {
        self.snapshot().is_idle(now)
    }

    /// [`Window::due`]: used to pick which busy keys to forget first.
    #[inline]
    pub(crate) fn due(&self, limit: u32, now: Nanos) -> Nanos {
        self.snapshot().due(limit, now)
    }

    fn snapshot(&self) -> Window {
        *self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::quota::{Algorithm, Quota};
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn limits(q: Quota) -> Limits {
        q.validate(Algorithm::SlidingWindow).unwrap()
    }

    #[test]
    fn fresh_key_spends_its_limit_then_waits_for_the_next_window() {
        let l = limits(Quota::per_minute(10));
        let cell = WindowCell::default();
        for i in 0..10 {
            let d = cell.check(&l, 0);
            assert!(d.is_allowed(), "{i}");
            assert_eq!(d.remaining(), 9 - i);
        }
        let d = cell.check(&l, 0);
        assert!(!d.is_allowed());
        // At the start of the next window prev = 10 weighs fully; the first slot frees after 6 s.
        assert_eq!(d.retry_after(), Duration::from_secs(66));
        assert!(!cell.check(&l, 66 * S - 1).is_allowed());
        assert!(cell.check(&l, 66 * S).is_allowed());
        assert!(!cell.check(&l, 66 * S).is_allowed());
    }

    #[test]
    fn retry_after_within_the_window() {
        let l = limits(Quota::per_second(4));
        let cell = WindowCell::default();
        for _ in 0..4 {
            assert!(cell.check(&l, 0).is_allowed());
        }
        // Next window, prev = 4 weighs 4 at the start: one slot frees at 1/4 of the window.
        let d = cell.check(&l, S);
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Duration::from_millis(250));
        assert!(cell.check(&l, S + 250_000_000).is_allowed());
    }

    #[test]
    fn the_clock_is_read_under_the_lock() {
        // A decision whose time was read before another rolled the counts into the next window
        // would come to counts stored with a later time than its own. Reading the clock under the
        // lock, it cannot.
        let l = limits(Quota::per_second(4));
        let cell = WindowCell::default();
        let late = S - 10;
        assert!(cell.check(&l, late).is_allowed());
        for _ in 0..3 {
            assert!(cell.check(&l, S + 10).is_allowed());
        }
        // Even so, a stale instant takes a later window's counts as current: never forgotten
        // (kept as an index, they once read as two windows behind and counted for nothing).
        let (stale, kept) = decide_units(&l, cell.snapshot(), late, 1);
        assert!(!stale.is_allowed(), "{stale:?}");
        assert_eq!(kept, cell.snapshot());
        // The order now: the clock read after the lock, so at least the others' time.
        let mut reads = 0;
        let d = cell.check_units(&l, 1, true, || {
            reads += 1;
            // The lock is held while the clock is read.
            assert!(cell.window.try_lock().is_err());
            S + 10
        });
        assert_eq!(reads, 1);
        assert!(!d.is_allowed(), "{d:?}");
    }

    #[test]
    fn idle_after_two_windows() {
        let l = limits(Quota::per_second(4));
        let cell = WindowCell::default();
        assert!(cell.check(&l, S / 2).is_allowed());
        assert!(!cell.is_idle(S + S / 2));
        assert!(cell.is_idle(2 * S));
        assert_eq!(cell.due(4, 2 * S), 2 * S, "nothing left to earn back");
    }

    #[test]
    fn due_orders_keys_by_what_they_have_spent() {
        let l = limits(Quota::per_second(4));
        let light = WindowCell::default();
        let spent = WindowCell::default();
        assert!(light.check(&l, S / 4).is_allowed());
        for _ in 0..4 {
            assert!(spent.check(&l, S / 4).is_allowed());
        }
        let now = S / 2;
        // One request earns back in a quarter second, four in a whole one.
        assert_eq!(light.due(4, now), now + S / 4);
        assert_eq!(spent.due(4, now), now + S);
        // In the next window the counts decay with the previous window's weight.
        let later = S + S / 2;
        assert_eq!(spent.due(4, later), later + S / 2);
        assert!(light.due(4, later) < spent.due(4, later));
        // An exhausted key of the window before stays ahead of a fresh key of this one.
        let fresh = WindowCell::default();
        assert!(fresh.check(&l, later).is_allowed());
        assert!(fresh.due(4, later) < spent.due(4, later));
    }
}
