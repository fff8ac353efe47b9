//! How long to wait between attempts: a fixed or exponential schedule, with jitter.
//!
//! A [`Backoff`] is a small `Copy` description of the schedule; [`Backoff::delays`] and
//! [`Backoff::delays_seeded`] turn it into a [`Delays`] iterator, the state one request needs (the
//! retry count, the previous delay for decorrelated jitter, and its own random number generator).
//! [`RetryLayer`](super::RetryLayer) uses one per request; custom [policies](super::Policy) can do
//! the same.
//!
//! The jitter kinds are those of AWS's "Exponential Backoff And Jitter": with `base` the
//! schedule's delay for the retry (`initial * multiplier^(retry - 1)`, at most `max`),
//!
//! | [`Jitter`] | delay before a retry |
//! |---|---|
//! | `None` | `base` |
//! | `Full` (default) | uniform in `[0, base]` |
//! | `Equal` | `base / 2` + uniform in `[0, base / 2]` |
//! | `Decorrelated` | `min(max, uniform in [initial, 3 * previous])`, the previous delay starting at `initial` |
//!
//! Randomness comes from [`fastrand`](https://docs.rs/fastrand)'s small, fast generator (wyrand),
//! seeded from the operating system, or from a seed you give for reproducible tests.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::retry::{Backoff, Jitter};
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(1))
//!     .jitter(Jitter::None);
//! let delays: Vec<u64> = backoff.delays().take(6).map(|d| d.as_millis() as u64).collect();
//! assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
//!
//! // With jitter, a seed makes the sequence reproducible.
//! let full = backoff.jitter(Jitter::Full);
//! let a: Vec<_> = full.delays_seeded(7).take(3).collect();
//! let b: Vec<_> = full.delays_seeded(7).take(3).collect();
//! assert_eq!(a, b);
//! assert!(a.iter().zip([100, 200, 400]).all(|(d, base)| d.as_millis() <= base));
//! ```

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;

/// The longest delay a schedule may use: retries are for outages of seconds or minutes, not hours.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// The largest multiplier accepted.
const MAX_MULTIPLIER: f64 = 1000.0;

/// Random variation added to the delays, so that clients that failed together do not retry
/// together. See the [module documentation](self) for the formulas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Jitter {
    /// No jitter: the schedule's delays exactly.
    None,
    /// Uniform between zero and the schedule's delay (the default).
    #[default]
    Full,
    /// Half the schedule's delay, plus uniform up to the other half.
    Equal,
    /// AWS's decorrelated jitter: uniform between the initial delay and three times the previous
    /// delay, capped at the maximum. Ignores the multiplier.
    Decorrelated,
}

/// A delay schedule: fixed or exponential, capped, with [`Jitter`].
///
/// Checked when the layer is built (or by [`Backoff::validate`]): the initial delay must be longer
/// than zero, the multiplier a finite number from 1 to 1000, and the maximum at least the initial
/// delay and at most [`MAX_DELAY`].
///
/// With feature `serde` it reads and writes as
/// `{"initial": "100ms", "multiplier": 2.0, "max": "5s", "jitter": "full"}`, each field optional
/// (a field left out keeps its value in [`Backoff::default`]; durations in the
/// [duration format](crate::config#durations)).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default, deny_unknown_fields))]
pub struct Backoff {
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration"))]
    initial: Duration,
    multiplier: f64,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration"))]
    max: Duration,
    jitter: Jitter,
}

impl Backoff {
    /// The same delay before every retry, without jitter.
    pub const fn fixed(delay: Duration) -> Self {
        Self {
            initial: delay,
            multiplier: 1.0,
            max: delay,
            jitter: Jitter::None,
        }
    }

    /// `initial` before the first retry, `multiplier` times longer before each next one, at most
    /// `max`; with full jitter unless told otherwise.
    pub const fn exponential(initial: Duration, multiplier: f64, max: Duration) -> Self {
        Self {
            initial,
            multiplier,
            max,
            jitter: Jitter::Full,
        }
    }

