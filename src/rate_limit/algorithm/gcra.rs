//! GCRA: the generic cell rate algorithm, as in governor and the IETF/ATM literature.
//!
//! State is one number, the theoretical arrival time (TAT) of the next request, in nanoseconds on the
//! store's clock. A request at `now` is admitted when, after adding one emission interval, the TAT is
//! no further ahead of `now` than the tolerance (`burst * emission`). A key whose TAT is not after
//! `now` is in exactly the state of a key never seen, which is what makes eviction of idle keys
//! lossless.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Decision;
use crate::clock::Nanos;
use crate::rate_limit::quota::Limits;

/// Decides one request at `now` against the stored `tat`; returns the decision and, when admitted,
/// the new TAT to store.
#[cfg(test)]
pub(crate) fn decide(limits: &Limits, tat: Nanos, now: Nanos) -> (Decision, Option<Nanos>) {
    decide_units(limits, tat, now, 1)
}

/// Decides a request of `cost` units at `now` against the stored `tat`; returns the decision and,
/// when admitted with a cost above zero, the new TAT to store.
///
/// Admitted when `max(tat, now) + cost * emission - now <= tolerance`. A cost above the burst can
/// never be admitted: refused with no retry time ([`Decision::exceeds_capacity`]). A cost of zero is
/// admitted without spending.
#[inline(always)]
pub(crate) fn decide_units(
    limits: &Limits,
    tat: Nanos,
    now: Nanos,
    cost: u32,
) -> (Decision, Option<Nanos>) {
    let base = tat.max(now);
    if cost > limits.burst {
        return (Decision::over_capacity(limits.limit, base - now), None);
    }
    let new_tat = base.saturating_add(limits.emission * u64::from(cost));
    let ahead = new_tat - now;
    if ahead > limits.tolerance {
        // Admitted once new_tat - later <= tolerance.
        let retry_after = ahead - limits.tolerance;
        let decision = Decision::refused(limits.limit, base - now, retry_after);
        (decision, None)
    } else {
        // Remaining: how many more emission intervals fit under the tolerance.
        let slack = limits.tolerance - ahead;
        let decision = Decision::admitted(limits.limit, slack, limits.emission, ahead);
        (decision, (cost > 0).then_some(new_tat))
    }
}

/// Whether a key in state `tat` is indistinguishable from a fresh one at `now`.
#[inline]
pub(crate) fn is_idle(tat: Nanos, now: Nanos) -> bool {
    tat <= now
}

/// A lock-free GCRA cell: one atomic word.
#[derive(Debug, Default)]
pub(crate) struct GcraCell {
    tat: AtomicU64,
}

impl GcraCell {
    /// Decides at `now`, the clock never read again (the unit tests' fixed instants).
    #[cfg(test)]
    pub(crate) fn check(&self, limits: &Limits, now: Nanos) -> Decision {
        self.check_with(limits, now, || now)
    }

    /// Decides at `now`, reading the time again with `reread` each time another decision wins
    /// the race for the cell, and once more before refusing: another decision may have read the
    /// clock after `now` and spent before this one loaded the cell, and deciding at the older `now`
    /// against its newer TAT would refuse by the few nanoseconds between the two reads (five
    /// concurrent requests on a quota of five saw one refused, with a `retry_after` of 107 ns). The
    /// clock is read again only under contention or on a refusal.
    #[inline]
    pub(crate) fn check_with(
        &self,
        limits: &Limits,
        now: Nanos,
        reread: impl FnMut() -> Nanos,
    ) -> Decision {
        self.check_units(limits, now, 1, reread)
    }

    /// [`check_with`](Self::check_with) for `cost` units: [`check_traced`](Self::check_traced)'s
    /// decision (inlined, the trace it does not use costs nothing).
    #[inline]
    pub(crate) fn check_units(
        &self,
        limits: &Limits,
        now: Nanos,
        cost: u32,
        reread: impl FnMut() -> Nanos,
    ) -> Decision {
        self.check_traced(limits, now, cost, reread).0
    }

