//! Circuit breaking: stop calling an upstream that keeps failing, refuse fast while it recovers,
//! and probe it before letting traffic back.
//!
//! - **Closed**: calls go through and their outcomes fill a window of the last `window` calls. The
//!   circuit opens when the failure rate over the window reaches the threshold (once the window
//!   holds `minimum_calls`), or after `consecutive_failures` failures in a row.
//! - **Open**: calls are refused at once with [`CircuitOpen`](error::CircuitOpen) for the wait
//!   duration (fixed, or growing exponentially up to a cap with each reopening).
//! - **Half-open**: exactly `half_open_probes` calls go through, however many callers race for them;
//!   the others are refused at once. If the probes' failure rate reaches the threshold (any failure,
//!   when only consecutive failures are configured) the circuit reopens; when all have succeeded
//!   otherwise, it closes with an empty window.
//! - **Forced open** and **disabled**, set through a [`CircuitHandle`].
//!
//! The window is the last `window` calls (default) or, with
//! [`time_window`](CircuitBreakerBuilder::time_window), the calls of the last span of time, in
//! buckets. [`slow_calls`](CircuitBreakerBuilder::slow_calls) adds a slow-call rate. A circuit can
//! also be kept [per key](key), for example one per upstream host, in a bounded map.
//!
//! A [classifier](crate::classify), the same retry uses, decides what a failure is: by default an
//! inner error; with `.http()` also a 5xx response, with `.grpc()` a failing `grpc-status`. The
//! circuit counts [failure](crate::classify::Verdict::Failure) and
//! [transient](crate::classify::Verdict::Transient) verdicts as failures, the others as successes. A call whose future is dropped before
//! it completes (a cancelled call) counts as nothing; a cancelled half-open probe gives its permit
//! back, so the circuit cannot stay half-open waiting for it.
//!
//! Every clone of a layer and every service it makes share one circuit. The closed-state path takes
//! no lock: one atomic load to admit the call, lock-free updates of the window to record it. Once
//! the count window is full, the successes of a healthy upstream are counted per thread and written
//! to the window in batches, always before the next failure is, so the window still holds exactly
//! the last `window` calls whenever a decision is made, and threads sharing a circuit do not
//! contend on it.
//!
//! # Shared circuit state
//!
//! Opt-in, with the `redis` feature: `.backend(redis)` makes every replica that builds a layer of
//! the same [name](CircuitBreakerBuilder::name) on the same Redis (and key prefix) share one
//! circuit (with [per-key circuits](key), one per key): they open, probe and close it together.
//!
//! **Name your breakers.** In memory every layer has its own circuit; in Redis a circuit is
//! identified by the backend's prefix and the breaker's name (`<prefix>:cb:{<name>/<key>}`), so
//! that the replicas of one application share it. Two breakers of one application on one backend
//! (say, one before the payments API and one before the search API) left with the default name,
//! `"default"`, share *one* circuit: one upstream's failures open the other's. Give each its name,
//! `.name("payments")`, `.name("search")` (building a shared circuit named `"default"` logs a
//! warning).
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_rampart::backend::RedisBackend;
//! use tower_rampart::circuit_breaker::CircuitBreakerLayer;
//!
//! # async fn run() -> Result<(), tower_rampart::BoxError> {
//! let redis = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("payments") // the circuit, in Redis: shared by every replica using this name
//!     .consecutive_failures(5)
//!     .wait_duration(Duration::from_secs(30))
//!     .backend(redis)
//!     .sync_interval(Duration::from_millis(250)) // the default
//!     .build()?;
//! let handle = breaker.handle(); // handle.snapshot().shared(): the shared window, followed or not
//! # let _ = handle; Ok(()) }
//! ```
//!
//! **How.** Each replica still runs the circuit in memory, so calls never wait for Redis: the
//! closed path is the in-memory one plus one per-thread counter. A task of the layer's own (no
//! task to start: it starts with the first call, or with `build`/`layer`, made inside a Tokio
//! runtime, and ends when the layer and its services are dropped; without a runtime the circuit
//! is simply local) syncs every [`sync_interval`](CircuitBreakerBuilder::sync_interval): for each
//! circuit, one Redis script call that reports the outcomes counted since the last sync and answers
//! the shared state, which the replica then applies. Transitions are made by the script, on Redis
//! `TIME`: trip conditions over the shared window, the end of the wait, the probes' outcome,
//! handle commands. While it follows the shared state a replica never opens or closes on its own;
//! a failure or slow call has it sync early (at most one early sync per quarter interval), so the
//! script decides promptly. Every replica that applies a transition fires its hooks, `tracing`
//! event and metrics, with the reason text the script recorded.
//!
//! **How quickly a trip propagates.** With a sync interval *I* and a Redis round trip *R*:
//! the replica whose failure completes a trip condition reports it within *I*/4 + *R* and refuses
//! from then on; every other replica refuses from its next sync, within *I* + *R* of that. From
//! the failing call to refusals everywhere: at most 1.25 *I* + 2 *R* (plus scheduling delays), so
//! about 320 ms with the default 250 ms on a LAN. Handle commands travel the same way.
//!
//! **What the shared window is.**
//! - A count window of *N* calls holds the last *N* outcomes *reported* by all the replicas, batch
//!   by batch in the order the batches reach Redis (each replica's outcomes at most one interval
//!   after they happened); the oldest batch, when only partly inside, counts pro rata.
//! - A time window holds the outcomes reported in its last span, in buckets on Redis time; a batch
//!   counts in the bucket of its arrival. Its span must be at least two sync intervals (checked by
//!   `build`).
//! - Rates and the minimum number of calls apply to the shared window. Consecutive failures: a
//!   batch with a success sets the shared run to the failures that followed the replica's last
//!   success; a batch of failures only adds to the run, which is never shorter than the reporting
//!   replica's own run. So the shared circuit opens no later than any replica's own circuit would
//!   on consecutive failures, and failures on several replicas add up while no success comes in
//!   between.
//!
//! **Half-open.** Exactly `half_open_probes` probes in total, across all replicas. When the wait is
//! over (a replica syncs at that moment), a replica that has callers (it refused some since its
//! last sync) asks the script for permits; the script never grants more than are left. The
//! replica's callers use them, the others are refused at once; a replica keeps a permit until
//! one of its callers uses it, unless another replica waits for one and it had no caller since
//! its last sync: then it gives its unused permits back. Probe outcomes are reported at once, the
//! script closes or reopens the circuit, and every replica follows (a probe that hangs holds its
//! permit as long: see [`half_open_probes`](CircuitBreakerBuilder::half_open_probes)). Permits
//! of a replica that stops syncing (crashed, cut off from Redis) go back after four sync
//! intervals plus the backend's timeout.
//!
//! A replica that had no callers during the wait learns of the half-open state at a sync that
//! asked for no permits. Its first caller (and any arriving with it) is not refused for that: the
//! replica asks the script for permits at once (without the quarter-interval gap of early syncs)
//! and the caller waits for the answer, at most the backend's timeout and never longer than one
//! sync interval (50 ms with the defaults), holding its request and the readied inner service
//! (which is why the service needs `S: Clone`). Granted a permit, it is the probe; otherwise (the
//! probes are all held elsewhere, or the bound passed) it is refused as before. Only the callers of
//! a half-open period in which the script has not yet answered this replica's request for
//! permits wait; once it has, refusals are immediate again. Permits still come only from the
//! script, so half-open admits exactly `half_open_probes` probes across the replicas; a closed
//! circuit's calls never wait, and an open one's refuse at once until its wait is over.
//!
//! **When Redis is unreachable** (a sync fails or times out; calls are not affected), the replica
//! falls back to its local circuit, starting from the state it followed: its own window, its own
//! trips, its own probes, as a circuit that is not shared (it never holds permits of the shared
//! circuit then). Fallbacks are logged (at most once per 10 s per layer, with the number held
//! back) and counted (`rampart_circuit_shared_fallback_total{name}`,
//! `rampart_redis_errors_total{kind}`). When a
//! sync succeeds again the replica rejoins and follows the shared state; the outcomes it counted
//! meanwhile stay in its local window (they are not reported late), but if it *opened* its circuit
//! meanwhile and the wait is not over, it reports that opening: the shared circuit opens for the
//! rest of that wait, with the same reason. A replica that finds Redis has lost the circuit
//! (restarted without persistence, flushed, expired) while it was open does the same.
//!
//! **A circuit's hash that the script cannot read** (another type of value, or fields it could not
//! have written: a number that is not a whole one from 0 to 2^53, such as `nan` or `1e300`, a count
//! window longer than its size) was written by something else. The script answers it with a data
//! error ([`BackendError::is_corrupt_data`](crate::backend::BackendError::is_corrupt_data)) before
//! writing anything, and the replicas fall back to their local circuits as above (the log names the
//! key) until the hash expires or is deleted (`redis-cli DEL <key>`), when they share a fresh
//! circuit.
//!
//! **Handles.** [`CircuitHandle::state`] and [`snapshot`](CircuitHandle::snapshot) show this
//! replica's view, [`CircuitSnapshot::shared`] the shared window as of the last sync and whether
//! the replica follows it; [`force_open`](CircuitHandle::force_open),
//! [`reset`](CircuitHandle::reset) and the others act on the shared state.
//!
//! **In Redis**, each circuit is one hash, `<prefix>:cb:{<name>/<key>}` (`{<name>/global}` for a layer's
//! one circuit; braces make a Redis Cluster hash tag), expiring 10 minutes (or twice the longest
//! wait or window) after the last sync of any replica; a forced-open or disabled circuit's is kept
//! until changed. Replicas sharing a circuit must share its configuration: a different window
//! configuration starts the shared window afresh. Each replica makes one script call per circuit
//! per sync interval, plus the early ones on failures.
//!
//! # Costs
//!
//! Measured by `cargo bench --bench rampart --all-features -- circuit_breaker/` against a bare
//! service in the same run (BENCHMARKS.md has the table): a call through a closed circuit adds about
//! 30 ns; slow-call detection or a time window add one or two reads of tokio's clock (about 25 ns
//! each on a small VM); a refusal while open costs a clock read plus, in the default error mode,
//! boxing the error.
//!
//! # Example: five failures in a row open the circuit for 30 seconds
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState, error::CircuitOpen};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! tokio::time::pause();
//! let layer = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .consecutive_failures(5)
//!     .wait_duration(Duration::from_secs(30))
//!     .build()
//!     .unwrap();
//! let handle = layer.handle();
//! let mut svc = layer.layer(service_fn(|fail: bool| async move {
//!     if fail { Err::<&str, BoxError>("upstream down".into()) } else { Ok("ok") }
//! }));
//!
//! for _ in 0..5 {
//!     assert!(svc.ready().await.unwrap().call(true).await.is_err());
//! }
//! assert_eq!(handle.state(), CircuitState::Open);
//! let err = svc.ready().await.unwrap().call(false).await.unwrap_err();
//! let open = err.downcast_ref::<CircuitOpen>().expect("refused by the open circuit");
//! assert_eq!(open.retry_after(), Some(Duration::from_secs(30)));
//!
//! tokio::time::advance(Duration::from_secs(30)).await;
//! assert_eq!(svc.ready().await.unwrap().call(false).await.unwrap(), "ok"); // the probe
//! assert_eq!(handle.state(), CircuitState::Closed);
//! # }
//! ```

mod build;
mod builder;
#[cfg(feature = "serde")]
mod config;
pub mod error;
pub mod fallback;
pub mod future;
mod handle;
pub mod key;
mod keyed;
mod layer;
mod service;
#[cfg(feature = "redis")]
mod shared;
mod snapshot;
mod state;
pub mod store;
mod transition;
mod window;

pub use self::builder::CircuitBreakerBuilder;
#[cfg(feature = "serde")]
pub use self::config::{CircuitBreakerConfig, SlowCallsConfig, WaitConfig, WindowConfig};
pub use self::handle::CircuitHandle;
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;
pub use self::snapshot::{CircuitSnapshot, SharedSnapshot};
pub use self::transition::{CircuitEvent, CircuitState, Transition, TransitionReason};