    /// Sets the longest delay, leaving the schedule's start alone. With a fixed schedule this only
    /// lets longer server-requested waits (`Retry-After`, gRPC pushback) through, and widens the
    /// range of decorrelated jitter.
    #[must_use]
    pub const fn with_max_delay(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// Sets the jitter.
    #[must_use]
    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The delay before the first retry (before jitter).
    pub const fn initial(&self) -> Duration {
        self.initial
    }

    /// How much longer each delay is than the one before (before jitter).
    pub const fn multiplier(&self) -> f64 {
        self.multiplier
    }

    /// The longest delay. A server that asks for a longer wait (`Retry-After`, gRPC pushback) is
    /// not retried: the caller gets its answer.
    pub const fn max(&self) -> Duration {
        self.max
    }

    /// The jitter kind.
    pub const fn jitter_kind(&self) -> Jitter {
        self.jitter
    }

    /// Checks the schedule.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `backoff` when a setting cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |reason: String| Err(ConfigError::new("backoff", reason));
        if self.initial.is_zero() {
            return err("the initial delay must be longer than zero".into());
        }
        if !(self.multiplier.is_finite() && (1.0..=MAX_MULTIPLIER).contains(&self.multiplier)) {
            return err(format!(
                "the multiplier must be a finite number from 1 to {MAX_MULTIPLIER} (got {})",
                self.multiplier
            ));
        }
        if self.max < self.initial {
            return err(format!(
                "the maximum delay ({:?}) must not be shorter than the initial delay ({:?})",
                self.max, self.initial
            ));
        }
        if self.max > MAX_DELAY {
            return err(format!(
                "the maximum delay must be at most {MAX_DELAY:?} (got {:?})",
                self.max
            ));
        }
        Ok(())
    }

    /// The schedule's delay before retry number `retry` (1 for the first retry), before jitter.
    pub fn base_delay(&self, retry: u32) -> Duration {
        Duration::from_nanos(self.base_nanos(retry))
    }

    fn base_nanos(&self, retry: u32) -> u64 {
        let initial = nanos(self.initial);
        let max = nanos(self.max);
        if self.multiplier == 1.0 || retry <= 1 {
            return initial.min(max);
        }
        let exponent = i32::try_from(retry - 1).unwrap_or(i32::MAX);
        let f = initial as f64 * self.multiplier.powi(exponent);
        if f.is_nan() || f >= max as f64 {
            max
        } else {
            (f.round() as u64).min(max)
        }
    }

    /// The delays of one request, with randomness seeded from the operating system.
    pub fn delays(&self) -> Delays {
        Delays::new(*self, fastrand::Rng::new())
    }

    /// The delays of one request, with randomness from `seed`: the same seed gives the same
    /// sequence.
    pub fn delays_seeded(&self, seed: u64) -> Delays {
        Delays::new(*self, fastrand::Rng::with_seed(seed))
    }
}

impl Default for Backoff {
    /// 100 ms, doubling, at most 5 s, full jitter.
    fn default() -> Self {
        Self::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))
    }
}

/// The delays before each retry of one request: an endless iterator.
///
/// Made by [`Backoff::delays`] and [`Backoff::delays_seeded`].
#[derive(Clone)]
pub struct Delays {
    backoff: Backoff,
    state: Jittered,
}

impl Delays {
    fn new(backoff: Backoff, rng: fastrand::Rng) -> Self {
        Self {
            backoff,
            state: Jittered::new(&backoff, rng),
        }
    }

    /// How many delays were handed out so far.
    pub fn retries(&self) -> u32 {
        self.state.retries
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        self.state.next(&self.backoff)
    }
}

/// What one request's delays depend on besides the schedule: the retry count, the previous delay
/// (for decorrelated jitter) and the random generator.
#[derive(Clone, Debug)]
pub(crate) struct Jittered {
    retries: u32,
    previous: u64,
    rng: fastrand::Rng,
}

impl Jittered {
    pub(crate) fn new(backoff: &Backoff, rng: fastrand::Rng) -> Self {
        Self {
            retries: 0,
            previous: nanos(backoff.initial),
            rng,
        }
    }

