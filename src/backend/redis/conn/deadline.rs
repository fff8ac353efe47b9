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

use tokio::time::Instant;

/// A call that had not answered by its deadline.
#[derive(Debug)]
pub(super) struct Late;

/// Runs `call` until `deadline`: `Err(Late)` when it has not answered by then.
pub(super) async fn until<F: Future>(deadline: Instant, call: F) -> Result<F::Output, Late> {
    tokio::time::timeout_at(deadline, call)
        .await
        .map_err(|_| Late)
}
