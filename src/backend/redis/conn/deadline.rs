//! Call deadlines without a timer entry per call: one watcher task per connection.
//!
//! `tokio::time::timeout` registers a timer entry when the call first waits (the timer wheel's
//! lock, an insertion) and removes it when the call ends (the lock again): about 500
//! instructions per Redis call in the `instructions` bench, for a timer that almost never fires.
//! Here a call that waits claims one of a fixed set of slots (one compare-and-swap), leaves its
//! deadline and waker there, and gives the slot back when it ends. One task per connection, the
//! watcher, sleeps until the earliest deadline it knows of; when it wakes it marks the calls
//! whose deadline has passed as late and wakes them, and sleeps again until the earliest left.
//!
//! Calls on one connection mostly share a timeout, so a new call's deadline is later than the one
//! the watcher sleeps until: it needs no telling. A call whose deadline is earlier than that (the
//! watcher idle, or a store with a shorter timeout) wakes it. The watcher goes idle when no call
//! waits, ends when the connection is dropped, and a call that finds it gone (its runtime shut
//! down) starts another. A call that finds every slot taken (more than [`SLOTS`] waiting at once)
//! falls back to a timer of its own.
//!
//! The watcher's sleep is a tokio timer: paused time advances to it, and a late call is answered
//! at its deadline as `tokio::time::timeout` answered it.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

/// How many calls of one connection can wait with a slot at once (the rest have a timer each).
pub(super) const SLOTS: usize = 256;

/// How many slots a call tries before it falls back to a timer of its own.
const PROBES: usize = 8;

/// A slot's word: 0 when free; else [`TAKEN`], maybe [`LATE`], and the deadline in nanoseconds
/// from [`Deadlines::base`] shifted left by [`SHIFT`].
const TAKEN: u64 = 1;
const LATE: u64 = 2;
const SHIFT: u32 = 2;

/// No deadline known to the watcher: it is idle (or gone).
const NONE: u64 = u64::MAX;

/// One waiting call: its deadline and its task's waker.
#[derive(Default)]
#[repr(align(64))]
struct Slot {
    word: AtomicU64,
    waker: Mutex<Option<Waker>>,
}

/// The slots of one connection and its watcher's state.
pub(super) struct Deadlines {
    /// The origin of the slots' deadlines.
    base: Instant,
    slots: Box<[Slot]>,
    /// Where the next call starts looking for a free slot.
    next: AtomicUsize,
    /// The deadline (nanoseconds from `base`) the watcher will wake at or before, or [`NONE`]: a
    /// call with an earlier one must wake it.
    armed: AtomicU64,
    /// The watcher's waker, while it runs.
    watcher: Mutex<Option<Waker>>,
    /// Whether a watcher task runs (false until the first call, and after its runtime shut down).
    running: AtomicBool,
}

impl std::fmt::Debug for Deadlines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadlines")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Deadlines {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            slots: (0..SLOTS).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            armed: AtomicU64::new(NONE),
            watcher: Mutex::new(None),
            running: AtomicBool::new(false),
        })
    }

    /// `at` in nanoseconds from `base` (0 before it), below `2^62` (146 years). Without
    /// `Duration::as_nanos`, whose 128-bit product cost 60 instructions more per call.
    #[inline]
    fn nanos(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.base);
        d.as_secs()
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::from(d.subsec_nanos()))
            .min(u64::MAX >> SHIFT)
    }

    /// Runs `call` until `deadline`: `Err(Late)` when it has not answered by then.
    pub(super) fn until<F: Future>(
        self: &Arc<Self>,
        deadline: Instant,
        call: F,
    ) -> Deadline<'_, F> {
        Deadline {
            call,
            deadlines: self,
            deadline,
            wait: Wait::Unclaimed,
        }
    }

    /// Takes a free slot for a call due at `due`: its index, or `None` when the slots tried are
    /// all taken.
    fn claim(&self, due: u64, waker: &Waker) -> Option<usize> {
        let word = (due << SHIFT) | TAKEN;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..PROBES {
            let index = (start + i) % SLOTS;
            let slot = &self.slots[index];
            if slot.word.load(Ordering::Relaxed) == 0
                && slot
                    .word
                    .compare_exchange(0, word, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                *lock(&slot.waker) = Some(waker.clone());
                if due < self.armed.load(Ordering::SeqCst) {
                    self.tell_watcher(due);
                }
                return Some(index);
            }
        }
        None
    }

    /// Whether the call in slot `index` was marked late; keeps its waker up to date otherwise.
    fn is_late(&self, index: usize, waker: &Waker) -> bool {
        let slot = &self.slots[index];
        if slot.word.load(Ordering::Acquire) & LATE != 0 {
            return true;
        }
        let mut stored = lock(&slot.waker);
        if !stored.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *stored = Some(waker.clone());
        }
        drop(stored);
        // Marked late while the waker was replaced: the watcher may have woken the old one.
        slot.word.load(Ordering::Acquire) & LATE != 0
    }

    /// Gives slot `index` back.
    fn release(&self, index: usize) {
        let slot = &self.slots[index];
        let waker = lock(&slot.waker).take();
        slot.word.store(0, Ordering::Release);
        drop(waker);
    }

    /// A call due at `due` is earlier than the watcher knows: tell it (or start one).
    #[cold]
    fn tell_watcher(self: &Deadlines, due: u64) {
        self.armed.fetch_min(due, Ordering::SeqCst);
        if let Some(waker) = lock(&self.watcher).as_ref() {
            waker.wake_by_ref();
        }
    }

    /// Starts the watcher if none runs; `false` when there is no runtime to run it on.
    fn ensure_watcher(self: &Arc<Self>) -> bool {
        if self.running.load(Ordering::Acquire) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return true;
        }
        runtime.spawn(watch(Arc::downgrade(self)));
        true
    }

    /// Marks late and wakes the calls due by `now`; the earliest deadline of those left.
    fn expire(&self, now: u64) -> Option<u64> {
        let mut earliest = None::<u64>;
        for slot in &self.slots[..] {
            let word = slot.word.load(Ordering::SeqCst);
            if word & TAKEN == 0 || word & LATE != 0 {
                continue;
            }
            let due = word >> SHIFT;
            if due <= now {
                if slot
                    .word
                    .compare_exchange(word, word | LATE, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
                    && let Some(waker) = lock(&slot.waker).as_ref()
                {
                    waker.wake_by_ref();
                }
            } else {
                earliest = Some(earliest.map_or(due, |e| e.min(due)));
            }
        }
        earliest
    }
}

