//! Call deadlines: each call's own tokio timer (`timeout_at`), on the runtime that polls the call.
//!
//! A deadline watcher shared by a connection's calls (one task, a slot per waiting call) measured
//! about 540 instructions less per call (`instructions` bench, `redis*` rows), 2-3% of a Redis
//! call. It was not kept: the watcher runs on the runtime of the connection's first call, so a
//! call on another runtime is answered late or never when that runtime stops polling it (shut down
//! while the call waits, or a `current_thread` runtime kept but no longer driven), and a call that
//! is never answered on a silent Redis is the outage the timeout exists to prevent. A per-call
//! timer is answered by the runtime that waits for it, whatever the others do.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Timeout};

/// A call that had not answered by its deadline.
#[derive(Debug)]
pub(super) struct Late;

pin_project! {
    /// `call` bounded by a deadline: [`until`]'s future.
    pub(super) struct Until<F> {
        #[pin]
        call: Timeout<F>,
    }
}

/// Runs `call` until `deadline`: `Err(Late)` when it has not answered by then.
///
/// A plain function returning a named future, not an `async fn`: an `async fn` keeps its
/// argument (the call's future, 1,312 bytes for a `ConnectionManager` command) in its state
/// beside the `Timeout` made of it, so that every caller's future held the call twice and moved
/// both (a Redis cache hit's store future was 2,960 bytes; see `Conn::query_timed`).
pub(super) fn until<F: Future>(deadline: Instant, call: F) -> Until<F> {
    Until {
        call: tokio::time::timeout_at(deadline, call),
    }
}

impl<F: Future> Future for Until<F> {
    type Output = Result<F::Output, Late>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().call.poll(cx).map(|r| r.map_err(|_| Late))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_call_answered_by_its_deadline_is_its_answer_and_one_after_it_is_late() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        // Answered before the deadline.
        let early = until(deadline, async {
            tokio::time::sleep(Duration::from_millis(40)).await;
            7
        });
        assert_eq!(early.await.ok(), Some(7));
        // Answered at the deadline itself: the call is polled before the timer, so it counts.
        let at = until(deadline, tokio::time::sleep_until(deadline));
        assert!(at.await.is_ok());
        assert_eq!(Instant::now(), deadline);
        // Not answered by it: late, at the deadline and not later.
        let late = until(
            start + Duration::from_millis(200),
            std::future::pending::<()>(),
        );
        assert!(matches!(late.await, Err(Late)));
        assert_eq!(Instant::now(), start + Duration::from_millis(200));
        // A deadline already past: a call that answers at once still answers.
        let ready = until(start, std::future::ready(1));
        assert_eq!(ready.await.ok(), Some(1));
    }
}
