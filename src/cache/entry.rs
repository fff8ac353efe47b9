//! Cache entries: a stored value and when it was stored, until when it is fresh, and how long it
//! may be served stale.
//!
//! An entry's life has three windows after it is stored:
//!
//! ```text
//! stored_at        fresh_until          revalidate_until / stale_if_error_until    expires_at
//!     |---- fresh ----|---- stale-while-revalidate ----|                              |
//!                     |------------------ stale-if-error ----------------------------|
//! ```
//!
//! - **fresh**: served as is (`x-cache: HIT`).
//! - **stale-while-revalidate**: served at once (`x-cache: STALE`) while one background call
//!   refreshes it.
//! - **stale-if-error**: the request goes to the inner service, and the entry is served instead
//!   (`STALE`) only if that call fails.
//! - after [`expires_at`](Timing::expires_at) (the later of the two stale windows' ends) the
//!   entry is gone.
//!
//! An entry is an `Arc`: cloning it on a hit costs one reference-count increment. Its fields are
//! what a serialising store needs to carry (see [`CachedResponse`](super::CachedResponse) for the
//! HTTP value and its binary format); times are [`tokio::time::Instant`]s, which a shared store
//! converts to and from its own clock as ages and remaining lifetimes.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tokio::time::Instant;
//! use tower_rampart::cache::CacheEntry;
//! use tower_rampart::cache::entry::{Freshness, Lifetimes, Timing};
//!
//! let now = Instant::now();
//! let lifetimes = Lifetimes {
//!     ttl: Duration::from_secs(60),
//!     stale_while_revalidate: Duration::from_secs(30),
//!     stale_if_error: Duration::from_secs(300),
//!     age: Duration::ZERO,
//! };
//! let entry = CacheEntry::new("summary", Timing::new(now, lifetimes), 7);
//! assert_eq!(entry.freshness(now + Duration::from_secs(59)), Freshness::Fresh);
//! assert_eq!(entry.freshness(now + Duration::from_secs(75)), Freshness::Revalidate);
//! assert_eq!(entry.freshness(now + Duration::from_secs(120)), Freshness::IfError);
//! assert_eq!(entry.timing().expires_at(), now + Duration::from_secs(360));
//! ```

use std::any::Any;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// How long an entry is fresh, and how long it may then be served stale.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    /// Fresh for this long after it is stored (the TTL).
    pub ttl: Duration,
    /// Then served stale while being refreshed in the background, for this long.
    pub stale_while_revalidate: Duration,
    /// Then (counting from the end of the TTL too) served stale when a refresh fails, for this long.
    pub stale_if_error: Duration,
    /// How old the value already was when it was stored (an HTTP response's `Age` from a cache
    /// upstream): the windows count from when it was made, and its age includes this. Zero for
    /// a value made now.
    pub age: Duration,
}

impl Lifetimes {
    /// Fresh for `ttl`, never served stale.
    pub const fn ttl(ttl: Duration) -> Self {
        Self {
            ttl,
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            age: Duration::ZERO,
        }
    }

    /// How long after being made (stored, less its [`age`](Self::age)) the entry is of no more
    /// use.
    pub fn total(&self) -> Duration {
        self.ttl
            .saturating_add(self.stale_while_revalidate.max(self.stale_if_error))
    }
}

/// When an entry was stored and the ends of its windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// When the value was produced (the response's `Age` counts from here).
    pub stored_at: Instant,
    /// Fresh until this instant (exclusive).
    pub fresh_until: Instant,
    /// Served stale while a background refresh runs until this instant (exclusive).
    pub revalidate_until: Instant,
    /// Served stale when a refresh fails until this instant (exclusive).
    pub stale_if_error_until: Instant,
}

impl Timing {
    /// The timing of an entry stored at `stored_at` with `lifetimes`: made `lifetimes.age` before
    /// it, its windows counted from then.
    pub fn new(stored_at: Instant, lifetimes: Lifetimes) -> Self {
        let stored_at = stored_at.checked_sub(lifetimes.age).unwrap_or(stored_at);
        let fresh_until = add(stored_at, lifetimes.ttl);
        Self {
            stored_at,
            fresh_until,
            revalidate_until: add(fresh_until, lifetimes.stale_while_revalidate),
            stale_if_error_until: add(fresh_until, lifetimes.stale_if_error),
        }
    }

