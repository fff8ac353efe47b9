//! Retry budgets: retries may add at most a percentage of the recent requests, plus a small
//! minimum, so that an outage cannot multiply the load on an upstream that is already struggling.
//!
//! A [`Budget`] is the configuration; a [`RetryBudget`] is the live token bucket, shared (it is an
//! `Arc` inside) by every clone of the layer that made it and every service the layer made.
//!
//! # How it counts
//!
//! Every request deposits `percent / 100` of a retry into the bucket and every retry withdraws one
//! whole retry; deposits and withdrawals are forgotten after about `period`. On top of that a
//! reserve of `min_per_second × period` retries is always there, so that services with little
//! traffic can retry at all. A retry is allowed only when the bucket holds a whole retry, so:
//!
//! > for every retry, the retries of the `period` that ends with it (that one included) are at most
//! > `percent / 100 ×` the requests of that period `+ min_per_second × period`.
//!
//! Amounts are counted in millionths of a retry, so fractional percentages are exact to a
//! millionth: 10% of 1,000 requests is 100 retries, 33.3333% of 1,000 requests is 333. (tower's
//! `TpsBudget` turns the percentage into a whole number of deposits per retry, truncated, and
//! over-allocates: its 30% allows a retry per 3 requests, 333 of 1,000, and its 15% one per 6.)
//!
//! ## Exactly when things are forgotten
//!
//! The period is kept in 10 slots of a tenth of it each, and every error is on the safe side:
//!
//! - **A retry** counts from the start of the slot after the one it was made in, so it is
//!   remembered for at least a whole period, and at most a period and one slot.
//! - **A request** only adds to an atomic counter, without reading the clock. The counter is
//!   attributed to a slot at every retry and every 64 to 128 requests, and the requests in it count
//!   from the start of the slot of the attribution before them, the earliest they can have been
//!   made. A request is therefore forgotten early, never late: by at most one slot plus the time
//!   between two attributions (the time the service takes to make 128 requests, when it is not
//!   retrying).
//!
//! So the budget may allow a little less than the exact figure, never more. With the default 10 s
//! period, a service making 100 requests per second has earned at least 80% of its percentage of
//! the last 10 s when an outage starts (a slot of 100 requests, and up to 128 unattributed ones, may
//! already be forgotten). A service making fewer than about 13 requests per second may have none of
//! its percentage left by its first retry: requests that rare earn little, and the reserve is what
//! lets it retry.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::retry::{Budget, RetryBudget};
//!
//! let budget = RetryBudget::new(Budget::new(10.0).min_per_second(1).period(Duration::from_secs(10)))
//!     .unwrap();
//! for _ in 0..1_000 {
//!     budget.deposit();
//! }
//! // 10% of 1,000 requests, plus the reserve of 1 per second over 10 seconds.
//! assert_eq!(budget.available(), 110);
//! let mut retries = 0;
//! while budget.withdraw() {
//!     retries += 1;
//! }
//! assert_eq!(retries, 110);
//! ```

use std::fmt;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::ConfigError;

/// One retry, in the budget's units.
const UNIT: i64 = 1_000_000;

/// Slots the period is divided into.
const SLOTS: usize = 10;

/// The pending counter is attributed to a slot whenever it crosses a multiple of a power of two
/// chosen so that this happens every `ATTRIBUTE_EVERY` to `2 × ATTRIBUTE_EVERY` requests.
const ATTRIBUTE_EVERY: u64 = 64;

/// The most a budget may allow: 1000%, ten retries per request.
const MAX_PERCENT: f64 = 1000.0;

/// The configuration of a retry budget.
///
/// The default, as in Finagle and tower: 20% of the requests of the last 10 seconds, plus 10 retries
/// per second.
///
/// With feature `serde` it reads and writes as
/// `{"percent": 20.0, "min_per_second": 10, "period": "10s"}`, each field optional (a field left
/// out keeps its default; the period in the [duration format](crate::config#durations)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Budget {
    percent: f64,
    min_per_second: u32,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration"))]
    period: Duration,
}