    /// The delay before the next retry under `b`.
    pub(crate) fn next(&mut self, b: &Backoff) -> Duration {
        self.retries = self.retries.saturating_add(1);
        let delay = match b.jitter {
            Jitter::None => b.base_nanos(self.retries),
            Jitter::Full => self.rng.u64(0..=b.base_nanos(self.retries)),
            Jitter::Equal => {
                let base = b.base_nanos(self.retries);
                let half = base / 2;
                half + self.rng.u64(0..=base - half)
            }
            Jitter::Decorrelated => {
                let low = nanos(b.initial);
                let high = self.previous.saturating_mul(3).max(low);
                let d = self.rng.u64(low..=high).min(nanos(b.max));
                self.previous = d;
                d
            }
        };
        Duration::from_nanos(delay)
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

impl fmt::Debug for Delays {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delays")
            .field("backoff", &self.backoff)
            .field("retries", &self.state.retries)
            .finish_non_exhaustive()
    }
}

fn nanos(d: Duration) -> u64 {
    crate::clock::duration_to_nanos(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exponential_without_jitter_doubles_up_to_the_cap() {
        let b = Backoff::exponential(100 * MS, 2.0, 1000 * MS).jitter(Jitter::None);
        let got: Vec<_> = b.delays().take(7).collect();
        assert_eq!(got, [100, 200, 400, 800, 1000, 1000, 1000].map(|n| n * MS));
        // Huge retry numbers saturate instead of overflowing.
        assert_eq!(b.base_delay(u32::MAX), 1000 * MS);
    }

    #[test]
    fn fractional_multiplier_is_exact_in_nanoseconds() {
        let b = Backoff::exponential(100 * MS, 1.5, 1000 * MS).jitter(Jitter::None);
        let got: Vec<_> = b.delays().take(4).collect();
        assert_eq!(
            got,
            [100 * MS, 150 * MS, 225 * MS, Duration::from_micros(337_500)]
        );
    }

    #[test]
    fn jitters_stay_in_their_ranges() {
        let b = Backoff::exponential(100 * MS, 2.0, 1000 * MS);
        for seed in 0..200 {
            for (jitter, check) in [
                (
                    Jitter::Full,
                    (|d, base| d <= base) as fn(Duration, Duration) -> bool,
                ),
                (Jitter::Equal, |d, base| d >= base / 2 && d <= base),
            ] {
                let mut delays = b.jitter(jitter).delays_seeded(seed);
                for retry in 1..=6 {
                    let d = delays.next_delay();
                    assert!(check(d, b.base_delay(retry)), "{jitter:?} {retry} {d:?}");
                }
            }
            let mut delays = b.jitter(Jitter::Decorrelated).delays_seeded(seed);
            let mut previous = 100 * MS;
            for _ in 0..10 {
                let d = delays.next_delay();
                assert!(d >= 100 * MS && d <= (previous * 3).min(1000 * MS), "{d:?}");
                previous = d;
            }
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let e = |b: Backoff| b.validate().unwrap_err().to_string();
        assert_eq!(
            e(Backoff::fixed(Duration::ZERO)),
            "invalid backoff: the initial delay must be longer than zero"
        );
        assert_eq!(
            e(Backoff::exponential(MS, f64::NAN, 2 * MS)),
            "invalid backoff: the multiplier must be a finite number from 1 to 1000 (got NaN)"
        );
        assert_eq!(
            e(Backoff::exponential(MS, 0.5, 2 * MS)),
            "invalid backoff: the multiplier must be a finite number from 1 to 1000 (got 0.5)"
        );
        assert_eq!(
            e(Backoff::exponential(2 * MS, 2.0, MS)),
            "invalid backoff: the maximum delay (1ms) must not be shorter than the initial delay (2ms)"
        );
        assert_eq!(
            e(Backoff::fixed(Duration::from_secs(7200))),
            "invalid backoff: the maximum delay must be at most 3600s (got 7200s)"
        );
        assert!(Backoff::default().validate().is_ok());
    }
}