impl Drop for Deadlines {
    fn drop(&mut self) {
        // An idle watcher waits for a call's word: wake it to see the connection gone.
        if let Some(waker) = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            waker.wake();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Clears `running` when the watcher ends, returns or is dropped with its runtime, so that the
/// next call starts another.
struct Running(Weak<Deadlines>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(deadlines) = self.0.upgrade() {
            *lock(&deadlines.watcher) = None;
            deadlines.running.store(false, Ordering::Release);
            // Calls that come now must find no watcher to rely on.
            deadlines.armed.store(NONE, Ordering::SeqCst);
        }
    }
}

/// The watcher of one connection's deadlines (see the module documentation).
async fn watch(deadlines: Weak<Deadlines>) {
    let _running = Running(deadlines.clone());
    let mut sleep: Pin<Box<Sleep>> = Box::pin(tokio::time::sleep(Duration::ZERO));
    let mut sleeping = false;
    std::future::poll_fn(move |cx| {
        loop {
            let Some(d) = deadlines.upgrade() else {
                return Poll::Ready(());
            };
            if sleeping && sleep.as_mut().poll(cx).is_pending() {
                let armed = d.armed.load(Ordering::SeqCst);
                // Not told of an earlier deadline meanwhile: keep sleeping.
                if armed != NONE && d.base + Duration::from_nanos(armed) >= sleep.deadline() {
                    return Poll::Pending;
                }
            }
            {
                let mut stored = lock(&d.watcher);
                if !stored.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *stored = Some(cx.waker().clone());
                }
            }
            // From here on a call with any deadline tells the watcher, until it knows the earliest.
            d.armed.store(NONE, Ordering::SeqCst);
            let now = d.nanos(Instant::now());
            let Some(earliest) = d.expire(now) else {
                sleeping = false;
                return Poll::Pending;
            };
            d.armed.fetch_min(earliest, Ordering::SeqCst);
            let armed = d.armed.load(Ordering::SeqCst);
            sleep.as_mut().reset(d.base + Duration::from_nanos(armed));
            sleeping = true;
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    })
    .await;
}

/// A call's deadline that did pass.
#[derive(Debug)]
pub(super) struct Late;

enum Wait {
    /// Not waited yet.
    Unclaimed,
    /// Waiting with slot `.0`.
    Slot(usize),
    /// Waiting with a timer of its own (no slot was free, or no watcher could run).
    Timer(Pin<Box<Sleep>>),
    Done,
}

pin_project! {
    /// A call bounded by a deadline: [`Deadlines::until`].
    pub(super) struct Deadline<'a, F> {
        #[pin]
        call: F,
        deadlines: &'a Arc<Deadlines>,
        deadline: Instant,
        wait: Wait,
    }

    impl<'a, F> PinnedDrop for Deadline<'a, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Wait::Slot(index) = *this.wait {
                this.deadlines.release(index);
            }
        }
    }
}