impl Budget {
    /// Retries may add `percent`% of the requests (from 0 to 1000; fractions allowed), plus 10 per
    /// second, over a period of 10 seconds.
    pub const fn new(percent: f64) -> Self {
        Self {
            percent,
            min_per_second: 10,
            period: Duration::from_secs(10),
        }
    }

    /// Retries always allowed per second, whatever the traffic (default 10).
    #[must_use]
    pub const fn min_per_second(mut self, retries: u32) -> Self {
        self.min_per_second = retries;
        self
    }

    /// How long requests and retries are remembered (default 10 s; from 1 s to 10 min).
    #[must_use]
    pub const fn period(mut self, period: Duration) -> Self {
        self.period = period;
        self
    }

    /// The percentage of requests retries may add.
    pub const fn percent(&self) -> f64 {
        self.percent
    }

    /// The retries always allowed per second.
    pub const fn min_retries_per_second(&self) -> u32 {
        self.min_per_second
    }

    /// How long requests and retries are remembered.
    pub const fn period_length(&self) -> Duration {
        self.period
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `budget` when the percentage is not a number from 0 to 1000, the
    /// period is outside 1 s to 10 min, the minimum is above 1,000,000 per second, or the budget would
    /// allow no retries at all.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| Err(ConfigError::new("budget", reason));
        if !(self.percent.is_finite() && (0.0..=MAX_PERCENT).contains(&self.percent)) {
            return err(format!(
                "the percentage must be a number from 0 to {MAX_PERCENT} (got {})",
                self.percent
            ));
        }
        if self.period < Duration::from_secs(1) || self.period > Duration::from_secs(600) {
            return err(format!(
                "the period must be from 1s to 600s (got {:?})",
                self.period
            ));
        }
        if self.min_per_second > 1_000_000 {
            return err(format!(
                "the minimum must be at most 1000000 retries per second (got {})",
                self.min_per_second
            ));
        }
        if self.deposit_units() == 0 && self.min_per_second == 0 {
            return err("a budget of 0% with no minimum allows no retries at all; to turn retries off, set max_attempts(1)".into());
        }
        Ok(())
    }

    /// Units deposited per request.
    fn deposit_units(&self) -> i64 {
        (self.percent * (UNIT as f64 / 100.0)).round() as i64
    }

    /// The reserve, in units.
    fn reserve_units(&self) -> i64 {
        let retries = (f64::from(self.min_per_second) * self.period.as_secs_f64()).round() as i64;
        retries.saturating_mul(UNIT)
    }
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(20.0)
    }
}

/// A live retry budget: a token bucket over a sliding period. Clones share it.
///
/// Made by the layer from its [`Budget`], or by [`RetryBudget::new`] for custom policies and for
/// sharing one budget between several layers
/// ([`RetryBuilder::shared_budget`](super::RetryBuilder::shared_budget)).
#[derive(Clone)]
pub struct RetryBudget {
    inner: Arc<State>,
}

struct State {
    config: Budget,
    deposit: i64,
    reserve: i64,
    slot: Duration,
    /// Deposits not yet attributed to a slot.
    pending: AtomicI64,
    /// `pending` is attributed whenever it crosses a multiple of `1 << attribute_bit` units.
    attribute_bit: u32,
    ring: Mutex<Ring>,
}

struct Ring {
    /// Deposits (positive) and withdrawals (negative) by slot.
    slots: [i64; SLOTS],
    /// The current slot.
    index: usize,
    /// When the current slot started.
    start: Instant,
    /// Withdrawals made in the current slot (positive). They go to the next slot when the ring
    /// moves on, so that each is remembered for at least a whole period.
    withdrawn: i64,
}

