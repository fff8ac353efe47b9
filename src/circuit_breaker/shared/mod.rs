//! Shared circuits: each breaker's [`Link`] to the sync task, and the task itself ([`Driver`]).
//!
//! The task belongs to the layer. It is spawned, on the runtime of the caller, by the first call
//! (or the layer's `build`/`layer`, or a handle command) made inside a Tokio runtime, holds only a
//! weak reference to the layer's state between rounds, and ends when the layer, its clones and its
//! services are gone. Each round syncs the layer's circuits concurrently, one store call each
//! (a Redis script: push the batch of outcomes, pull the shared state); a circuit whose store call
//! fails falls back to its local state machine until a later round succeeds.

mod driver;
mod link;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub(crate) use self::driver::{Prepared, Reply, SyncOutcome, Tracked, driver};
pub(crate) use self::link::Link;

/// Wakes the sync task, and starts it when it is not running.
pub(crate) struct Signal {
    notify: tokio::sync::Notify,
    running: AtomicBool,
    /// A round is wanted now, without the gap between early rounds (a caller waits for it).
    now: AtomicBool,
    /// How long a caller waits for a probe permit: the store's timeout, at most one sync interval.
    probe_wait: OnceLock<Duration>,
    /// Spawns the task on the current runtime; false when there is none.
    spawn: OnceLock<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("running", &self.running.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Signal {
    pub(crate) fn new() -> Self {
        Self {
            notify: tokio::sync::Notify::new(),
            running: AtomicBool::new(false),
            now: AtomicBool::new(false),
            probe_wait: OnceLock::new(),
            spawn: OnceLock::new(),
        }
    }

    /// Starts the sync task if it is not running and this thread is inside a Tokio runtime.
    #[inline]
    pub(crate) fn ensure_started(&self) {
        if !self.running.load(Ordering::Relaxed) {
            self.start();
        }
    }

    #[cold]
    fn start(&self) {
        let Some(spawn) = self.spawn.get() else {
            return;
        };
        if self
            .running
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && !spawn()
        {
            self.running.store(false, Ordering::Release);
        }
    }

    /// Asks the task for a round now (it keeps a minimum gap between rounds).
    pub(crate) fn wake(&self) {
        self.notify.notify_one();
    }

    /// Asks the task for a round at once: a caller waits for its answer.
    fn wake_now(&self) {
        self.now.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Whether a round was asked for at once (clears the request).
    fn take_now(&self) -> bool {
        self.now.swap(false, Ordering::AcqRel)
    }

    /// How long a caller may wait for a probe permit (zero before the task is set up).
    pub(crate) fn probe_wait(&self) -> Duration {
        self.probe_wait.get().copied().unwrap_or(Duration::ZERO)
    }

    /// Whether the task is running.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }
}
