//! Rate-limited logging: a warning that could fire on every request fires at most once per interval,
//! and says how many it stood for.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Nanos, TokioClock};

/// Lets one event through per interval; counts the ones it holds back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    clock: TokioClock,
    interval: Nanos,
    next: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    pub(crate) fn new(interval: std::time::Duration) -> Self {
        Self {
            clock: TokioClock::new(),
            interval: crate::clock::duration_to_nanos(interval),
            next: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when this event should be logged, `n` being how many were held back since the last
    /// one; `None` when it should not.
    pub(crate) fn check(&self) -> Option<u64> {
        let now = self.clock.now();
        let next = self.next.load(Ordering::Relaxed);
        if now >= next
            && self
                .next
                .compare_exchange(
                    next,
                    now + self.interval,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn one_event_per_interval_with_the_count_of_the_rest() {
        let t = LogThrottle::new(Duration::from_secs(10));
        assert_eq!(t.check(), Some(0));
        assert_eq!(t.check(), None);
        assert_eq!(t.check(), None);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(t.check(), Some(2));
        assert_eq!(t.check(), None);
    }
}
