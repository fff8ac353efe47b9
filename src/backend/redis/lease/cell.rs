//! One key's lease in one replica: the units it may still admit, until when, what Redis said at the
//! last grant (for headers), a refusal remembered, and the size of the next lease. The hot path is
//! [`Cell::take`]: a load and a compare-and-swap, no lock, no I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::backend::memory::map::Expiring;
use crate::clock::Nanos;
use crate::rate_limit::Decision;
use crate::rate_limit::quota::Limits;

/// No prefetch for this lease (a lease of one unit: the key is cold, each decision is exact).
const NO_PREFETCH: u64 = u64::MAX;

/// A key's lease in this replica.
#[derive(Debug, Default)]
pub(super) struct Cell {
    /// Units this replica may still admit from its lease.
    units: AtomicU64,
    /// The lease is used while `now < expires` (local clock): the time its request was sent plus
    /// the lease's time to live.
    expires: AtomicU64,
    /// When the lease was asked for (local clock), and the units it held right after the grant
    /// (those given plus those carried over, plus the one served by the call itself): what the
    /// next lease's size is measured from.
    granted_at: AtomicU64,
    held_after_grant: AtomicU64,
    /// A prefetch starts once the units left fall to this; [`NO_PREFETCH`] for a lease of one.
    prefetch_at: AtomicU64,
    /// Redis's slack and reset (ns) right after the last grant, for headers.
    slack_at: AtomicU64,
    ahead_at: AtomicU64,
    /// A refusal from Redis, remembered until its retry time: decisions until then are refused
    /// locally.
    refused_until: AtomicU64,
    /// When the refusal remembered was decided (the time its call was sent).
    refused_at: AtomicU64,
    reset_at: AtomicU64,
    /// Units to ask for next time.
    size: AtomicU64,
    /// A lease call for this key is in flight (one at a time per replica).
    busy: AtomicBool,
    /// Wakes the requests that waited for the call in flight.
    pub(super) notify: Notify,
}

/// What a grant from Redis carries.
#[derive(Clone, Copy, Debug)]
pub(super) struct Grant {
    /// Units carved (at least 1).
    pub(super) units: u64,
    /// Redis's slack and reset after the carve (ns).
    pub(super) slack: Nanos,
    pub(super) ahead: Nanos,
}

/// How big the next lease is.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sizing {
    /// The lease's time to live (ns).
    pub(super) ttl: Nanos,
    /// The most units one lease holds.
    pub(super) max: u64,
}

impl Sizing {
    /// The size of the lease after one that held `held` units at `granted_at`, of which `left` are
    /// left at `now`, `size` having been asked for: enough units for half a time to live at the
    /// rate just seen, within a factor of 4 up or 2 down of `size` (so one odd interval does not
    /// swing it), at most `max`. A key seen less often than twice per half a time to live gets 1:
    /// it is cold, and stays exact.
    pub(super) fn next(
        &self,
        size: u64,
        held: u64,
        left: u64,
        granted_at: Nanos,
        now: Nanos,
    ) -> u64 {
        if granted_at == 0 || held == 0 {
            return 1;
        }
        let used = held.saturating_sub(left);
        let elapsed = now.saturating_sub(granted_at).max(1);
        let target = u128::from(used) * u128::from(self.ttl / 2) / u128::from(elapsed);
        if target < 2 {
            return 1;
        }
        let target = u64::try_from(target).unwrap_or(u64::MAX);
        let size = size.max(1);
        target
            .clamp((size / 2).max(1), size.saturating_mul(4))
            .clamp(1, self.max)
    }
}

impl Cell {
    /// Takes one unit of a live lease; the units left after it.
    #[inline]
    pub(super) fn take(&self, now: Nanos) -> Option<u64> {
        if now >= self.expires.load(Ordering::Acquire) {
            return None;
        }
        let mut units = self.units.load(Ordering::Acquire);
        loop {
            if units == 0 {
                return None;
            }
            match self.units.compare_exchange_weak(
                units,
                units - 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(units - 1),
                Err(actual) => units = actual,
            }
        }
    }

    /// Whether `left` units left call for the next lease now.
    #[inline]
    pub(super) fn wants_prefetch(&self, left: u64) -> bool {
        let at = self.prefetch_at.load(Ordering::Relaxed);
        at != NO_PREFETCH && left <= at && !self.busy.load(Ordering::Relaxed)
    }

    /// The decision for a unit taken from the lease with `left` units left: Redis's slack at the
    /// grant, what time has earned since, and the units still held here.
    #[inline]
    pub(super) fn admitted(&self, limits: &Limits, left: u64, now: Nanos) -> Decision {
        let elapsed = now.saturating_sub(self.granted_at.load(Ordering::Relaxed));
        let held = left.saturating_mul(limits.emission);
        let slack = self
            .slack_at
            .load(Ordering::Relaxed)
            .saturating_add(elapsed)
            .saturating_add(held)
            .min(limits.tolerance);
        let reset = self
            .ahead_at
            .load(Ordering::Relaxed)
            .saturating_sub(elapsed.saturating_add(held));
        Decision::admitted(limits.limit, slack, limits.emission, reset)
    }

