//! Both algorithms against simple, independent reference models (proptest), through the public
//! store on a hand-moved clock.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use tower_rampart::backend::MemoryBackend;
use tower_rampart::backend::memory::MemoryRateLimitStore;
use tower_rampart::clock::{Clock, ManualClock};
use tower_rampart::rate_limit::{Algorithm, Decision, Quota, RateLimitLayer};

/// A keyed in-memory store on `clock`, as the layer builds it.
fn store(quota: Quota, algorithm: Algorithm, clock: &ManualClock) -> impl Fn(&u8) -> Decision {
    let layer = RateLimitLayer::builder()
        .quota(quota)
        .algorithm(algorithm)
        .key(tower_rampart::key::key_fn(|k: &u8| Some(*k)))
        .backend(MemoryBackend::new().clock(clock.clone()))
        .build()
        .unwrap();
    move |key| {
        let store: &MemoryRateLimitStore<u8, ManualClock> = layer.store();
        store.decide(key)
    }
}

/// Sliding-window reference: a log of admitted times, counted window by window.
struct WindowLog {
    limit: u128,
    period: u64,
    admitted: Vec<u64>,
}

impl WindowLog {
    fn counts(&self, t: u64) -> (u128, u128) {
        let idx = t / self.period;
        let start = idx * self.period;
        let prev_start = start.saturating_sub(self.period);
        let curr = self
            .admitted
            .iter()
            .filter(|&&a| a >= start && a <= t)
            .count() as u128;
        let prev = if idx == 0 {
            0
        } else {
            self.admitted
                .iter()
                .filter(|&&a| a >= prev_start && a < start)
                .count() as u128
        };
        (prev, curr)
    }

    fn allows(&self, t: u64) -> bool {
        let p = u128::from(self.period);
        let e = u128::from(t % self.period);
        let (prev, curr) = self.counts(t);
        prev * (p - e) + (curr + 1) * p <= self.limit * p
    }

    fn remaining_after(&self, t: u64) -> u32 {
        let p = u128::from(self.period);
        let e = u128::from(t % self.period);
        let (prev, curr) = self.counts(t);
        ((self.limit * p - prev * (p - e) - curr * p) / p) as u32
    }
}

/// GCRA reference: a continuous token bucket in nanoseconds of credit.
struct Bucket {
    capacity: u64,
    cost: u64,
    credit: u64,
    last: u64,
}

impl Bucket {
    fn decide(&mut self, t: u64) -> bool {
        self.credit = (self.credit + (t - self.last)).min(self.capacity);
        self.last = t;
        if self.credit >= self.cost {
            self.credit -= self.cost;
            true
        } else {
            false
        }
    }

    fn remaining(&self) -> u32 {
        (self.credit / self.cost) as u32
    }
}

/// (limit, period, [(key, gap)]): gaps are often zero, often exact multiples of the emission
/// interval or of the period (and one nanosecond short of them), so decisions land on boundaries.
fn ops() -> impl Strategy<Value = (u32, u64, Vec<(u8, u64)>)> {
    (1u32..20, 1u64..5_000).prop_flat_map(|(limit, period_ms)| {
        let period = period_ms * 1_000_000;
        let emission = period / u64::from(limit);
        let gap = prop_oneof![
            3 => Just(0u64),
            2 => (1u64..4).prop_map(move |k| k * emission),
            1 => Just(emission - 1),
            1 => (1u64..3).prop_map(move |k| k * period),
            1 => Just(period - 1),
            3 => 0..(3 * emission),
        ];
        (
            Just(limit),
            Just(period),
            prop::collection::vec((0u8..3, gap), 1..200),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn sliding_window_matches_the_log_model((limit, period, ops) in ops()) {
        let clock = ManualClock::new();
        let quota = Quota::with_period(limit, Duration::from_nanos(period));
        let store = store(quota, Algorithm::SlidingWindow, &clock);
        let mut logs: HashMap<u8, WindowLog> = HashMap::new();
        for (key, gap) in ops {
            clock.advance(Duration::from_nanos(gap));
            let t = clock.now();
            let log = logs.entry(key).or_insert(WindowLog { limit: u128::from(limit), period, admitted: vec![] });
            let expected = log.allows(t);
            let d: Decision = store(&key);
            prop_assert_eq!(d.is_allowed(), expected, "key {} at {}", key, t);
            if expected {
                log.admitted.push(t);
                prop_assert_eq!(d.remaining(), log.remaining_after(t));
            } else {
                // retry_after is exact: refused one nanosecond earlier, admitted at it.
                let r = d.retry_after().as_nanos() as u64;
                prop_assert!(r > 0);
                prop_assert!(!log.allows(t + r - 1), "admitted before retry_after");
                prop_assert!(log.allows(t + r), "still refused at retry_after");
            }
            // The window never admits more than the limit in any aligned period.
            let (_, curr) = log.counts(t);
            prop_assert!(curr <= u128::from(limit));
        }
    }

    #[test]
    fn gcra_matches_a_continuous_token_bucket((limit, period, ops) in ops(), burst in 1u32..30) {
        let clock = ManualClock::new();
        let quota = Quota::with_period(limit, Duration::from_nanos(period)).burst(burst);
        let store = store(quota, Algorithm::Gcra, &clock);
        let cost = period / u64::from(limit);
        let mut buckets: HashMap<u8, Bucket> = HashMap::new();
        for (key, gap) in ops {
            clock.advance(Duration::from_nanos(gap));
            let t = clock.now();
            let bucket = buckets.entry(key).or_insert(Bucket { capacity: cost * u64::from(burst), cost, credit: cost * u64::from(burst), last: t });
            let before = bucket.credit;
            let last = bucket.last;
            let expected = bucket.decide(t);
            let d = store(&key);
            prop_assert_eq!(d.is_allowed(), expected, "key {} at {}", key, t);
            if expected {
                prop_assert_eq!(d.remaining(), bucket.remaining());
            } else {
                // Refused until exactly enough credit has accrued.
                let credit = (before + (t - last)).min(bucket.capacity);
                prop_assert_eq!(d.retry_after().as_nanos() as u64, cost - credit);
            }
        }
    }
}
