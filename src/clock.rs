//! Time sources.
//!
//! Every decision in this crate is a pure function of some state and "now". "Now" comes from a
//! [`Clock`], expressed as nanoseconds since the clock's own epoch. The default, [`TokioClock`], reads
//! [`tokio::time::Instant`], so tests can freeze and advance time with
//! `tokio::time::pause` / `tokio::time::advance` (or `#[tokio::test(start_paused = true)]`).
//! [`ManualClock`] is moved by hand, for unit tests and benchmarks that run outside a runtime.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_rampart::clock::{Clock, ManualClock};
//!
//! let clock = ManualClock::new();
//! assert_eq!(clock.now(), 0);
//! clock.advance(Duration::from_millis(1500));
//! assert_eq!(clock.now(), 1_500_000_000);
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Nanoseconds since a clock's epoch.
pub type Nanos = u64;

/// A monotonic time source.
///
/// Implementations must never go backwards, across threads too: a read that happens after another
/// (through the store's atomics or locks) returns at least as much. Clones share one timeline.
/// Stores may read the clock more than once per decision (again after losing a race for a cell,
/// and when adding a key) and while holding a lock of their own (the in-memory sliding window's
/// cell), so a read should be quick and must not block or call back into the store.
pub trait Clock: Clone + Send + Sync + 'static {
    /// Nanoseconds elapsed since this clock's epoch.
    fn now(&self) -> Nanos;
}

/// The default clock: [`tokio::time::Instant`], which honours paused time in tests.
///
/// Its epoch is the moment it was created.
#[derive(Clone, Copy, Debug)]
pub struct TokioClock {
    epoch: Epoch,
}

/// A [`TokioClock`]'s epoch, in the form its reads subtract it in.
#[derive(Clone, Copy, Debug)]
enum Epoch {
    /// Nanoseconds as [`timespec_nanos`] reads an instant, where that reading was checked to
    /// agree with `std`'s arithmetic ([`timespec_hashing`]).
    Raw(u64),
    /// `std`'s instant, subtracted with `std` (one call, rather than through tokio's and `std`'s
    /// saturating wrappers).
    Std(std::time::Instant),
}

impl TokioClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        let now = tokio::time::Instant::now().into_std();
        let epoch = if timespec_hashing() {
            Epoch::Raw(timespec_nanos(now))
        } else {
            Epoch::Std(now)
        };
        Self { epoch }
    }

    /// This clock's reading at `instant` (read once, it can serve both a `Nanos` and a tokio
    /// deadline); 0 before the epoch. A reading past `u64::MAX` nanoseconds (584 years) saturates.
    #[inline]
    pub(crate) fn at(&self, instant: tokio::time::Instant) -> Nanos {
        let instant = instant.into_std();
        match self.epoch {
            Epoch::Raw(epoch) => timespec_nanos(instant).saturating_sub(epoch),
            Epoch::Std(epoch) => match instant.checked_duration_since(epoch) {
                Some(d) => d
                    .as_secs()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(u64::from(d.subsec_nanos())),
                None => 0,
            },
        }
    }
}

// Reading an instant through its `Hash`.
//
// `std` offers no way to read an `Instant` as a number but subtracting another, and that
// subtraction (`Instant::checked_duration_since`: a call to `sub_timespec`, its comparisons and
// `Duration::new`'s normalising) was about half of a clock read on the rate limiter's hot path
// (55 of 106 instructions). Where an `Instant` is a `timespec` (Linux, macOS and the other Unix
// targets), its derived `Hash` writes the seconds, then the nanoseconds; a `Hasher` that keeps
// them reads the instant in a few instructions. The order of those writes is not something `std`
// promises, so it is checked once per process, and a clock made where it does not hold (Windows'
// `Duration`-based instant, or a future `std`'s) subtracts with `std` as before.

/// What an `Instant`'s `Hash` writes, where it is a `timespec`: its seconds, then its
/// nanoseconds. Anything else written marks the reading unusable.
#[derive(Default)]
struct TimespecHash {
    writes: u8,
    secs: i64,
    nanos: u32,
    other: bool,
}

impl TimespecHash {
    /// What `instant`'s `Hash` writes.
    #[inline(always)]
    fn of(instant: std::time::Instant) -> Self {
        use std::hash::Hash;
        let mut h = Self::default();
        instant.hash(&mut h);
        h
    }
}

impl std::hash::Hasher for TimespecHash {
    fn finish(&self) -> u64 {
        0
    }

    fn write(&mut self, _: &[u8]) {
        self.other = true;
    }