    /// A refusal remembered, as Redis would give it now.
    #[inline]
    /// The refusal remembered, if it still holds at `now` and was decided at or after `since`
    /// (under the quota in force).
    pub(super) fn refused(&self, limit: u32, since: Nanos, now: Nanos) -> Option<Decision> {
        let until = self.refused_until.load(Ordering::Acquire);
        (now < until && self.refused_at.load(Ordering::Acquire) >= since).then(|| {
            let reset = self.reset_at.load(Ordering::Acquire).saturating_sub(now);
            Decision::refused(limit, reset, until - now)
        })
    }

    /// Remembers a refusal decided at `sent`, for `wait` more than its retry time.
    pub(super) fn refuse(&self, sent: Nanos, d: &Decision, wait: Nanos) {
        let retry = crate::clock::duration_to_nanos(d.retry_after()).saturating_add(wait);
        let reset = crate::clock::duration_to_nanos(d.reset());
        self.reset_at
            .store(sent.saturating_add(reset), Ordering::Release);
        self.refused_at.store(sent, Ordering::Release);
        self.refused_until
            .store(sent.saturating_add(retry), Ordering::Release);
    }

    /// How much longer than its retry time a refusal is remembered, for a quota earning a unit
    /// every `emission`: the time it takes to earn a quarter of the lease this replica would ask
    /// for (nothing for a cold key). Refused here, this replica leaves the units to the others
    /// meanwhile, rather than asking Redis for each unit as it is earned.
    pub(super) fn refusal_wait(&self, emission: Nanos) -> Nanos {
        (self.size.load(Ordering::Relaxed) / 4).saturating_mul(emission)
    }