    /// When the entry is of no more use: the later end of the two stale windows.
    pub fn expires_at(&self) -> Instant {
        self.revalidate_until
            .max(self.stale_if_error_until)
            .max(self.fresh_until)
    }
}

/// `at + d`, saturating about 30 years ahead instead of overflowing.
fn add(at: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(30 * 365 * 24 * 3600);
    at.checked_add(d.min(FAR))
        .unwrap_or_else(|| at + Duration::from_secs(3600))
}

/// Where an entry stands at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Freshness {
    /// Serve it.
    Fresh,
    /// Serve it stale at once, and refresh it in the background.
    Revalidate,
    /// Call the inner service; serve this entry only if the call fails.
    IfError,
    /// Of no use.
    Expired,
}

/// A stored value and its [`Timing`]. Cheap to clone (an `Arc`).
pub struct CacheEntry<V> {
    inner: Arc<Inner<V>>,
}

struct Inner<V> {
    value: V,
    timing: Timing,
    weight: u32,
}

impl<V> Clone for CacheEntry<V> {
    #[inline]
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for CacheEntry<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheEntry")
            .field("timing", &self.inner.timing)
            .field("weight", &self.inner.weight)
            .finish_non_exhaustive()
    }
}

impl<V> CacheEntry<V> {
    /// An entry holding `value`, whose size for the store's byte bound is `weight` bytes
    /// (saturating at 4 GiB).
    pub fn new(value: V, timing: Timing, weight: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                value,
                timing,
                weight: u32::try_from(weight).unwrap_or(u32::MAX),
            }),
        }
    }

    /// The stored value.
    #[inline]
    pub fn value(&self) -> &V {
        &self.inner.value
    }

    /// When it was stored and how long it lives.
    #[inline]
    pub fn timing(&self) -> &Timing {
        &self.inner.timing
    }

    /// Its size in bytes, as counted against the store's bound.
    #[inline]
    pub fn weight(&self) -> u32 {
        self.inner.weight
    }

    /// How long ago it was stored, as of `now`.
    #[inline]
    pub fn age(&self, now: Instant) -> Duration {
        let stored_at = self.inner.timing.stored_at.into_std();
        Duration::from_nanos(crate::clock::nanos_between(stored_at, now.into_std()))
    }

    /// Where the entry stands at `now`.
    #[inline]
    pub fn freshness(&self, now: Instant) -> Freshness {
        let t = &self.inner.timing;
        if now < t.fresh_until {
            Freshness::Fresh
        } else if now < t.revalidate_until {
            Freshness::Revalidate
        } else if now < t.stale_if_error_until {
            Freshness::IfError
        } else {
            Freshness::Expired
        }
    }

    /// Whether the entry may be served when a refresh fails, at `now`.
    #[inline]
    pub fn usable_if_error(&self, now: Instant) -> bool {
        now < self.inner.timing.stale_if_error_until
    }

    /// Whether two handles are the same entry.
    pub fn ptr_eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl<V: Send + Sync + 'static> CacheEntry<V> {
    /// The entry without its value type (no allocation), for passing through the untyped
    /// single-flight slots.
    pub(crate) fn into_any(self) -> Arc<dyn Any + Send + Sync> {
        self.inner
    }

    /// Back from [`into_any`](Self::into_any); `None` for an entry of another type.
    pub(crate) fn from_any(any: Arc<dyn Any + Send + Sync>) -> Option<Self> {
        any.downcast::<Inner<V>>().ok().map(|inner| Self { inner })
    }
}

impl Timing {
    /// The four times (stored at, fresh until, revalidate until, stale-if-error until) as Unix
    /// milliseconds, given one reading of both clocks: how a store's codec writes them.
    #[cfg_attr(not(any(feature = "http", feature = "redis")), allow(dead_code))]
    pub(crate) fn to_unix_ms(self, now: Instant, wall_now: SystemTime) -> [u64; 4] {
        [
            self.stored_at,
            self.fresh_until,
            self.revalidate_until,
            self.stale_if_error_until,
        ]
        .map(|at| to_unix_ms(at, now, wall_now))
    }

