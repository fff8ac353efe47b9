//! The sliding windows the failure and slow-call rates are measured over, both lock-free.
//!
//! - [`CountWindow`]: the last `size` calls. A ring of one-byte slots and three counters. Recording
//!   a call claims the next slot with one `fetch_add`, swaps the outcome in, and adjusts the counters
//!   by the difference between the new outcome and the one it pushed out, so the counters equal the
//!   ring's content once concurrent recorders are done.
//!
//!   Once the ring is full, a fast success cannot open the circuit: it can only push out an older
//!   outcome, so no rate goes up and the call count stays at `size`. Such successes are first
//!   counted in a per-thread stripe (a counter on a cache line of its own) and written to the ring
//!   `batch` at a time, or before the next call that can open the circuit (a failure or a slow
//!   call), which writes every stripe's pending successes to the ring before itself. So the counts a
//!   trip decision reads are those of the last `size` calls, as with no stripes at all, while the
//!   calls of a healthy upstream touch no memory that another thread writes on every call: two
//!   threads on one circuit do not contend.
//! - [`TimeWindow`]: the calls of the last `span`, in `buckets` buckets. Each bucket counts the
//!   calls of one slice of time and is recycled when time comes round to it again; the window's
//!   counts are the sum of the buckets still inside the span. The sum of the buckets before the
//!   current one cannot change during the current slice, so it is computed once per slice and
//!   cached (behind a sequence lock): a call reads that sum and the current bucket, whatever the
//!   number of buckets.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use crossbeam_utils::CachePadded;

use crate::clock::Nanos;

const EMPTY: u8 = 0;
const FILLED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

/// The counts in a window at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
}

/// A count-based or time-based window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records one call (at `now`, for the time window). Returns the counts after it when the call
    /// may have raised a rate (the breaker then checks its thresholds), `None` when it cannot have.
    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, now: Nanos) -> Option<Counts> {
        match self {
            Self::Count(w) => w.record(failed, slow),
            Self::Time(w) => Some(w.record(failed, slow, now)),
        }
    }

    pub(crate) fn counts(&self, now: Nanos) -> Counts {
        match self {
            Self::Count(w) => w.counts(),
            Self::Time(w) => w.counts(now),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }

    /// Whether recording needs the time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Self::Time(_))
    }
}

thread_local! {
    /// The current thread's stripe number (`usize::MAX` until it first records).
    static STRIPE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The stripe of the current thread: threads are numbered in the order they first record, and
/// take stripes round-robin.
///
/// A read of the thread-local, inlined; numbering a new thread is out of line. (Through
/// `LocalKey::with` and a closure the read was a call of its own, 15 instructions per recorded
/// call in the `instructions` bench's `u64/rampart_breaker_closed` row.)
#[inline]
pub(crate) fn stripe_index() -> usize {
    let v = STRIPE.get();
    if v != usize::MAX {
        return v;
    }
    number_thread()
}

#[cold]
#[inline(never)]
fn number_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let v = NEXT.fetch_add(1, Ordering::Relaxed);
    STRIPE.set(v);
    v
}

/// How many per-thread stripes a counter gets: the number of threads the machine runs at once,
/// rounded up to a power of two, at most 16.
pub(crate) fn stripe_count() -> usize {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    threads.next_power_of_two().clamp(1, 16)
}

/// How many stripes a count window of `size` calls gets, and how many successes a stripe holds
/// before writing them to the ring. Stripes hold at most an eighth of the window between them, so
/// a stripe whose thread goes quiet never stands for much of it; small windows get none.
fn striping(size: u32) -> (usize, u32) {
    let stripes = stripe_count();
    let batch = (size / 8 / stripes as u32).min(32);
    if batch < 2 { (1, 1) } else { (stripes, batch) }
}

#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: CachePadded<AtomicU64>,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
    /// Successes counted but not yet in the ring, per stripe.
    pending: Box<[CachePadded<AtomicU32>]>,
    /// Pending successes a stripe holds before writing them; 1 means no striping.
    batch: u32,
}

