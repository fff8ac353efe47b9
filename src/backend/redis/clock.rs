//! The Redis backend's clocks: how Redis's `TIME` relates to this process's (learnt from replies),
//! and where a store takes "now" from.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use redis::Value;

use crate::clock::{Clock, Nanos, TokioClock};

/// How Redis's clock (`TIME`, nanoseconds since the Unix epoch) relates to this process's
/// ([`Conn::clock`]), as far as replies tell, so that a call can say until when, on Redis's clock,
/// it may still count (see [`Conn::eval_before_deadline`]).
///
/// A reply carrying the `TIME` at which Redis ran the call, received at local time `r`, bounds the
/// offset from below: `redis_time - r <= offset`, since the call ran before its reply arrived (by
/// the reply's travel time). The estimate is the largest such bound seen in the current or the
/// previous window of [`OFFSET_WINDOW`] (so it follows a Redis clock that is stepped or slewed,
/// within 20 s), and it errs on the early side by about the travel time of the fastest recent
/// reply: a bound computed from it expires that much before the caller gives up, which is what a
/// reply needs to get back in time.
///
/// Nodes of a cluster each have their own clock; one estimate serves them all, following the node
/// furthest ahead (so on a node behind it, a bound is late by the difference: see the module
/// documentation).
pub(super) struct RedisClock {
    /// The window (`local time / OFFSET_WINDOW`) that `current` covers.
    window: AtomicU64,
    pub(super) current: AtomicI64,
    pub(super) previous: AtomicI64,
}

/// An offset not known yet.
pub(super) const NO_OFFSET: i64 = i64::MIN;

/// How long one offset sample counts for: between one and two of these.
const OFFSET_WINDOW: Nanos = 10_000_000_000;

impl RedisClock {
    pub(super) const fn new() -> Self {
        Self {
            window: AtomicU64::new(0),
            current: AtomicI64::new(NO_OFFSET),
            previous: AtomicI64::new(NO_OFFSET),
        }
    }

    /// Learns from a reply received at local time `received` saying Redis ran the call at
    /// `redis_us` (microseconds since the Unix epoch).
    pub(super) fn learn(&self, received: Nanos, redis_us: u64) {
        let (Some(redis_ns), Ok(received_ns)) = (
            redis_us
                .checked_mul(1_000)
                .and_then(|n| i64::try_from(n).ok()),
            i64::try_from(received),
        ) else {
            return;
        };
        let sample = redis_ns - received_ns;
        let window = received / OFFSET_WINDOW;
        let seen = self.window.load(Ordering::Acquire);
        if window > seen
            && self
                .window
                .compare_exchange(seen, window, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            let carried = if window == seen + 1 {
                self.current.swap(NO_OFFSET, Ordering::AcqRel)
            } else {
                self.current.store(NO_OFFSET, Ordering::Release);
                NO_OFFSET
            };
            self.previous.store(carried, Ordering::Release);
        }
        // Most replies teach nothing new: read before writing the shared line.
        if sample > self.current.load(Ordering::Relaxed) {
            self.current.fetch_max(sample, Ordering::AcqRel);
        }
    }

    /// Redis's time, in microseconds since the Unix epoch, at local time `at` (rounded down), or
    /// `None` before any reply has told.
    pub(super) fn redis_us_at(&self, at: Nanos) -> Option<u64> {
        let offset = self
            .current
            .load(Ordering::Acquire)
            .max(self.previous.load(Ordering::Acquire));
        if offset == NO_OFFSET {
            return None;
        }
        let t = i64::try_from(at).ok()?.checked_add(offset)?;
        u64::try_from(t).ok().map(|t| t / 1_000)
    }
}

/// `TIME`'s answer, `[seconds, microseconds]`.
pub(super) fn parse_time(value: &Value) -> Option<(u64, u64)> {
    let Value::Array(items) = value else {
        return None;
    };
    let number = |v: &Value| match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(i) => u64::try_from(*i).ok(),
        _ => None,
    };
    match items.as_slice() {
        [s, us] => Some((number(s)?, number(us)?)),
        _ => None,
    }
}

#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
/// Where a store takes "now" from: Redis `TIME` (the default), or a clock of the caller's.
#[derive(Clone)]
pub(crate) enum StoreClock {
    /// Redis decides on its own `TIME`; local bookkeeping (remembered refusals, the `Local`
    /// fallback) uses tokio's clock.
    Redis(TokioClock),
    Custom(Arc<dyn Fn() -> Nanos + Send + Sync>),
}

impl StoreClock {
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(crate) fn is_custom(&self) -> bool {
        matches!(self, Self::Custom(_))
    }
}

impl fmt::Debug for StoreClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Redis(_) => "redis TIME",
            Self::Custom(_) => "custom",
        })
    }
}

impl Clock for StoreClock {
    #[inline]
    fn now(&self) -> Nanos {
        match self {
            Self::Redis(c) => c.now(),
            Self::Custom(f) => f(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Nanos = 1_000_000_000;

    #[test]
    fn redis_clock_is_unknown_until_a_reply_tells() {
        let c = RedisClock::new();
        assert_eq!(c.redis_us_at(5 * S), None);
        // Received at local 2 s, Redis ran it at 1,000,000 s: Redis is at least 999,998 s ahead.
        c.learn(2 * S, 1_000_000_000_000);
        assert_eq!(c.redis_us_at(3 * S), Some(1_000_001_000_000));
    }

    #[test]
    fn redis_clock_keeps_the_tightest_lower_bound() {
        let c = RedisClock::new();
        c.learn(S, 10_000_000); // offset >= 9 s
        c.learn(S, 10_000_500); // a faster reply: offset >= 9.0005 s
        c.learn(S, 10_000_200); // a slower one teaches nothing
        assert_eq!(c.redis_us_at(2 * S), Some(11_000_500));
    }

    #[test]
    fn redis_clock_follows_a_clock_stepped_back_within_two_windows() {
        let c = RedisClock::new();
        c.learn(S, 100_000_000); // offset 99 s
        // Redis's clock is stepped back by 50 s: samples say 49 s from now on.
        let later = |local: Nanos| local / 1_000 + 49_000_000;
        c.learn(OFFSET_WINDOW + S, later(OFFSET_WINDOW + S));
        assert_eq!(
            c.redis_us_at(OFFSET_WINDOW + S),
            Some((OFFSET_WINDOW + S) / 1_000 + 99_000_000),
            "the previous window still counts"
        );
        c.learn(2 * OFFSET_WINDOW + S, later(2 * OFFSET_WINDOW + S));
        assert_eq!(
            c.redis_us_at(2 * OFFSET_WINDOW + S),
            Some(later(2 * OFFSET_WINDOW + S)),
            "two windows on, only what Redis says now counts"
        );
        // After a long silence, the first reply decides alone.
        c.learn(10 * OFFSET_WINDOW, 10 * OFFSET_WINDOW / 1_000 + 5_000_000);
        assert_eq!(
            c.redis_us_at(10 * OFFSET_WINDOW),
            Some(10 * OFFSET_WINDOW / 1_000 + 5_000_000)
        );
    }

    #[test]
    fn time_replies_parse() {
        let v = Value::Array(vec![
            Value::BulkString(b"1771234567".to_vec()),
            Value::BulkString(b"891234".to_vec()),
        ]);
        assert_eq!(parse_time(&v), Some((1_771_234_567, 891_234)));
        assert_eq!(parse_time(&Value::Okay), None);
    }
}
