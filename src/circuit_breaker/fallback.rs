//! What the caller gets while the circuit refuses: a refusal (the default), or a response made by
//! a fallback function.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::circuit_breaker::CircuitBreakerLayer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let layer = CircuitBreakerLayer::builder()
//!     .consecutive_failures(1)
//!     .fallback(|_open| r#"{"fallback":true,"reason":"external service failure"}"#.to_owned())
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(service_fn(|_: ()| async { Err::<String, BoxError>("down".into()) }));
//! assert!(svc.ready().await.unwrap().call(()).await.is_err()); // the failure itself
//! let answer = svc.ready().await.unwrap().call(()).await.unwrap(); // open: the fallback
//! assert_eq!(answer, r#"{"fallback":true,"reason":"external service failure"}"#);
//! # }
//! ```

use std::fmt;

use super::error::CircuitOpen;
use crate::rejection::RejectionMode;

/// Decides what a refused call returns.
pub trait Fallback<Res>: Clone + Send + Sync + 'static {
    /// The answer to a call refused with `open`, in mode `mode`.
    fn refused<E, M: RejectionMode<Res, E>>(
        &self,
        open: CircuitOpen,
        mode: &M,
    ) -> Result<Res, M::Error>;
}

/// The default: refusals go through the layer's [rejection mode](crate::rejection).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFallback;

impl<Res> Fallback<Res> for NoFallback {
    #[inline]
    fn refused<E, M: RejectionMode<Res, E>>(
        &self,
        open: CircuitOpen,
        mode: &M,
    ) -> Result<Res, M::Error> {
        mode.reject(open)
    }
}

/// A fallback function; made by [`CircuitBreakerBuilder::fallback`](super::CircuitBreakerBuilder::fallback).
#[derive(Clone)]
pub struct FallbackFn<F> {
    pub(crate) f: F,
}

impl<F> fmt::Debug for FallbackFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackFn").finish_non_exhaustive()
    }
}

impl<F, Res> Fallback<Res> for FallbackFn<F>
where
    F: Fn(&CircuitOpen) -> Res + Clone + Send + Sync + 'static,
{
    #[inline]
    fn refused<E, M: RejectionMode<Res, E>>(
        &self,
        open: CircuitOpen,
        _: &M,
    ) -> Result<Res, M::Error> {
        Ok((self.f)(&open))
    }
}