impl RetryBudget {
    /// A budget with `config`, empty but for its reserve.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] when `config` is invalid (see [`Budget::validate`]).
    pub fn new(config: Budget) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            inner: Arc::new(State {
                config,
                deposit: config.deposit_units(),
                reserve: config.reserve_units(),
                slot: config.period / SLOTS as u32,
                pending: AtomicI64::new(0),
                attribute_bit: attribute_bit(config.deposit_units()),
                ring: Mutex::new(Ring {
                    slots: [0; SLOTS],
                    index: 0,
                    start: Instant::now(),
                    withdrawn: 0,
                }),
            }),
        })
    }

    /// Records a request. Cheap: one atomic addition, no clock read (but for one request in 64 to
    /// 128, which brings the ring up to date).
    #[inline]
    pub fn deposit(&self) {
        let s = &*self.inner;
        let prev = s.pending.fetch_add(s.deposit, Ordering::Relaxed);
        if (prev.wrapping_add(s.deposit) >> s.attribute_bit) != (prev >> s.attribute_bit) {
            self.rotate_cold();
        }
    }

    /// Takes a token for one retry, if there is one.
    pub fn withdraw(&self) -> bool {
        let s = &*self.inner;
        let mut ring = s.ring.lock().unwrap_or_else(PoisonError::into_inner);
        s.rotate(&mut ring, Instant::now());
        if s.balance(&ring) >= UNIT {
            ring.withdrawn += UNIT;
            true
        } else {
            false
        }
    }

    /// How many whole retries the budget allows now.
    pub fn available(&self) -> u64 {
        let s = &*self.inner;
        let mut ring = s.ring.lock().unwrap_or_else(PoisonError::into_inner);
        s.rotate(&mut ring, Instant::now());
        u64::try_from(s.balance(&ring) / UNIT).unwrap_or(0)
    }

    /// The budget's configuration.
    pub fn config(&self) -> Budget {
        self.inner.config
    }

    #[cold]
    #[inline(never)]
    fn rotate_cold(&self) {
        let s = &*self.inner;
        let mut ring = s.ring.lock().unwrap_or_else(PoisonError::into_inner);
        s.rotate(&mut ring, Instant::now());
    }
}

/// The bit whose changes in the pending counter attribute it to a slot: a power of two between
/// `ATTRIBUTE_EVERY` and `2 × ATTRIBUTE_EVERY` deposits of `deposit` units.
fn attribute_bit(deposit: i64) -> u32 {
    match u64::try_from(deposit) {
        // Deposits of nothing never move the counter.
        Ok(0) | Err(_) => 62,
        Ok(d) => d
            .saturating_mul(ATTRIBUTE_EVERY)
            .checked_next_power_of_two()
            .map_or(62, u64::trailing_zeros)
            .min(62),
    }
}

impl State {
    /// Moves the ring to `now`: what is pending goes to the slot of the last move (the earliest
    /// its requests can have been made), the withdrawals of that slot to the slot after it (the
    /// latest they can have been made), and slots older than the period are emptied.
    fn rotate(&self, ring: &mut Ring, now: Instant) {
        let elapsed = now.saturating_duration_since(ring.start);
        if elapsed < self.slot {
            return;
        }
        let slot_nanos = self.slot.as_nanos().max(1);
        let steps = elapsed.as_nanos() / slot_nanos;
        let pending = self.pending.swap(0, Ordering::Relaxed);
        ring.slots[ring.index] = ring.slots[ring.index].saturating_add(pending);
        let clear = usize::try_from(steps).unwrap_or(usize::MAX).min(SLOTS);
        for i in 1..=clear {
            ring.slots[(ring.index + i) % SLOTS] = 0;
        }
        // The next slot is still within the period unless the ring moves on by more than that.
        let withdrawn = std::mem::take(&mut ring.withdrawn);
        if steps <= SLOTS as u128 {
            let next = (ring.index + 1) % SLOTS;
            ring.slots[next] = ring.slots[next].saturating_sub(withdrawn);
        }
        ring.index = (ring.index + (steps % SLOTS as u128) as usize) % SLOTS;
        // `steps * slot <= elapsed`, so this neither overflows nor passes `now`.
        let advance = u64::try_from(steps * slot_nanos).unwrap_or(u64::MAX);
        ring.start += Duration::from_nanos(advance);
    }