/// Adds the difference `new - old` (each 0 or 1) to `counter`, returning its value after.
///
/// A slot's swap and its counters' adjustments are separate steps, so a counter can be one short
/// for a moment (a thread replaced a failure another thread has put in the ring but not yet
/// counted) and wraps below zero: the arithmetic wraps with it, and [`CountWindow::read`] reads
/// such a value as 0, never as four billion failures.
#[inline]
fn adjust(counter: &AtomicU32, old: bool, new: bool) -> u32 {
    match (old, new) {
        (false, true) => counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1),
        (true, false) => counter.fetch_sub(1, Ordering::Relaxed).wrapping_sub(1),
        _ => counter.load(Ordering::Relaxed),
    }
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        let (stripes, batch) = striping(size);
        Self::with_striping(size, stripes, batch)
    }

    fn with_striping(size: u32, stripes: usize, batch: u32) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(EMPTY)).collect(),
            head: CachePadded::new(AtomicU64::new(0)),
            calls: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            slow: AtomicU32::new(0),
            pending: (0..stripes.max(1))
                .map(|_| CachePadded::new(AtomicU32::new(0)))
                .collect(),
            batch: batch.max(1),
        }
    }

    fn size(&self) -> u32 {
        self.slots.len() as u32
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool) -> Option<Counts> {
        if !failed && !slow && self.count_striped_success() {
            return None;
        }
        self.flush();
        Some(self.push(failed, slow))
    }

    /// Counts a fast success in the current thread's stripe if the ring is full (then it cannot
    /// raise a rate); `false` if it must go to the ring instead.
    #[inline]
    pub(crate) fn count_striped_success(&self) -> bool {
        if self.batch > 1 && self.calls.load(Ordering::Relaxed) == self.size() {
            let stripe = &self.pending[stripe_index() & (self.pending.len() - 1)];
            if stripe.fetch_add(1, Ordering::Relaxed) + 1 >= self.batch {
                let n = stripe.swap(0, Ordering::Relaxed);
                self.push_successes(n);
            }
            return true;
        }
        false
    }

    /// Writes one outcome to the ring.
    #[inline]
    fn push(&self, failed: bool, slow: bool) -> Counts {
        let i = self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let new = FILLED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let old = self.slots[i as usize].swap(new, Ordering::AcqRel);
        self.read(Counts {
            calls: adjust(&self.calls, old != EMPTY, true),
            failures: adjust(&self.failures, old & FAILED != 0, failed),
            slow: adjust(&self.slow, old & SLOW != 0, slow),
        })
    }

    /// The counters as a decision may read them: a counter wrapped below zero (see [`adjust`])
    /// is 0, and none counts more outcomes than there are calls.
    #[inline]
    fn read(&self, raw: Counts) -> Counts {
        let size = self.size();
        let calls = if raw.calls > size { 0 } else { raw.calls };
        let bounded = |v: u32| if v > size { 0 } else { v.min(calls) };
        Counts {
            calls,
            failures: bounded(raw.failures),
            slow: bounded(raw.slow),
        }
    }

    /// Writes `n` fast successes to the ring.
    #[cold]
    fn push_successes(&self, n: u32) {
        if n == 0 {
            return;
        }
        let len = self.slots.len() as u64;
        let start = self.head.fetch_add(u64::from(n), Ordering::Relaxed);
        for i in 0..u64::from(n) {
            let old = self.slots[((start + i) % len) as usize].swap(FILLED, Ordering::AcqRel);
            // A success replacing a success changes no counter (the usual case: stripes are only
            // used once the ring is full), so the three counters are not even read then.
            if old != FILLED {
                adjust(&self.calls, old != EMPTY, true);
                adjust(&self.failures, old & FAILED != 0, false);
                adjust(&self.slow, old & SLOW != 0, false);
            }
        }
    }

    /// Writes every stripe's pending successes to the ring.
    fn flush(&self) {
        if self.batch > 1 {
            for stripe in self.pending.iter() {
                if stripe.load(Ordering::Relaxed) != 0 {
                    self.push_successes(stripe.swap(0, Ordering::Relaxed));
                }
            }
        }
    }

    pub(crate) fn counts(&self) -> Counts {
        self.flush();
        self.read(Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        })
    }

    /// Empties the window. Callers serialise resets with transitions; a call recorded concurrently
    /// with a reset may survive it.
    pub(crate) fn reset(&self) {
        for stripe in self.pending.iter() {
            stripe.store(0, Ordering::Relaxed);
        }
        for slot in self.slots.iter() {
            slot.store(EMPTY, Ordering::Relaxed);
        }
        self.calls.store(0, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which slice of time (`now / width`, plus one so that 0 means never used) this bucket counts.
    slice: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl Bucket {
    fn counts(&self) -> Counts {
        Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }
}

/// The sum of the buckets before the current slice's, valid for one slice, behind a sequence lock:
/// `seq` is odd while a writer updates it, and readers retry (here: recompute) when it moved.
#[derive(Debug, Default)]
struct EarlierSum {
    seq: AtomicU64,
    /// The slice the sum was made for.
    slice: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

impl EarlierSum {
    #[inline]
    fn read(&self, slice: u64) -> Option<Counts> {
        let before = self.seq.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let for_slice = self.slice.load(Ordering::Relaxed);
        let c = Counts {
            calls: self.calls.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        };
        fence(Ordering::Acquire);
        let after = self.seq.load(Ordering::Relaxed);
        (before == after && for_slice == slice).then_some(c)
    }

    /// Stores the sum for `slice`, unless another thread is storing one; returns whether it did.
    fn write(&self, slice: u64, c: Counts) -> bool {
        let seq = self.seq.load(Ordering::Relaxed);
        if seq & 1 == 1
            || self
                .seq
                .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return false; // another thread is writing it
        }
        fence(Ordering::Release);
        self.slice.store(slice, Ordering::Relaxed);
        self.calls.store(c.calls, Ordering::Relaxed);
        self.failures.store(c.failures, Ordering::Relaxed);
        self.slow.store(c.slow, Ordering::Relaxed);
        self.seq.store(seq + 2, Ordering::Release);
        true
    }

    /// Forgets the sum. Must not lose to a concurrent writer (a stale sum would outlive a reset),
    /// so it waits out one; writers never block inside.
    fn clear(&self) {
        while !self.write(0, Counts::default()) {
            std::hint::spin_loop();
        }
    }
}

#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    width: Nanos,
    earlier: CachePadded<EarlierSum>,
}

impl TimeWindow {
    /// A window of `buckets` slices of `width` nanoseconds each.
    pub(crate) fn new(width: Nanos, buckets: u32) -> Self {
        Self {
            buckets: (0..buckets.max(1)).map(|_| Bucket::default()).collect(),
            width: width.max(1),
            earlier: CachePadded::new(EarlierSum::default()),
        }
    }

    #[inline]
    pub(crate) fn record(&self, failed: bool, slow: bool, now: Nanos) -> Counts {
        let slice = now / self.width + 1;
        let bucket = &self.buckets[(slice % self.buckets.len() as u64) as usize];
        let seen = bucket.slice.load(Ordering::Acquire);
        if seen != slice
            && bucket
                .slice
                .compare_exchange(seen, slice, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This slice's first call recycles the bucket. A call racing with the recycling may be
            // lost from it: the window is a measurement, not an account.
            bucket.calls.store(0, Ordering::Relaxed);
            bucket.failures.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.counts(now)
    }

    /// The sum of the buckets whose slice is within the last `buckets` slices up to `now`.
    #[inline]
    pub(crate) fn counts(&self, now: Nanos) -> Counts {
        let current = now / self.width + 1;
        let earlier = match self.earlier.read(current) {
            Some(c) => c,
            None => self.sum_earlier(current),
        };
        let bucket = &self.buckets[(current % self.buckets.len() as u64) as usize];
        let mut c = earlier;
        if bucket.slice.load(Ordering::Acquire) == current {
            let b = bucket.counts();
            c.calls += b.calls;
            c.failures += b.failures;
            c.slow += b.slow;
        }
        c
    }

    /// Sums the buckets of the slices before `current` that are still inside the span, and caches
    /// the sum for the rest of the slice.
    #[cold]
    fn sum_earlier(&self, current: u64) -> Counts {
        let oldest = (current + 1).saturating_sub(self.buckets.len() as u64);
        let mut c = Counts::default();
        for b in self.buckets.iter() {
            let slice = b.slice.load(Ordering::Acquire);
            if slice >= oldest && slice < current {
                let n = b.counts();
                c.calls += n.calls;
                c.failures += n.failures;
                c.slow += n.slow;
            }
        }
        self.earlier.write(current, c);
        c
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.slice.store(0, Ordering::Relaxed);
            b.calls.store(0, Ordering::Relaxed);
            b.failures.store(0, Ordering::Relaxed);
            b.slow.store(0, Ordering::Relaxed);
        }
        self.earlier.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_replaced_before_it_is_counted_never_reads_as_billions() {
        // Thread A has put a failure in the only slot and not yet counted it; thread B's
        // success replaces it and takes the failure off a counter still at 0.
        let w = CountWindow::with_striping(1, 1, 1);
        w.slots[0].swap(FILLED | FAILED, Ordering::AcqRel);
        w.calls.fetch_add(1, Ordering::Relaxed);
        let c = w.record(false, false).expect("no striping");
        assert_eq!((c.calls, c.failures, c.slow), (1, 0, 0));
        assert_eq!(w.counts().failures, 0);
        // A's count lands: the counter is back to the truth (the slot holds a success).
        adjust(&w.failures, false, true);
        assert_eq!(w.counts().failures, 0);
        assert_eq!(w.failures.load(Ordering::Relaxed), 0);
    }

    fn c(calls: u32, failures: u32, slow: u32) -> Counts {
        Counts {
            calls,
            failures,
            slow,
        }
    }

    #[test]
    fn count_window_follows_the_last_n_outcomes() {
        let w = CountWindow::new(3);
        assert_eq!(w.record(true, false), Some(c(1, 1, 0)));
        assert_eq!(w.record(false, true), Some(c(2, 1, 1)));
        assert_eq!(w.record(true, true), Some(c(3, 2, 2)));
        // The first failure slides out.
        assert_eq!(w.record(false, false), Some(c(3, 1, 2)));
        assert_eq!(w.record(false, false), Some(c(3, 1, 1)));
        assert_eq!(w.record(false, false), Some(c(3, 0, 0)));
        w.reset();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn striped_successes_reach_the_ring_before_any_call_that_can_trip() {
        // 2 stripes holding up to 4 successes each, over a window of 10.
        let w = CountWindow::with_striping(10, 2, 4);
        for i in 0..10 {
            // Until the ring is full, every call is written at once.
            assert!(w.record(i % 2 == 0, false).is_some());
        }
        assert_eq!(w.counts(), c(10, 5, 0));
        // Full: fast successes wait in this thread's stripe, and say they cannot trip.
        for _ in 0..3 {
            assert_eq!(w.record(false, false), None);
        }
        // The failure writes them first: the window is the last 10 calls, 3 successes then it.
        // Pushed out: the 4 oldest (failure, success, failure, success).
        assert_eq!(w.record(true, false), Some(c(10, 4, 0)));
        // A full stripe writes itself: after 4 more successes, 4 more old outcomes are gone.
        for _ in 0..4 {
            assert_eq!(w.record(false, false), None);
        }
        assert_eq!(w.counts(), c(10, 2, 0));
        // Pending successes on the other stripe are written by a failure recorded here.
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..3 {
                    assert_eq!(w.record(false, false), None);
                }
            });
        });
        // The other thread's 3 successes, then this failure, push out the 4 oldest outcomes
        // (failure, success, success, success): the failures are the earlier one and this one.
        assert_eq!(w.record(true, false), Some(c(10, 2, 0)));
        w.reset();
        assert_eq!(w.counts(), Counts::default());
        assert!(w.pending.iter().all(|p| p.load(Ordering::Relaxed) == 0));
    }

    #[test]
    fn concurrent_recorders_leave_exact_counts() {
        let w = CountWindow::new(64);
        std::thread::scope(|s| {
            for t in 0..2 {
                let w = &w;
                s.spawn(move || {
                    for i in 0..100_000u32 {
                        w.record((i + t) % 4 == 0, (i + t) % 3 == 0);
                    }
                });
            }
        });
        let has = |bit| {
            w.slots
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) & bit != 0)
                .count() as u32
        };
        assert_eq!(w.counts(), c(64, has(FAILED), has(SLOW)));
    }

    #[test]
    fn time_window_forgets_calls_older_than_its_span() {
        // 4 buckets of 10 ns: a span of 40 ns.
        let w = TimeWindow::new(10, 4);
        assert_eq!(w.record(true, false, 5), c(1, 1, 0));
        assert_eq!(w.record(false, false, 15), c(2, 1, 0));
        assert_eq!(w.record(false, true, 39), c(3, 1, 1));
        // At 40 the slice of 0-9 has left the span.
        assert_eq!(w.counts(40), c(2, 0, 1));
        // The bucket of 0-9 is recycled for 40-49.
        assert_eq!(w.record(true, false, 41), c(3, 1, 1));
        assert_eq!(w.counts(1_000), Counts::default());
    }
}
