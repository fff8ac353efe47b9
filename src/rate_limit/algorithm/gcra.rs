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
    // No decision under one quota leaves the TAT further ahead of its clock than the tolerance,
    // so a TAT that is was spent under a quota of a longer tolerance, before a change at run time
    // (or on a clock that has since stepped back): it counts as spent in full under this one, no
    // more, and the caller writes it back there ([`GcraCell::rebase`]). A key that hit 10 an hour
    // waits one interval of 10 a second once raised to it, not the rest of the hour; the sliding
    // window bounds such debt by one window too. Clamped where it shows (a refusal, a cost of 0):
    // an admission of a cost above 0 is within the tolerance already.
    let base = tat.max(now);
    if cost > limits.burst {
        let behind = (base - now).min(limits.tolerance);
        return (Decision::over_capacity(limits.limit, behind), None);
    }
    let new_tat = base.saturating_add(limits.emission * u64::from(cost));
    let ahead = new_tat - now;
    // A cost of zero passes even with the TAT at the tolerance (all spent): it spends nothing,
    // so it has nothing to wait for.
    if ahead > limits.tolerance && cost > 0 {
        let behind = (base - now).min(limits.tolerance);
        // Admitted once the TAT after the spend is within the tolerance.
        let retry_after =
            behind.saturating_add(limits.emission * u64::from(cost)) - limits.tolerance;
        (Decision::refused(limits.limit, behind, retry_after), None)
    } else {
        let ahead = ahead.min(limits.tolerance);
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
    /// Decides with a clock that reads `now` every time (the unit tests' fixed instants).
    #[cfg(test)]
    pub(crate) fn check(&self, limits: &Limits, now: Nanos) -> Decision {
        self.check_with(limits, || now)
    }

    /// Loads the cell, then reads the time with `clock`, and decides one unit; on a lost race for
    /// the cell, decides again with the TAT that won and the clock read again.
    ///
    /// The load comes first so that no decision sees a TAT spent with a later clock read than its
    /// own: whoever wrote the TAT it loads read the clock before its compare-exchange, which came
    /// before this load, which comes before this read (the clock is monotonic). Reading the clock
    /// first let a decision preempted between the two refuse by the nanoseconds between them (five
    /// concurrent requests on a quota of five saw one refused, with a `retry_after` of 107 ns).
    #[inline(always)]
    pub(crate) fn check_with(&self, limits: &Limits, clock: impl FnMut() -> Nanos) -> Decision {
        self.check_units(limits, 1, clock)
    }

    /// [`check_with`](Self::check_with) for `cost` units: [`check_traced`](Self::check_traced)'s
    /// decision (inlined, the trace it does not use costs nothing).
    #[inline(always)]
    pub(crate) fn check_units(
        &self,
        limits: &Limits,
        cost: u32,
        clock: impl FnMut() -> Nanos,
    ) -> Decision {
        self.check_traced(limits, cost, clock).0
    }

    /// Decides `cost` units as [`check_with`](Self::check_with) says (the cell loaded, then the
    /// clock read), also returning, when spent, the spend's start (the TAT or `now`, whichever is
    /// later: a TAT in the past is the same state as `now`) and the TAT after it, so that
    /// [`undo`](Self::undo) takes back exactly `cost` emission intervals.
    ///
    /// Inlined always, as [`spend_from`](Self::spend_from) is: out of line (`#[inline]` left the
    /// choice to the compiler, which kept a call), `INSTRUCTIONS_ONLY=1 cargo bench --bench
    /// instructions --all-features -- u64/rampart_rate_limit` gave global +266, store two limits
    /// +576 instructions; inlined, +238 and +565.
    #[inline(always)]
    pub(crate) fn check_traced(
        &self,
        limits: &Limits,
        cost: u32,
        mut clock: impl FnMut() -> Nanos,
    ) -> (Decision, Option<(Nanos, Nanos)>) {
        let tat = self.load();
        let now = clock();
        self.spend_from(limits, tat, now, cost, clock)
    }

    /// The TAT, as a decision loads it before it reads the clock (see
    /// [`check_with`](Self::check_with)).
    #[inline(always)]
    pub(crate) fn load(&self) -> Nanos {
        self.tat.load(Ordering::Acquire)
    }

    /// Decides `cost` units at `now` against `tat`, which this cell held when it was loaded
    /// (before `now` was read), and spends them if admitted; on a lost race, decides again with
    /// the TAT that won and the time read again with `clock` (its writer read the clock before
    /// the compare-exchange this one lost). Returns the decision and, when spent, the spend's start
    /// and end as [`check_traced`](Self::check_traced) does.
    #[inline(always)]
    pub(crate) fn spend_from(
        &self,
        limits: &Limits,
        tat: Nanos,
        mut now: Nanos,
        cost: u32,
        mut clock: impl FnMut() -> Nanos,
    ) -> (Decision, Option<(Nanos, Nanos)>) {
        let mut current = tat;
        loop {
            let (decision, next) = decide_units(limits, current, now, cost);
            let Some(next) = next else {
                self.rebase(limits, current, now);
                return (decision, None);
            };
            match self
                .tat
                .compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return (decision, Some((current.max(now), next))),
                Err(actual) => {
                    current = actual;
                    now = now.max(clock());
                }
            }
        }
    }

    /// After a decision that spent nothing (refused, or a cost of 0) against `tat`, loaded before
    /// `now` was read: a TAT further ahead than the tolerance (spent under a quota of a longer
    /// one, see [`decide_units`]) is moved to the tolerance, where the decision counted it, so
    /// that it drains from there; unless another decision has moved it meanwhile.
    #[inline(always)]
    pub(crate) fn rebase(&self, limits: &Limits, tat: Nanos, now: Nanos) {
        let most = now.saturating_add(limits.tolerance);
        if tat > most {
            self.rebase_slow(tat, most);
        }
    }

    #[cold]
    #[inline(never)]
    fn rebase_slow(&self, tat: Nanos, most: Nanos) {
        let _ = self.replace(tat, most);
    }

    /// The decision for `cost` units at `now` against `tat` (as loaded before `now` was read),
    /// nothing spent.
    #[inline]
    pub(crate) fn peek_from(limits: &Limits, tat: Nanos, now: Nanos, cost: u32) -> Decision {
        decide_units(limits, tat, now, cost).0
    }

    /// The decision for `cost` units, nothing spent: the cell loaded, then the clock read.
    #[inline]
    pub(crate) fn peek(
        &self,
        limits: &Limits,
        cost: u32,
        clock: impl FnOnce() -> Nanos,
    ) -> Decision {
        let tat = self.load();
        Self::peek_from(limits, tat, clock(), cost)
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
    /// cells could not complete: exactly when nothing else spent meanwhile; otherwise by at most
    /// the spend's length, `new - old`, and at most what of it is still ahead of the clock,
    /// `new - clock`, read after the TAT is loaded. A spend made on top of ours stays, and the
    /// cell is never left below the TAT it would hold had ours never happened: an undo can only
    /// under-admit.
    ///
    /// Why the clock bounds it: every decision that spent on top read the clock at some `now`
    /// (no later than this read) and spent from `max(tat, now)`, so without our spend the cell
    /// would hold no more than it holds less `new - max(old, now)`: taking back that much leaves
    /// it at or above where it would be had ours never happened. A decision that came more than
    /// our spend's length after its start (at `now >= new`) spent from its own `now`, not from our
    /// end: our spend no longer counts in the TAT, and taking its length back then erased that
    /// decision's spend instead (a set's undo after an emission interval let 11 through a burst
    /// of 10).
    ///
    /// Two earlier forms lost units: measuring the length from the TAT before the spend (when
    /// that was in the past) took back the idle time too, and with it another decision's spend;
    /// and a floor at `old` kept the later of two spends taken back first from going below its
    /// own start, leaving one emission interval spent for nothing (a set test saw a limit end
    /// full with half its units admitted).
    ///
    /// (A [rebase](Self::rebase) landing between a spend and its undo, possible only while two
    /// quotas of one limit name are in use at once, moves the TAT down by more than a spend: the
    /// undo may then leave it lower still, admitting early. It takes two quotas in flight, as a
    /// request holding the set it resolved before a change.)
    pub(crate) fn undo(&self, old: Nanos, new: Nanos, mut clock: impl FnMut() -> Nanos) {
        if self.replace(new, old) {
            return;
        }
        let spent = new - old.min(new);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                // Read after `t` was loaded: every spend in `t` read the clock before this.
                let ahead = new.saturating_sub(clock());
                Some(t.saturating_sub(spent.min(ahead)))
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
    fn a_decision_loads_the_cell_before_it_reads_the_clock() {
        // Four decisions read the clock at `later` and spent. A fifth that had read the clock
        // 107 ns earlier and loaded the cell only then was refused by those 107 ns; now it loads
        // the cell first and reads the clock after, which says `later` at least (the others read
        // it before they spent, and it is monotonic): admitted, with one read.
        let l = limits(Quota::per_hour(5));
        let cell = GcraCell::default();
        let later = 1_000 * S + 107;
        for _ in 0..4 {
            assert!(cell.check(&l, later).is_allowed());
        }
        // (Which of the load and the read comes first cannot be seen from here: the next test's
        // lost race, which reads the clock twice only when the load came first, tells them apart.)
        let mut reads = 0;
        let d = cell.check_units(&l, 1, || {
            reads += 1;
            later
        });
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(d.remaining(), 0);
        assert_eq!(reads, 1);
        // A real refusal reads the clock once, and spends nothing.
        let mut reads = 0;
        let (refused, moved) = cell.check_traced(&l, 1, || {
            reads += 1;
            later + 1
        });
        assert!(!refused.is_allowed() && moved.is_none());
        assert_eq!(reads, 1);
        // Under paused time (the clock reads the same instant again) the five are admitted too.
        let cell = GcraCell::default();
        for _ in 0..5 {
            assert!(cell.check_with(&l, || later).is_allowed());
        }
        assert!(!cell.check_with(&l, || later).is_allowed());
    }

    #[test]
    fn a_lost_race_decides_again_with_the_winner_and_a_fresh_clock() {
        // Between this decision's load and its compare-exchange another one reads a later clock
        // and spends: the compare-exchange fails, and the decision is made again against the TAT
        // that won, at the clock read again (not earlier than the winner's).
        let l = limits(Quota::per_hour(5));
        let cell = GcraCell::default();
        let t = 1_000 * S;
        for _ in 0..3 {
            assert!(cell.check(&l, t).is_allowed());
        }
        let mut reads = Vec::new();
        let (d, moved) = cell.check_traced(&l, 1, || {
            let now = if reads.is_empty() {
                // The other decision, after this one's load and clock read.
                assert!(cell.check(&l, t + 5).is_allowed());
                t
            } else {
                t + 5
            };
            reads.push(now);
            now
        });
        assert_eq!(reads, [t, t + 5]);
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(d.remaining(), 0);
        let emission = 720 * S;
        assert_eq!(moved, Some((t + 4 * emission, t + 5 * emission)));
        assert_eq!(cell.due(), t + 5 * emission);
    }

    #[test]
    fn concurrent_decisions_on_a_moving_clock_admit_the_whole_burst() {
        // Threads each make one decision on a clock another thread keeps moving: however they
        // interleave, none sees a spend made with a later clock than its own, so a quota of as
        // many as there are threads admits every one (reading the clock first refused one at
        // times).
        use crate::clock::{Clock, ManualClock};
        let l = limits(Quota::per_hour(4));
        for _ in 0..200 {
            let clock = ManualClock::new();
            clock.set(1_000 * S);
            let cell = GcraCell::default();
            let done = std::sync::atomic::AtomicBool::new(false);
            // Stops the ticking thread however the scope ends (a decision thread's panic too,
            // which would otherwise leave the scope waiting for the ticker forever).
            struct Stop<'a>(&'a std::sync::atomic::AtomicBool);
            impl Drop for Stop<'_> {
                fn drop(&mut self) {
                    self.0.store(true, Ordering::Relaxed);
                }
            }
            let admitted = std::thread::scope(|s| {
                let _stop = Stop(&done);
                s.spawn(|| {
                    while !done.load(Ordering::Relaxed) {
                        clock.advance(std::time::Duration::from_nanos(1));
                    }
                });
                let decisions: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| cell.check_with(&l, || clock.now()).is_allowed()))
                    .collect();
                decisions
                    .into_iter()
                    .map(|d| d.join().expect("a decision thread"))
                    .filter(|allowed| *allowed)
                    .count()
            });
            assert_eq!(admitted, 4);
        }
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
        let (d, moved) = cell.check_traced(&l, 1, || 100 * S);
        assert!(d.is_allowed());
        assert_eq!(moved, Some((100 * S, 101 * S)));
        // Another decision spends on top before the first is taken back.
        assert!(cell.check(&l, 100 * S).is_allowed());
        assert_eq!(cell.due(), 102 * S);
        let (old, new) = moved.unwrap();
        cell.undo(old, new, || 100 * S);
        // Only the first spend is gone: the second's interval remains.
        assert_eq!(cell.due(), 101 * S);
        // Two spends taken back in the other order: each removes its own length.
        let (_, x) = cell.check_traced(&l, 1, || 100 * S);
        let (_, y) = cell.check_traced(&l, 1, || 100 * S);
        let ((xo, xn), (yo, yn)) = (x.unwrap(), y.unwrap());
        assert_eq!((xo, xn, yo, yn), (101 * S, 102 * S, 102 * S, 103 * S));
        cell.undo(xo, xn, || 100 * S);
        cell.undo(yo, yn, || 100 * S);
        assert_eq!(cell.due(), 101 * S);
        // Uncontended, the undo restores the start exactly.
        let (_, moved) = cell.check_traced(&l, 3, || 100 * S);
        let (old, new) = moved.unwrap();
        assert_eq!((old, new), (101 * S, 104 * S));
        cell.undo(old, new, || 100 * S);
        assert_eq!(cell.due(), 101 * S);
    }

    #[test]
    fn undo_takes_back_only_what_is_still_ahead_of_the_clock() {
        // 1000 per second, burst 10: a 1 ms emission interval.
        let l = limits(Quota::per_second(1000).burst(10));
        let ms = S / 1000;
        let t = 1_000 * S;
        let cell = GcraCell::default();
        let (_, moved) = cell.check_traced(&l, 1, || t);
        let (old, new) = moved.unwrap();
        assert_eq!((old, new), (t, t + ms));
        // 5 ms later another decision spends from its own `now` (our spend is behind it): taking
        // our 1 ms back would leave the cell at `now`, as if that decision had spent nothing.
        assert!(cell.check(&l, t + 5 * ms).is_allowed());
        assert_eq!(cell.due(), t + 6 * ms);
        cell.undo(old, new, || t + 5 * ms);
        assert_eq!(cell.due(), t + 6 * ms, "the other decision's spend stays");
        // Part of a spend still ahead of the clock: only that part goes.
        let cell = GcraCell::default();
        let (_, moved) = cell.check_traced(&l, 4, || t);
        let (old, new) = moved.unwrap();
        assert_eq!((old, new), (t, t + 4 * ms));
        assert!(cell.check(&l, t + 2 * ms).is_allowed());
        assert_eq!(cell.due(), t + 5 * ms);
        cell.undo(old, new, || t + 2 * ms);
        // Without our spend the other one would have moved the cell from t + 2 ms to t + 3 ms.
        assert_eq!(cell.due(), t + 3 * ms);
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