    /// Decides `cost` units at `now` as [`check_with`](Self::check_with) says (the clock read again
    /// on a lost race and once before a refusal), also returning, when spent, the spend's start (the TAT
    /// or `now`, whichever is later: a TAT in the past is the same state as `now`) and the TAT
    /// after it, so that [`undo`](Self::undo) takes back exactly `cost` emission intervals.
    #[inline]
    pub(crate) fn check_traced(
        &self,
        limits: &Limits,
        mut now: Nanos,
        cost: u32,
        mut reread: impl FnMut() -> Nanos,
    ) -> (Decision, Option<(Nanos, Nanos)>) {
        let mut current = self.tat.load(Ordering::Acquire);
        let mut reread_on_refusal = true;
        loop {
            let (decision, next) = decide_units(limits, current, now, cost);
            let Some(next) = next else {
                if reread_on_refusal && current > now {
                    // Refused against a TAT another decision moved: decide again at a fresh now.
                    reread_on_refusal = false;
                    let later = reread();
                    if later > now {
                        now = later;
                        continue;
                    }
                }
                return (decision, None);
            };
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (decision, Some((current.max(now), next))),
                Err(actual) => {
                    current = actual;
                    now = now.max(reread());
                }
            }
        }
    }

    /// The decision for `cost` units at `now`, nothing spent.
    #[inline]
    pub(crate) fn peek(&self, limits: &Limits, now: Nanos, cost: u32) -> Decision {
        decide_units(limits, self.tat.load(Ordering::Acquire), now, cost).0
    }

    /// Stores `new` if the cell still holds `old`.
    #[inline]
    pub(crate) fn replace(&self, old: Nanos, new: Nanos) -> bool {
        self.tat
            .compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Takes back a spend that moved the TAT from `old` (its start, as
    /// [`check_traced`](Self::check_traced) returns it) to `new`, when a decision across several
    /// cells could not complete: exactly when nothing else spent meanwhile, otherwise by the
    /// spend's length, `new - old`, so a spend made on top of ours stays. Two spends taken back
    /// in the other order than they were made each remove their own length.
    ///
    /// Two earlier forms lost units: measuring the length from the TAT before the spend (when
    /// that was in the past) took back the idle time too, and with it another decision's spend;
    /// and a floor at `old` kept the later of two spends taken back first from going below its
    /// own start, leaving one emission interval spent for nothing (a set test saw a limit end
    /// full with half its units admitted).
    pub(crate) fn undo(&self, old: Nanos, new: Nanos) {
        if self.replace(new, old) {
            return;
        }
        let spent = new - old.min(new);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(spent))
            });
    }

    #[inline]
    pub(crate) fn is_idle(&self, now: Nanos) -> bool {
        is_idle(self.tat.load(Ordering::Acquire), now)
    }

    /// The TAT, used to pick which busy keys to forget first when a store is full.
    #[inline]
    pub(crate) fn due(&self) -> Nanos {
        self.tat.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::quota::{Algorithm, Quota};
    use std::time::Duration;

    const S: u64 = 1_000_000_000;

    fn limits(q: Quota) -> Limits {
        q.validate(Algorithm::Gcra).unwrap()
    }

    #[test]
    fn a_decision_with_an_older_clock_read_is_decided_again_before_it_refuses() {
        // Four decisions read the clock at `later` and spent; a fifth read it 107 ns earlier and
        // loads the cell only now (no race lost, so no reread on that account). At its own `now`
        // it would be refused by 107 ns; read again, the clock says `later`, and it is admitted.
        let l = limits(Quota::per_hour(5));
        let cell = GcraCell::default();
        let later = 1_000 * S + 107;
        for _ in 0..4 {
            assert!(cell.check(&l, later).is_allowed());
        }
        let mut reads = 0;
        let d = cell.check_units(&l, later - 107, 1, || {
            reads += 1;
            later
        });
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(d.remaining(), 0);
        assert_eq!(reads, 1);
        // A real refusal reads the clock once more and stays a refusal (nothing spent).
        let mut reads = 0;
        let refused = cell.check_units(&l, later, 1, || {
            reads += 1;
            later + 1
        });
        assert!(!refused.is_allowed());
        assert_eq!(reads, 1);
        let (d, moved) = cell.check_traced(&l, later + 1, 1, || later + 2);
        assert!(!d.is_allowed() && moved.is_none());
        // With a clock that reads the same instant again (paused time), the older read is
        // refused by its 107 ns: the second decision follows the clock, it does not guess.
        let cell = GcraCell::default();
        for _ in 0..4 {
            assert!(cell.check(&l, later).is_allowed());
        }
        assert!(!cell.check(&l, later - 107).is_allowed());
    }

    #[test]
    fn ten_per_minute_admits_ten_then_spaces_by_six_seconds() {
        let l = limits(Quota::per_minute(10));
        let cell = GcraCell::default();
        let now = 5 * S;
        for i in 0..10 {
            let d = cell.check(&l, now);
            assert!(d.is_allowed(), "request {i}");
            assert_eq!(d.remaining(), 9 - i);
            assert_eq!(d.reset(), Duration::from_secs(6 * (u64::from(i) + 1)));
        }
        let d = cell.check(&l, now);
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Duration::from_secs(6));
        assert_eq!(d.reset(), Duration::from_secs(60));
        // Refusals do not consume anything.
        assert_eq!(cell.check(&l, now), d);
        // One emission interval later, exactly one more.
        assert!(!cell.check(&l, now + 6 * S - 1).is_allowed());
        let d = cell.check(&l, now + 6 * S);
        assert!(d.is_allowed());
        assert_eq!(d.remaining(), 0);
        assert!(!cell.check(&l, now + 6 * S).is_allowed());
        // After the full period, the whole burst again.
        assert!(cell.is_idle(now + 66 * S));
        let later = now + 66 * S;
        assert_eq!(cell.check(&l, later).remaining(), 9);
    }

    #[test]
    fn burst_is_independent_of_rate() {
        let l = limits(Quota::per_second(10).burst(2));
        let cell = GcraCell::default();
        assert!(cell.check(&l, 0).is_allowed());
        assert!(cell.check(&l, 0).is_allowed());
        let d = cell.check(&l, 0);
        assert!(!d.is_allowed());
        assert_eq!(d.retry_after(), Duration::from_millis(100));
        assert!(cell.check(&l, S / 10).is_allowed());
    }

    #[test]
    fn undo_keeps_a_spend_made_on_top_of_the_one_taken_back() {
        let l = limits(Quota::per_second(1).burst(10));
        let cell = GcraCell::default();
        // An idle key (TAT 0) at 100 s: the spend starts at now, not at the stale TAT.
        let (d, moved) = cell.check_traced(&l, 100 * S, 1, || 100 * S);
        assert!(d.is_allowed());
        assert_eq!(moved, Some((100 * S, 101 * S)));
        // Another decision spends on top before the first is taken back.
        assert!(cell.check(&l, 100 * S).is_allowed());
        assert_eq!(cell.due(), 102 * S);
        let (old, new) = moved.unwrap();
        cell.undo(old, new);
        // Only the first spend is gone: the second's interval remains.
        assert_eq!(cell.due(), 101 * S);
        // Two spends taken back in the other order: each removes its own length.
        let (_, x) = cell.check_traced(&l, 100 * S, 1, || 100 * S);
        let (_, y) = cell.check_traced(&l, 100 * S, 1, || 100 * S);
        let ((xo, xn), (yo, yn)) = (x.unwrap(), y.unwrap());
        assert_eq!((xo, xn, yo, yn), (101 * S, 102 * S, 102 * S, 103 * S));
        cell.undo(xo, xn);
        cell.undo(yo, yn);
        assert_eq!(cell.due(), 101 * S);
        // Uncontended, the undo restores the start exactly.
        let (_, moved) = cell.check_traced(&l, 100 * S, 3, || 100 * S);
        let (old, new) = moved.unwrap();
        assert_eq!((old, new), (101 * S, 104 * S));
        cell.undo(old, new);
        assert_eq!(cell.due(), 101 * S);
    }

    #[test]
    fn saturates_instead_of_overflowing() {
        let l = limits(Quota::per_second(1));
        let (d, next) = decide(&l, u64::MAX - 10, u64::MAX - 20);
        assert!(d.is_allowed());
        assert_eq!(next, Some(u64::MAX));
        let (d, next) = decide(&l, u64::MAX, u64::MAX - 2 * S);
        assert!(!d.is_allowed());
        assert_eq!(next, None);
    }
}