impl<F: Future> Future for Deadline<'_, F> {
    type Output = Result<F::Output, Late>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.call.poll(cx) {
            if let Wait::Slot(index) = std::mem::replace(this.wait, Wait::Done) {
                this.deadlines.release(index);
            }
            return Poll::Ready(Ok(out));
        }
        let late = match this.wait {
            Wait::Unclaimed => {
                let d: &Deadlines = this.deadlines;
                let due = d.nanos(*this.deadline);
                match this
                    .deadlines
                    .ensure_watcher()
                    .then(|| d.claim(due, cx.waker()))
                {
                    Some(Some(index)) => {
                        *this.wait = Wait::Slot(index);
                        // The watcher may have marked it late before the waker was there.
                        d.slots[index].word.load(Ordering::Acquire) & LATE != 0
                    }
                    _ => {
                        let mut timer = Box::pin(tokio::time::sleep_until(*this.deadline));
                        let late = timer.as_mut().poll(cx).is_ready();
                        *this.wait = Wait::Timer(timer);
                        late
                    }
                }
            }
            Wait::Slot(index) => this.deadlines.is_late(*index, cx.waker()),
            Wait::Timer(timer) => timer.as_mut().poll(cx).is_ready(),
            Wait::Done => panic!("a call polled after it ended"),
        };
        if late {
            if let Wait::Slot(index) = std::mem::replace(this.wait, Wait::Done) {
                this.deadlines.release(index);
            }
            return Poll::Ready(Err(Late));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether every slot is free again.
    fn all_free(d: &Deadlines) -> bool {
        d.slots.iter().all(|s| s.word.load(Ordering::SeqCst) == 0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_never_answers_is_late_at_its_deadline() {
        let d = Deadlines::new();
        let start = Instant::now();
        let r = d
            .until(
                start + Duration::from_millis(50),
                std::future::pending::<()>(),
            )
            .await;
        assert!(r.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert!(all_free(&d));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_answers_in_time_gives_its_slot_back() {
        let d = Deadlines::new();
        let start = Instant::now();
        let r = d
            .until(
                start + Duration::from_millis(50),
                tokio::time::sleep(Duration::from_millis(10)),
            )
            .await;
        assert!(r.is_ok());
        assert_eq!(start.elapsed(), Duration::from_millis(10));
        assert!(all_free(&d));
        // A call dropped while it waits gives its slot back too.
        let call = d.until(start + Duration::from_secs(1), std::future::pending::<()>());
        assert!(
            tokio::time::timeout(Duration::from_millis(5), call)
                .await
                .is_err()
        );
        assert!(all_free(&d));
    }

    /// The watcher sleeps until the earliest deadline it knows; a later call with an earlier
    /// deadline (a shorter timeout) wakes it, and each call is answered at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn each_call_is_late_at_its_own_deadline_whatever_the_order() {
        let d = Deadlines::new();
        let start = Instant::now();
        let ends: Vec<Duration> = futures::future::join_all([1000u64, 10, 500, 10, 40].map(|ms| {
            let d = &d;
            async move {
                let r = d
                    .until(
                        start + Duration::from_millis(ms),
                        std::future::pending::<()>(),
                    )
                    .await;
                assert!(r.is_err());
                start.elapsed()
            }
        }))
        .await;
        let ms: Vec<u64> = ends.iter().map(|e| e.as_millis() as u64).collect();
        assert_eq!(ms, [1000, 10, 500, 10, 40]);
        assert!(all_free(&d));
    }

    /// More calls waiting than there are slots: the rest get a timer each, and every one is
    /// answered at its deadline.
    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_slots_have_timers_of_their_own() {
        let d = Deadlines::new();
        let start = Instant::now();
        let due = start + Duration::from_millis(20);
        let n = SLOTS + 50;
        let late =
            futures::future::join_all((0..n).map(|_| d.until(due, std::future::pending::<()>())))
                .await;
        assert!(late.iter().all(Result::is_err));
        assert_eq!(start.elapsed(), Duration::from_millis(20));
        assert!(all_free(&d));
    }

    /// A watcher whose runtime shut down is replaced by the next call, on that call's runtime.
    #[test]
    fn a_watcher_gone_with_its_runtime_is_started_again() {
        let d = Deadlines::new();
        for _ in 0..2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let start = Instant::now();
                let r = d
                    .until(
                        start + Duration::from_millis(30),
                        std::future::pending::<()>(),
                    )
                    .await;
                assert!(r.is_err());
                assert_eq!(start.elapsed(), Duration::from_millis(30));
            });
            drop(rt);
            assert!(
                !d.running.load(Ordering::SeqCst),
                "the watcher ended with its runtime"
            );
        }
    }

    /// A real-time check: late calls are answered close to their deadlines on a multi-threaded
    /// runtime, and calls that answer leave no slot taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn late_calls_are_answered_on_time_in_real_time() {
        let d = Deadlines::new();
        let start = Instant::now();
        let quick = d
            .until(
                start + Duration::from_secs(5),
                tokio::time::sleep(Duration::from_millis(5)),
            )
            .await;
        assert!(quick.is_ok());
        let start = Instant::now();
        let r = d
            .until(
                start + Duration::from_millis(40),
                std::future::pending::<()>(),
            )
            .await;
        assert!(r.is_err());
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(40), "{took:?}");
        assert!(took < Duration::from_millis(500), "{took:?}");
        assert!(all_free(&d));
    }
}
