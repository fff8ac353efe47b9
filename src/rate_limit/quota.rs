//! How many requests a key may make, and how they are counted.

use std::time::Duration;

use crate::clock::{Nanos, duration_to_nanos};
use crate::error::ConfigError;

/// The longest period a quota may have: 366 days.
pub const MAX_PERIOD: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// `limit` requests per `period`, with an optional burst.
///
/// Constructors accept any number; the layer's builder refuses values that cannot work (zero
/// limits, zero or overlong periods, a zero burst) with a [`ConfigError`] that names the problem.
///
/// With the default [GCRA](Algorithm::Gcra) algorithm the quota is a smooth rate: `per_minute(10)`
/// admits 10 requests at once (the burst defaults to the limit) and then one every 6 seconds.
/// [`burst`](Self::burst) sets how many may arrive back to back independently of the rate.
///
/// With feature `serde` it reads and writes as `{"limit": 100, "period": "1m", "burst": 20}`
/// (`burst` optional; the period in the [duration format](crate::config#durations)).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::Quota;
///
/// let q = Quota::per_minute(100).burst(20);
/// assert_eq!(q.limit(), 100);
/// assert_eq!(q.period(), Duration::from_secs(60));
/// assert_eq!(q.burst_size(), 20);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct Quota {
    limit: u32,
    #[cfg_attr(feature = "serde", serde(with = "crate::config::duration"))]
    period: Duration,
    #[cfg_attr(
        feature = "serde",
        serde(default, skip_serializing_if = "Option::is_none")
    )]
    burst: Option<u32>,
}

impl Quota {
    /// `limit` requests per `period`.
    pub const fn with_period(limit: u32, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: None,
        }
    }

    /// `limit` requests per second.
    pub const fn per_second(limit: u32) -> Self {
        Self::with_period(limit, Duration::from_secs(1))
    }

    /// `limit` requests per minute.
    pub const fn per_minute(limit: u32) -> Self {
        Self::with_period(limit, Duration::from_secs(60))
    }

    /// `limit` requests per hour.
    pub const fn per_hour(limit: u32) -> Self {
        Self::with_period(limit, Duration::from_secs(60 * 60))
    }

    /// Allows up to `burst` requests back to back (GCRA only). Defaults to the limit.
    #[must_use]
    pub const fn burst(mut self, burst: u32) -> Self {
        self.burst = Some(burst);
        self
    }

    /// Requests admitted per period.
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The period over which [`limit`](Self::limit) requests are admitted.
    pub const fn period(&self) -> Duration {
        self.period
    }

    /// Requests that may arrive back to back: the burst if set, otherwise the limit.
    pub const fn burst_size(&self) -> u32 {
        match self.burst {
            Some(b) => b,
            None => self.limit,
        }
    }

    /// Checks the quota for `algorithm`, returning what an error message needs to say otherwise.
    pub(crate) fn validate(&self, algorithm: Algorithm) -> Result<Limits, ConfigError> {
        let err = |reason: String| Err(ConfigError::new("quota", reason));
        if self.limit == 0 {
            return err(
                "the limit must be at least 1 request per period (got 0); to refuse everything, \
                 do not route to the service"
                    .into(),
            );
        }
        if self.period.is_zero() {
            return err("the period must be longer than zero".into());
        }
        if self.period > MAX_PERIOD {
            return err(format!(
                "the period must be at most 366 days (got {:?})",
                self.period
            ));
        }
        let period = duration_to_nanos(self.period);
        let emission = period / u64::from(self.limit);
        if emission == 0 {
            return err(format!(
                "{} requests per {:?} is more than one per nanosecond; lower the limit or lengthen the period",
                self.limit, self.period
            ));
        }
        let burst = match (self.burst, algorithm) {
            (Some(0), _) => return err("the burst must be at least 1 (got 0)".into()),
            (Some(_), Algorithm::SlidingWindow) => {
                return err(
                    "a burst applies to the GCRA algorithm only; the sliding window admits `limit` \
                     requests per window, so drop `.burst(..)` or use Algorithm::Gcra"
                        .into(),
                );
            }
            (Some(b), Algorithm::Gcra) => b,
            (None, _) => self.limit,
        };
        // The tolerance (burst x emission interval) must fit comfortably in nanoseconds.
        let Some(tolerance) = emission
            .checked_mul(u64::from(burst))
            .filter(|t| *t <= duration_to_nanos(MAX_PERIOD) * 64)
        else {
            return err(format!(
                "a burst of {burst} at {} per {:?} spans more than 64 maximum periods; lower the burst",
                self.limit, self.period
            ));
        };
        Ok(Limits {
            limit: self.limit,
            burst,
            period,
            emission,
            tolerance,
        })
    }
}

