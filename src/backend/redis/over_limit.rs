//! The Redis rate-limit store's memory of refused keys: a key Redis refused is refused in the
//! replica until its retry time, with no round trip.
//!
//! A refusal says something only about the question Redis answered: the same limits (names and
//! quotas) at the same cost. A refusal of 5 units says nothing about 1 unit, and one under a tier's
//! old limits nothing about its new ones. So each remembered refusal carries a tag of what it
//! answered (the limits and the cost, hashed), and answers only a request whose tag is the same;
//! any other goes to Redis, and its refusal (if any) replaces the one remembered, while its
//! admission (a spend, which moves the state the refusal was read from) forgets it. Peeks and sets
//! with shadow limits neither use nor fill it (see [`RedisRateLimitStore`](super::RedisRateLimitStore)).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::backend::memory::map::{BoundedMap, Expiring};
use crate::clock::{Nanos, duration_to_nanos};
use crate::rate_limit::Decision;
use crate::rate_limit::quota::Limits;

/// A refusal remembered for one key.
#[derive(Debug, Default)]
pub(crate) struct OverLimit {
    until: AtomicU64,
    reset_at: AtomicU64,
    /// What it answered ([`tag`]), the binding limit's index in the low byte.
    tag: AtomicU64,
}

impl Expiring for OverLimit {
    type Context = ();

    fn is_idle(&self, _: &(), now: Nanos) -> bool {
        now >= self.until.load(Ordering::Acquire)
    }

    fn due(&self, _: &(), _: Nanos) -> Nanos {
        self.until.load(Ordering::Relaxed)
    }
}

/// The tag of a question: `limits` (each limit's name and quota, in the set's order) at `cost`
/// units, hashed, with the low byte clear for the binding limit's index.
pub(crate) fn tag<'a>(limits: impl IntoIterator<Item = (&'a str, &'a Limits)>, cost: u32) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x5eed_0018).build_hasher();
    for (name, l) in limits {
        name.hash(&mut h);
        (l.limit, l.burst, l.period, l.emission, l.tolerance).hash(&mut h);
    }
    cost.hash(&mut h);
    h.finish() & !0xff
}

/// A refusal found for a key: when it ends, when its state resets, and the binding limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Remembered {
    pub(crate) until: Nanos,
    pub(crate) reset_at: Nanos,
    pub(crate) binding: usize,
}

/// The refusals remembered by one store, at most `max_keys`.
pub(crate) struct OverLimits<K> {
    map: BoundedMap<K, OverLimit>,
    /// Whether anything was ever remembered (until then, [`forget`](Self::forget) costs one load).
    used: AtomicBool,
}

impl<K: Hash + Eq + Clone> OverLimits<K> {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            map: BoundedMap::new(max_keys),
            used: AtomicBool::new(false),
        }
    }

    /// The refusal remembered for `key` that still holds at `now`, if it answered `tag` (computed
    /// only when there is one).
    #[inline]
    pub(crate) fn get(&self, key: &K, now: Nanos, tag: impl FnOnce() -> u64) -> Option<Remembered> {
        let (until, reset_at, stored) = self.map.get(key, |o| {
            (
                o.until.load(Ordering::Acquire),
                o.reset_at.load(Ordering::Acquire),
                o.tag.load(Ordering::Acquire),
            )
        })?;
        (now < until && stored & !0xff == tag()).then_some(Remembered {
            until,
            reset_at,
            binding: (stored & 0xff) as usize,
        })
    }

    /// Remembers `d`, a refusal Redis gave to a request for `key` sent at `sent`, that answered
    /// `tag`. A refusal with no retry time (a cost no state could admit) is not remembered.
    pub(crate) fn remember(&self, key: &K, sent: Nanos, d: &Decision, tag: u64) {
        let retry = duration_to_nanos(d.retry_after());
        if retry == 0 {
            return;
        }
        let reset = duration_to_nanos(d.reset());
        let binding = d.policy_index().min(0xff) as u64;
        if !self.used.load(Ordering::Relaxed) {
            self.used.store(true, Ordering::Relaxed);
        }
        self.map.with(key, &(), sent, |o| {
            o.tag.store(tag | binding, Ordering::Release);
            o.reset_at
                .store(sent.saturating_add(reset), Ordering::Release);
            o.until.store(sent.saturating_add(retry), Ordering::Release);
        });
    }

    /// Forgets `key`'s refusal, if one is remembered: a request for it was just admitted and
    /// spent, so the state any refusal was read from has moved (a refusal of 3 units, then 1 unit
    /// admitted: the 3 units now wait longer than the refusal said).
    #[inline]
    pub(crate) fn forget(&self, key: &K) {
        if self.used.load(Ordering::Relaxed) {
            self.map.get(key, |o| o.until.store(0, Ordering::Release));
        }
    }

    /// How many keys are remembered (idle ones included until they are swept).
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}