    #[inline]
    fn write_i64(&mut self, secs: i64) {
        self.other |= self.writes != 0;
        self.secs = secs;
        self.writes = self.writes.saturating_add(1);
    }

    #[inline]
    fn write_u32(&mut self, nanos: u32) {
        self.other |= self.writes != 1;
        self.nanos = nanos;
        self.writes = self.writes.saturating_add(1);
    }
}

/// `instant` in nanoseconds as its `Hash` writes it, assuming it writes a `timespec` (which
/// [`timespec_hashing`] checked before any clock uses this); 0 for seconds before zero.
///
/// `INSTRUCTIONS_ONLY=1 cargo bench --bench instructions --all-features -- u64/`, builds before
/// and after, same machine: `u64/rampart_rate_limit_global` +227 -> +168 instructions per call
/// (BENCHMARKS.md, "The clock").
#[inline(always)]
fn timespec_nanos(instant: std::time::Instant) -> u64 {
    let h = TimespecHash::of(instant);
    u64::try_from(h.secs).map_or(0, |secs| {
        secs.saturating_mul(1_000_000_000)
            .saturating_add(u64::from(h.nanos))
    })
}

/// Nanoseconds from `earlier` to `later`, 0 when `later` is not after it: `std`'s saturating
/// subtraction, read through the instants' `Hash` where [`timespec_hashing`] found that agrees
/// with `std` (and both read as nanoseconds past the monotonic zero that fit a `u64`).
///
/// For the times measured on hot paths: a Redis call's latency, a cache entry's age.
/// `INSTRUCTIONS_ONLY=1 INSTRUCTIONS_CALLS=2000 cargo bench --bench instructions --all-features --
/// redis64/`: `std`'s `saturating_duration_since` was about 50 instructions each (three per
/// Redis cache hit); see BENCHMARKS.md, "Instant arithmetic".
#[cfg(any(feature = "cache", all(feature = "redis", feature = "metrics")))]
#[inline]
pub(crate) fn nanos_between(earlier: std::time::Instant, later: std::time::Instant) -> Nanos {
    if timespec_hashing()
        && let (Some(earlier_ns), Some(later_ns)) = (timespec_exact(earlier), timespec_exact(later))
    {
        return later_ns.saturating_sub(earlier_ns);
    }
    duration_to_nanos(later.saturating_duration_since(earlier))
}

/// [`timespec_nanos`], `None` where it would clamp or saturate (seconds before zero, or past
/// `u64::MAX` nanoseconds).
#[cfg(any(feature = "cache", all(feature = "redis", feature = "metrics")))]
#[inline(always)]
fn timespec_exact(instant: std::time::Instant) -> Option<u64> {
    let h = TimespecHash::of(instant);
    u64::try_from(h.secs)
        .ok()?
        .checked_mul(1_000_000_000)?
        .checked_add(u64::from(h.nanos))
}

/// Whether this target's `std::time::Instant` hashes as a `timespec` whose nanoseconds
/// [`timespec_nanos`] reads exactly as `std`'s own arithmetic counts them (checked once per
/// process on instants a few nanoseconds to hours apart). Where it does not (another platform's
/// representation, or a future `std`'s), clocks take `std`'s subtraction instead.
fn timespec_hashing() -> bool {
    use std::sync::OnceLock;
    static CHECKED: OnceLock<bool> = OnceLock::new();
    *CHECKED.get_or_init(|| {
        let read = |instant: std::time::Instant| {
            let h = TimespecHash::of(instant);
            (h.writes == 2 && !h.other && h.secs >= 0 && h.nanos < 1_000_000_000)
                .then(|| timespec_nanos(instant))
        };
        let base = std::time::Instant::now();
        let Some(zero) = read(base) else {
            return false;
        };
        [
            1,
            999,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            1_999_999_999,
            7_384_123_456_789,
        ]
        .into_iter()
        .all(|ns| {
            let later = base + Duration::from_nanos(ns);
            read(later).and_then(|n| n.checked_sub(zero)) == Some(ns)
        })
    })
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    /// `instructions` bench, `u64/rampart_rate_limit_global`: `epoch.elapsed()` then
    /// `as_nanos()` cost 106 instructions per read (tokio's `elapsed`, `std`'s `duration_since`,
    /// `sub_timespec`, a 128-bit conversion); tokio's `Instant::now` read through the instant's
    /// `Hash` is about 47 of them (BENCHMARKS.md, "The clock").
    #[inline]
    fn now(&self) -> Nanos {
        // 584 years of nanoseconds fit in a u64; a clock running longer saturates.
        self.at(tokio::time::Instant::now())
    }
}