/// How requests are counted against a [`Quota`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize, serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm (the default): exact, smooth, one 64-bit word of state per key.
    ///
    /// Requests are spaced `period / limit` apart, with up to `burst` of them allowed back to back.
    #[default]
    Gcra,
    /// Sliding-window counter: the current fixed window's count plus the previous window's count
    /// weighted by how much of it still overlaps the sliding window.
    ///
    /// Admits at most `limit` requests in any window-aligned period, and approximates a true sliding
    /// window in between. Bursty by design: a fresh key can spend its whole limit at once.
    SlidingWindow,
}

/// A validated quota in the units the algorithms use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limits {
    pub(crate) limit: u32,
    pub(crate) burst: u32,
    /// The period in nanoseconds.
    pub(crate) period: Nanos,
    /// GCRA: nanoseconds between requests at the steady rate.
    pub(crate) emission: Nanos,
    /// GCRA: `burst * emission`, how far ahead of now the theoretical arrival time may run.
    pub(crate) tolerance: Nanos,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_quota_limits() {
        let l = Quota::per_minute(10).validate(Algorithm::Gcra).unwrap();
        assert_eq!(l.emission, 6_000_000_000);
        assert_eq!(l.tolerance, 60_000_000_000);
        assert_eq!(l.burst, 10);
        let l = Quota::per_second(4)
            .burst(1)
            .validate(Algorithm::Gcra)
            .unwrap();
        assert_eq!(l.tolerance, 250_000_000);
    }

    #[cfg(feature = "serde")]
    #[test]
    fn quotas_load_from_configuration_files() {
        let q: Quota = serde_json::from_str(r#"{"limit":10,"period":"1m"}"#).unwrap();
        assert_eq!(q, Quota::per_minute(10));
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"limit":10,"period":"1m"}"#
        );
        let q: Quota = serde_json::from_str(r#"{"limit":5,"period":"500ms","burst":2}"#).unwrap();
        assert_eq!(
            q,
            Quota::with_period(5, Duration::from_millis(500)).burst(2)
        );
        assert_eq!(
            serde_json::to_string(&q).unwrap(),
            r#"{"limit":5,"period":"500ms","burst":2}"#
        );
        // Files written for earlier versions: the period as a number of seconds.
        let q: Quota = serde_json::from_str(r#"{"limit":5,"period":0.5,"burst":2}"#).unwrap();
        assert_eq!(
            q,
            Quota::with_period(5, Duration::from_millis(500)).burst(2)
        );
        let e = serde_json::from_str::<Quota>(r#"{"limit":5,"period":-1}"#).unwrap_err();
        assert!(e.to_string().contains("invalid duration -1"), "{e}");
        let e =
            serde_json::from_str::<Quota>(r#"{"limit":5,"period":"1s","brust":2}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `brust`"), "{e}");
        let a: Algorithm = serde_json::from_str(r#""sliding_window""#).unwrap();
        assert_eq!(a, Algorithm::SlidingWindow);
    }

    #[test]
    fn absurd_quotas_are_refused_with_a_reason() {
        let cases = [
            (Quota::per_minute(0), "at least 1 request"),
            (Quota::with_period(5, Duration::ZERO), "longer than zero"),
            (
                Quota::with_period(5, Duration::from_secs(400 * 86_400)),
                "at most 366 days",
            ),
            (
                Quota::with_period(u32::MAX, Duration::from_nanos(10)),
                "more than one per nanosecond",
            ),
            (Quota::per_second(1).burst(0), "burst must be at least 1"),
            (
                Quota::with_period(1, MAX_PERIOD).burst(u32::MAX),
                "lower the burst",
            ),
        ];
        for (q, needle) in cases {
            let e = q.validate(Algorithm::Gcra).unwrap_err();
            assert_eq!(e.setting(), "quota");
            assert!(
                e.to_string().contains(needle),
                "{e} should mention {needle}"
            );
            assert!(e.to_string().starts_with("invalid quota: "), "{e}");
            assert!(!e.reason().starts_with(char::is_uppercase), "{e}");
        }
        let e = Quota::per_second(5)
            .burst(2)
            .validate(Algorithm::SlidingWindow)
            .unwrap_err();
        assert!(e.to_string().contains("GCRA algorithm only"), "{e}");
    }
}