    /// Claims the right to make this key's lease call; `None` when one is in flight.
    pub(super) fn claim(self: &Arc<Self>) -> Option<Claim> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Claim(Arc::clone(self)))
    }

    /// Ends the call [`claim`](Self::claim)ed, and wakes the requests that waited for it.
    fn release(&self) {
        self.busy.store(false, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// Whether a lease call is in flight.
    ///
    /// (A claim is released when its [`Claim`] is dropped, so that a call whose future is dropped
    /// halfway, by a cancelled request or a runtime shutting down, cannot leave the key marked
    /// busy for good: no renewal again, and every request waiting a whole timeout for a call
    /// that will never answer.)
    pub(super) fn is_busy(&self) -> bool {
        self.busy.load(Ordering::Acquire)
    }

    /// Before a lease call (by its claimant): drops the units of a lease past its expiry (they are
    /// stranded: counted in Redis, never admitted) and sizes the next lease. Answers (units
    /// stranded, units to ask for).
    pub(super) fn prepare(&self, sizing: &Sizing, now: Nanos) -> (u64, u64) {
        let stranded = if now >= self.expires.load(Ordering::Acquire) {
            self.units.swap(0, Ordering::AcqRel)
        } else {
            0
        };
        let left = self.units.load(Ordering::Acquire) + stranded;
        let size = sizing.next(
            self.size.load(Ordering::Relaxed),
            self.held_after_grant.load(Ordering::Relaxed),
            left,
            self.granted_at.load(Ordering::Relaxed),
            now,
        );
        self.size.store(size, Ordering::Relaxed);
        (stranded, size)
    }

    /// Installs a grant asked for at `sent` (by the claimant): `serve` is 1 when the call takes a
    /// unit for its own request. Units still held are carried over, under the new expiry.
    pub(super) fn grant(&self, g: &Grant, serve: u64, sent: Nanos, ttl: Nanos) {
        let added = g.units - serve;
        self.granted_at.store(sent, Ordering::Relaxed);
        self.slack_at.store(g.slack, Ordering::Relaxed);
        self.ahead_at.store(g.ahead, Ordering::Relaxed);
        self.prefetch_at.store(
            if g.units >= 2 {
                g.units / 4
            } else {
                NO_PREFETCH
            },
            Ordering::Relaxed,
        );
        self.refused_until.store(0, Ordering::Release);
        // The expiry first: a unit is only ever taken under an expiry at least as late as its own.
        self.expires
            .store(sent.saturating_add(ttl), Ordering::Release);
        let before = self.units.fetch_add(added, Ordering::AcqRel);
        self.held_after_grant
            .store(before + added + serve, Ordering::Relaxed);
    }

    /// Units held now (live or not yet dropped).
    pub(super) fn held(&self) -> u64 {
        self.units.load(Ordering::Acquire)
    }
}

/// A [`Cell`] in the store's bounded map (which holds values by value): a cell outlives its map
/// entry while a call holds it.
#[derive(Debug, Default)]
pub(super) struct Slot(pub(super) Arc<Cell>);

impl Expiring for Slot {
    type Context = ();

    fn is_idle(&self, _: &(), now: Nanos) -> bool {
        let c = &self.0;
        now >= c.expires.load(Ordering::Acquire)
            && now >= c.refused_until.load(Ordering::Acquire)
            && !c.is_busy()
    }

    fn due(&self, _: &(), _: Nanos) -> Nanos {
        let c = &self.0;
        c.expires
            .load(Ordering::Relaxed)
            .max(c.refused_until.load(Ordering::Relaxed))
    }
}

/// The right to make one cell's lease call ([`Cell::claim`]): dropping it ends the call and wakes
/// the requests waiting for it, however the call ends (answered, failed, or abandoned).
pub(super) struct Claim(Arc<Cell>);

impl Claim {
    /// The claimed cell.
    pub(super) fn cell(&self) -> &Arc<Cell> {
        &self.0
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::quota::{Algorithm, Quota};

    const MS: u64 = 1_000_000;
    const SIZING: Sizing = Sizing {
        ttl: 1_000 * MS,
        max: 1_000,
    };

    fn grant(units: u64) -> Grant {
        Grant {
            units,
            slack: 0,
            ahead: 0,
        }
    }

    #[test]
    fn a_key_seen_rarely_stays_at_one_unit() {
        // First sight, then one request per 300 ms: fewer than 2 per half a time to live.
        assert_eq!(SIZING.next(1, 0, 0, 0, 5 * MS), 1);
        assert_eq!(SIZING.next(1, 1, 0, 5 * MS, 305 * MS), 1);
    }

    #[test]
    fn a_busy_key_grows_by_at_most_four_times_up_to_the_cap() {
        // 1 unit used within 10 ms: 50 wanted for half a second, 4 given.
        assert_eq!(SIZING.next(1, 1, 0, MS, 11 * MS), 4);
        assert_eq!(SIZING.next(4, 4, 0, MS, 11 * MS), 16);
        assert_eq!(SIZING.next(400, 400, 0, MS, 2 * MS), 1_000);
        // The rate is met: 100 used in 50 ms is 1,000 for half a second.
        assert_eq!(SIZING.next(1_000, 100, 0, MS, 51 * MS), 1_000);
    }

    #[test]
    fn a_key_that_cools_down_shrinks_by_at_most_half() {
        // 8 of 64 used in a whole second: 4 wanted, 32 given.
        assert_eq!(SIZING.next(64, 64, 56, MS, 1_001 * MS), 32);
        // One used in a second: cold again.
        assert_eq!(SIZING.next(64, 64, 63, MS, 1_001 * MS), 1);
    }

    #[test]
    fn units_are_taken_until_none_are_left_or_the_lease_expires() {
        let c = Arc::new(Cell::default());
        assert_eq!(c.take(0), None, "no lease yet");
        c.grant(&grant(4), 1, 10, 100);
        assert_eq!(c.held(), 3);
        assert_eq!(c.take(50), Some(2));
        assert_eq!(c.take(50), Some(1));
        assert_eq!(c.take(110), None, "expired");
        assert_eq!(c.held(), 1);
        // The claimant drops what expired: stranded.
        let claim = c.claim().expect("no call in flight");
        assert!(c.claim().is_none(), "one call at a time");
        let (stranded, _) = c.prepare(&SIZING, 110);
        assert_eq!(stranded, 1);
        assert_eq!(c.held(), 0);
        drop(claim);
        assert!(!c.is_busy());
    }

    #[test]
    fn a_renewal_carries_the_units_left_over_under_its_expiry() {
        let c = Cell::default();
        c.grant(&grant(8), 1, 10, 100);
        for _ in 0..5 {
            c.take(20).unwrap();
        }
        assert_eq!(c.held(), 2);
        assert!(c.wants_prefetch(2), "8 / 4 = 2 left");
        c.grant(&grant(16), 0, 60, 100);
        assert_eq!(c.held(), 18);
        assert_eq!(c.take(150), Some(17), "alive until 160");
        assert!(!c.wants_prefetch(17));
    }

    #[test]
    fn a_lease_of_one_unit_never_prefetches() {
        let c = Cell::default();
        c.grant(&grant(1), 1, 10, 100);
        assert_eq!(c.held(), 0);
        assert!(!c.wants_prefetch(0));
        assert_eq!(c.take(20), None);
    }

    #[test]
    fn a_refusal_is_remembered_until_its_retry_time() {
        let limits = Quota::per_second(10).validate(Algorithm::Gcra).unwrap();
        let c = Cell::default();
        let d = Decision::refused(10, 1_000 * MS, 100 * MS);
        c.refuse(5 * MS, &d, 0);
        let r = c.refused(10, 0, 55 * MS).unwrap();
        assert!(!r.is_allowed());
        assert_eq!(r.retry_after(), std::time::Duration::from_millis(50));
        assert!(c.refused(10, 0, 105 * MS).is_none());
        // A grant forgets it.
        c.refuse(200 * MS, &d, 0);
        c.grant(&grant(2), 1, 210 * MS, 1_000 * MS);
        assert!(c.refused(10, 0, 220 * MS).is_none());
        let a = c.admitted(&limits, 1, 220 * MS);
        assert!(a.is_allowed());
        assert_eq!(a.remaining(), 1, "the unit held here");
    }
}