/// A clock that only moves when told to. Clones share one timeline.
#[derive(Clone, Default)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(duration_to_nanos(by), Ordering::AcqRel);
    }

    /// Sets the clock to `at` nanoseconds. Used to replay recorded times; it must not go backwards.
    ///
    /// # Panics
    ///
    /// Panics if `at` is earlier than the current time.
    pub fn set(&self, at: Nanos) {
        let prev = self.now.swap(at, Ordering::AcqRel);
        assert!(
            at >= prev,
            "ManualClock::set must not move time backwards ({prev} -> {at})"
        );
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl Clock for ManualClock {
    #[inline]
    fn now(&self) -> Nanos {
        self.now.load(Ordering::Acquire)
    }
}

/// Whole seconds, rounded up, so a client that waits that long is never early.
#[cfg(feature = "http")]
pub(crate) fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// Converts a duration to nanoseconds, saturating at `u64::MAX` (about 584 years).
#[inline]
pub(crate) fn duration_to_nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An opt-in clock that is cheaper to read than [`TokioClock`] and coarser: a background task
/// (on the tokio runtime it was made in) stores tokio's time every `resolution`, and reading it is
/// one atomic load (feature `coarse-clock`).
///
/// # Trade-off
///
/// - **Resolution.** Time moves in steps of `resolution` (1 ms is a good value): requests within
///   one step see the same time, and it runs behind tokio's by up to a step (plus up to 1 ms, the
///   granularity of tokio's timer, which wakes the task). A rate limiter on this clock is never
///   more permissive than on [`TokioClock`] (it sees time late, so it refills late), but it can be
///   up to one step stricter: for quotas whose emission interval is near or below `resolution`
///   (thousands per second per key), prefer [`TokioClock`].
/// - **A task.** It runs every `resolution` while any clone of the clock is alive, and stops once
///   they are all dropped; on a runtime that is shut down, time stops.
/// - **Paused time.** It follows tokio's paused time (the task reads `tokio::time::Instant` and
///   sleeps on tokio's timer), but only once the task has run after the clock was advanced:
///   tests that advance time by hand should yield (`tokio::task::yield_now().await`) after
///   `tokio::time::advance`, or use [`TokioClock`] or [`ManualClock`].
///
/// `instructions` bench, `u64/rampart_rate_limit_global_coarse_clock` against
/// `u64/rampart_rate_limit_global`: see BENCHMARKS.md for both rows.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::time::Duration;
/// use tower_rampart::backend::MemoryBackend;
/// use tower_rampart::clock::CoarseClock;
/// use tower_rampart::rate_limit::{Quota, RateLimitLayer};
///
/// let layer = RateLimitLayer::builder()
///     .quota(Quota::per_second(100))
///     .backend(MemoryBackend::new().clock(CoarseClock::spawn(Duration::from_millis(1))))
///     .build()
///     .expect("a valid quota");
/// # let _ = layer;
/// # }
/// ```
#[cfg(feature = "coarse-clock")]
#[derive(Clone, Debug)]
pub struct CoarseClock {
    now: Arc<AtomicU64>,
}

#[cfg(feature = "coarse-clock")]
impl CoarseClock {
    /// A clock whose epoch is now, stepping every `resolution`, kept by a task spawned on the
    /// current tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, or if `resolution` is zero.
    pub fn spawn(resolution: Duration) -> Self {
        assert!(
            !resolution.is_zero(),
            "CoarseClock::spawn needs a resolution above zero"
        );
        let clock = TokioClock::new();
        let now = Arc::new(AtomicU64::new(0));
        let weak = Arc::downgrade(&now);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(resolution);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(now) = weak.upgrade() else { break };
                // Never backwards, whatever the order the task and a reader ran in.
                now.fetch_max(clock.now(), Ordering::Release);
            }
        });
        Self { now }
    }
}

#[cfg(feature = "coarse-clock")]
impl Clock for CoarseClock {
    #[inline]
    fn now(&self) -> Nanos {
        self.now.load(Ordering::Acquire)
    }
}