    fn balance(&self, ring: &Ring) -> i64 {
        ring.slots
            .iter()
            .fold(self.reserve, |sum, s| sum.saturating_add(*s))
            .saturating_add(self.pending.load(Ordering::Relaxed))
            .saturating_sub(ring.withdrawn)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(percent: f64, min: u32) -> RetryBudget {
        RetryBudget::new(
            Budget::new(percent)
                .min_per_second(min)
                .period(Duration::from_secs(10)),
        )
        .unwrap()
    }

    fn drain(b: &RetryBudget) -> u64 {
        let mut n = 0;
        while b.withdraw() {
            n += 1;
        }
        n
    }

    #[tokio::test(start_paused = true)]
    async fn fractional_percentages_are_exact() {
        for (percent, requests, expected) in [
            (10.0, 1_000, 100),
            (30.0, 1_000, 300),
            (33.3333, 1_000, 333),
            (12.5, 1_000, 125),
            (0.1, 10_000, 10),
            (150.0, 10, 15),
        ] {
            let b = budget(percent, 0);
            for _ in 0..requests {
                b.deposit();
            }
            assert_eq!(drain(&b), expected, "{percent}% of {requests}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_and_withdrawals_are_forgotten_after_the_period() {
        let b = budget(100.0, 0);
        for _ in 0..5 {
            b.deposit();
        }
        assert!(b.withdraw());
        assert_eq!(b.available(), 4);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 4);
        for _ in 0..3 {
            b.deposit();
        }
        assert_eq!(b.available(), 7);
        // The first five requests were made in the first slot: forgotten once a whole period has
        // passed since that slot started. The withdrawal counts from the start of the next slot,
        // the latest it can have been made: forgotten one slot later.
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 2);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.available(), 3);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(b.available(), 0);
        assert!(!b.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn unattributed_requests_count_as_early_as_they_can_have_been_made() {
        let b = budget(100.0, 0);
        assert_eq!(b.available(), 0); // attributes everything so far, at t = 0
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            b.deposit(); // no clock read: counted from t = 0, the last attribution
        }
        assert_eq!(b.available(), 3);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(b.available(), 0, "forgotten early, never late");
    }

    #[tokio::test(start_paused = true)]
    async fn the_reserve_refills_over_the_period() {
        let b = budget(0.0, 2);
        assert_eq!(drain(&b), 20);
        // Retries made in the first slot (0 to 1 s) count as made at its end: remembered until
        // 11 s, never less than a period.
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(!b.withdraw());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(drain(&b), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn long_quiet_spells_do_not_overflow() {
        let b = budget(20.0, 1);
        b.deposit();
        tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
        assert_eq!(b.available(), 10);
    }

    #[test]
    fn requests_are_attributed_every_64_to_128_requests() {
        for percent in [0.0001, 0.1, 12.5, 20.0, 33.3333, 100.0, 1000.0] {
            let deposit = Budget::new(percent).deposit_units();
            let every = (1u64 << attribute_bit(deposit)) as f64 / deposit as f64;
            assert!((64.0..=128.0).contains(&every), "{percent}%: every {every}");
        }
        assert_eq!(attribute_bit(0), 62);
    }

    #[test]
    fn validation_names_the_problem() {
        let e = |b: Budget| RetryBudget::new(b).unwrap_err().to_string();
        assert_eq!(
            e(Budget::new(f64::NAN)),
            "invalid budget: the percentage must be a number from 0 to 1000 (got NaN)"
        );
        assert_eq!(
            e(Budget::new(-1.0)),
            "invalid budget: the percentage must be a number from 0 to 1000 (got -1)"
        );
        assert_eq!(
            e(Budget::new(10.0).period(Duration::from_millis(500))),
            "invalid budget: the period must be from 1s to 600s (got 500ms)"
        );
        assert!(e(Budget::new(0.0).min_per_second(0)).contains("allows no retries at all"));
    }
}
