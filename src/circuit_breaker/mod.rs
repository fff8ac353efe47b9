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
//! A [classifier](classify) decides what a failure is: by default an inner error; with `.http()`
//! also a 5xx response, with `.grpc()` a failing `grpc-status`. A call whose future is dropped before
//! it completes (a cancelled call) counts as nothing; a cancelled half-open probe gives its permit
//! back, so the circuit cannot stay half-open waiting for it.
//!
//! Every clone of a layer and every service it makes share one circuit. The closed-state path takes
//! no lock: one atomic load to admit the call, lock-free updates of the window to record it.
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

pub mod classify;
pub mod error;
pub mod fallback;
pub mod future;
mod handle;
mod layer;
mod service;
mod state;
mod window;

pub use self::classify::Outcome;
pub use self::handle::{CircuitHandle, CircuitSnapshot, CircuitState, Transition};
pub use self::layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use self::service::CircuitBreaker;