#[cfg(all(test, feature = "coarse-clock"))]
mod coarse_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time_never_ahead_and_at_most_two_steps_behind() {
        let start = tokio::time::Instant::now();
        let clock = CoarseClock::spawn(Duration::from_millis(1));
        let mut last = 0;
        let mut moved = 0;
        for micros in [5_000, 400, 600, 3_000, 250, 250, 250, 250, 10_000] {
            tokio::time::advance(Duration::from_micros(micros)).await;
            tokio::task::yield_now().await;
            let exact = duration_to_nanos(start.elapsed());
            let coarse = clock.now();
            assert!(coarse <= exact, "ahead of tokio's time: {coarse} > {exact}");
            // One step, and tokio's timer rounding its wake-ups up to the millisecond.
            assert!(
                exact - coarse <= 2_000_000,
                "too far behind: {coarse} for {exact}"
            );
            assert!(coarse >= last, "went backwards: {last} -> {coarse}");
            moved += usize::from(coarse > last);
            last = coarse;
        }
        assert!(moved >= 4, "it steps as time is advanced ({moved} steps)");
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_ends_when_every_clone_is_dropped() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let clock = CoarseClock::spawn(Duration::from_millis(1));
        let copy = clock.clone();
        drop(clock);
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert!(copy.now() >= 2_000_000, "a clone keeps it running");
        assert_eq!(tasks(), before + 1);
        drop(copy);
        tokio::time::sleep(Duration::from_millis(3)).await;
        assert_eq!(tasks(), before, "no clone left: the task ended");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn linux_instants_are_read_through_their_hash() {
        assert!(timespec_hashing());
        assert!(matches!(TokioClock::new().epoch, Epoch::Raw(_)));
        assert_eq!(std::mem::size_of::<TokioClock>(), 16);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_read_through_the_hash_is_stds_to_the_nanosecond() {
        let clock = TokioClock::new();
        let Epoch::Raw(_) = clock.epoch else {
            unreachable!()
        };
        let epoch = tokio::time::Instant::now();
        let std = TokioClock {
            epoch: Epoch::Std(epoch.into_std()),
        };
        let offset = clock.at(epoch);
        for ns in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            86_400_000_000_123,
        ] {
            let later = epoch + Duration::from_nanos(ns);
            assert_eq!(std.at(later), ns);
            assert_eq!(clock.at(later) - offset, ns, "{ns} ns on");
        }
        // Before the epoch, even before the monotonic clock's zero: 0 either way.
        let before = epoch - Duration::from_nanos(1);
        assert_eq!(std.at(before), 0);
        let made = TokioClock::new();
        assert_eq!(made.at(before), 0);
        if let Some(long_ago) = epoch.checked_sub(Duration::from_secs(1 << 40)) {
            assert_eq!(made.at(long_ago), 0);
            assert_eq!(std.at(long_ago), 0);
        }
    }

    #[test]
    #[cfg(any(feature = "cache", all(feature = "redis", feature = "metrics")))]
    fn nanos_between_is_stds_saturating_subtraction() {
        let base = std::time::Instant::now();
        let std_ns = |a: std::time::Instant, b: std::time::Instant| {
            duration_to_nanos(b.saturating_duration_since(a))
        };
        for ns in [
            0,
            1,
            999_999_999,
            1_000_000_000,
            1_000_000_001,
            1_999_999_999,
            86_400_000_000_123,
        ] {
            let later = base + Duration::from_nanos(ns);
            assert_eq!(nanos_between(base, later), ns, "{ns} ns on");
            assert_eq!(nanos_between(base, later), std_ns(base, later));
            // The other way round saturates at 0, as `std`'s does.
            assert_eq!(nanos_between(later, base), 0, "{ns} ns back");
        }
        // Instants before the monotonic clock's zero (read as 0 by the clock) still subtract
        // exactly: they take `std`'s arithmetic.
        if let Some(long_ago) = base.checked_sub(Duration::from_secs(1 << 40)) {
            let later = long_ago + Duration::from_nanos(1_500_000_001);
            assert_eq!(nanos_between(long_ago, later), 1_500_000_001);
            assert_eq!(nanos_between(long_ago, base), std_ns(long_ago, base));
        }
    }

    #[tokio::test(start_paused = true)]
    #[cfg(any(feature = "cache", all(feature = "redis", feature = "metrics")))]
    async fn nanos_between_follows_paused_time() {
        let start = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_nanos(2_000_000_003)).await;
        let end = tokio::time::Instant::now();
        assert_eq!(
            nanos_between(start.into_std(), end.into_std()),
            2_000_000_003
        );
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_clock_exactly() {
        let clock = TokioClock::new();
        let before = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now() - before, 1_500_000_000);
        tokio::time::advance(Duration::from_nanos(7)).await;
        assert_eq!(clock.now() - before, 1_500_000_007);
    }
}