    /// The times written by [`to_unix_ms`](Self::to_unix_ms), read back given one reading of both
    /// clocks; `None` when they are not in the order every entry written has them (anything else
    /// was not written by this crate).
    #[cfg_attr(not(any(feature = "http", feature = "redis")), allow(dead_code))]
    pub(crate) fn from_unix_ms(ms: [u64; 4], now: Instant, wall_now: SystemTime) -> Option<Self> {
        let times = ms.map(|ms| from_unix_ms(ms, now, wall_now));
        if !times_in_order(&times) {
            return None;
        }
        let [
            stored_at,
            fresh_until,
            revalidate_until,
            stale_if_error_until,
        ] = times;
        Some(Self {
            stored_at,
            fresh_until,
            revalidate_until,
            stale_if_error_until,
        })
    }
}

/// Whether an entry's times (stored at, fresh until, revalidate until, stale-if-error until) are
/// in the order every entry written has them: anything else was not written by this crate.
#[cfg_attr(not(any(feature = "http", feature = "redis")), allow(dead_code))]
pub(crate) fn times_in_order(times: &[Instant; 4]) -> bool {
    let [
        stored_at,
        fresh_until,
        revalidate_until,
        stale_if_error_until,
    ] = *times;
    stored_at <= fresh_until
        && fresh_until <= revalidate_until
        && fresh_until <= stale_if_error_until
}

/// `at` as Unix milliseconds, given one reading of both clocks.
#[cfg_attr(not(any(feature = "http", feature = "redis")), allow(dead_code))]
pub(crate) fn to_unix_ms(at: Instant, now: Instant, wall_now: SystemTime) -> u64 {
    let wall = if at >= now {
        wall_now.checked_add(at - now)
    } else {
        wall_now.checked_sub(now - at)
    };
    wall.and_then(|w| w.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Unix milliseconds as an `Instant`, given one reading of both clocks.
#[cfg_attr(not(any(feature = "http", feature = "redis")), allow(dead_code))]
pub(crate) fn from_unix_ms(ms: u64, now: Instant, wall_now: SystemTime) -> Instant {
    let wall = UNIX_EPOCH + Duration::from_millis(ms);
    match wall.duration_since(wall_now) {
        Ok(ahead) => now
            .checked_add(ahead)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 24 * 3600)),
        Err(behind) => now.checked_sub(behind.duration()).unwrap_or(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_each_other() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let e = CacheEntry::new(
            "v",
            Timing::new(
                t0,
                Lifetimes {
                    ttl: s(10),
                    stale_while_revalidate: s(5),
                    stale_if_error: s(60),
                    age: Duration::ZERO,
                },
            ),
            1,
        );
        assert_eq!(e.freshness(t0), Freshness::Fresh);
        assert_eq!(e.freshness(t0 + s(10)), Freshness::Revalidate);
        assert_eq!(e.freshness(t0 + s(15)), Freshness::IfError);
        assert_eq!(e.freshness(t0 + s(70)), Freshness::Expired);
        assert_eq!(e.timing().expires_at(), t0 + s(70));
        assert_eq!(e.age(t0 + s(3)), s(3));
        let any = e.clone().into_any();
        assert!(CacheEntry::<u8>::from_any(any.clone()).is_none());
        assert!(CacheEntry::<&str>::from_any(any).unwrap().ptr_eq(&e));
    }

    #[test]
    fn an_age_at_storing_counts_towards_freshness_and_the_age() {
        let t0 = Instant::now() + Duration::from_secs(100);
        let s = Duration::from_secs;
        let lifetimes = Lifetimes {
            age: s(55),
            ..Lifetimes::ttl(s(60))
        };
        let e = CacheEntry::new("v", Timing::new(t0, lifetimes), 1);
        assert_eq!(e.age(t0), s(55));
        assert_eq!(e.freshness(t0 + s(4)), Freshness::Fresh);
        assert_eq!(e.freshness(t0 + s(5)), Freshness::Expired);
    }

    #[test]
    fn huge_lifetimes_saturate() {
        let t0 = Instant::now();
        let t = Timing::new(t0, Lifetimes::ttl(Duration::MAX));
        assert!(t.fresh_until > t0);
    }
}
