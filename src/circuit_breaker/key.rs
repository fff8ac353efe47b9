//! Per-key circuits: one circuit per upstream host, tenant or shard, so that one failing upstream
//! does not cut off the healthy ones.
//!
//! By default a layer has one circuit ([`OneCircuit`]). With
//! [`per_key`](super::CircuitBreakerBuilder::per_key) it keeps a circuit per key, made on the first
//! call with that key, all with the layer's configuration. The map is bounded
//! ([`max_circuits`](super::CircuitBreakerBuilder::max_circuits), 1,000 by default): when it is
//! full, a new key takes the place of a closed circuit that has not been used lately, and only if
//! there is none, of an open one (whose upstream then gets calls again, as a new circuit's would).
//!
//! Keys come from a [`key_fn`] closure or, for HTTP clients, [`UpstreamHost`].
//!
//! # Example: one circuit per upstream host
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState, key::key_fn};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! struct Call { host: &'static str }
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .consecutive_failures(2)
//!     .per_key(key_fn(|call: &Call| call.host))
//!     .build()
//!     .unwrap();
//! let circuits = layer.circuits();
//! let mut svc = layer.layer(service_fn(|call: Call| async move {
//!     if call.host == "down.example" { Err::<&str, BoxError>("refused".into()) } else { Ok("ok") }
//! }));
//!
//! for _ in 0..2 {
//!     let _ = svc.ready().await.unwrap().call(Call { host: "down.example" }).await;
//! }
//! assert_eq!(circuits.get(&"down.example").unwrap().state(), CircuitState::Open);
//! // The other upstream is not affected.
//! assert_eq!(svc.ready().await.unwrap().call(Call { host: "up.example" }).await.unwrap(), "ok");
//! assert_eq!(circuits.get(&"up.example").unwrap().state(), CircuitState::Closed);
//! # }
//! ```

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

/// The kind of key a layer's circuits are chosen by.
///
/// Implemented together with [`ExtractCircuitKey`], which does the extracting for a particular
/// request type. The two are split so the layer's circuits can be made before any request type is
/// known.
pub trait CircuitKey: Clone + Send + Sync + 'static {
    /// The key: one circuit per distinct value.
    type Key: Hash + Eq + Clone + Send + Sync + 'static;
}

/// Chooses the circuit for requests of type `Req`.
pub trait ExtractCircuitKey<Req>: CircuitKey {
    /// The key of the circuit `req` goes through.
    fn extract(&self, req: &Req) -> Self::Key;
}

/// The default: one circuit for every call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OneCircuit;

impl CircuitKey for OneCircuit {
    type Key = ();
}

impl<Req> ExtractCircuitKey<Req> for OneCircuit {
    #[inline]
    fn extract(&self, _: &Req) {}
}

/// A circuit per key taken by `X`; made by
/// [`per_key`](super::CircuitBreakerBuilder::per_key).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerKey<X> {
    pub(crate) extractor: X,
}

impl<X: CircuitKey> CircuitKey for PerKey<X> {
    type Key = X::Key;
}

impl<X: ExtractCircuitKey<Req>, Req> ExtractCircuitKey<Req> for PerKey<X> {
    #[inline]
    fn extract(&self, req: &Req) -> X::Key {
        self.extractor.extract(req)
    }
}

/// A key computed by a closure. Made by [`key_fn`].
pub struct KeyFn<F, K> {
    f: F,
    _key: PhantomData<fn() -> K>,
}

/// Keys circuits with `f`.
pub fn key_fn<Req, K, F>(f: F) -> KeyFn<F, K>
where
    F: Fn(&Req) -> K,
{
    KeyFn {
        f,
        _key: PhantomData,
    }
}

impl<F: Clone, K> Clone for KeyFn<F, K> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _key: PhantomData,
        }
    }
}

impl<F, K> fmt::Debug for KeyFn<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn")
            .field("key", &std::any::type_name::<K>())
            .finish()
    }
}

impl<F, K> CircuitKey for KeyFn<F, K>
where
    F: Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    type Key = K;
}

impl<F, K, Req> ExtractCircuitKey<Req> for KeyFn<F, K>
where
    F: Fn(&Req) -> K + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + 'static,
{
    #[inline]
    fn extract(&self, req: &Req) -> K {
        (self.f)(req)
    }
}

/// For HTTP clients: a circuit per upstream, keyed by the request URI's authority
/// (`host[:port]`, lowercased), or the `Host` header when the URI has none. Requests with neither
/// share the circuit of the empty key.
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UpstreamHost;

#[cfg(feature = "http")]
impl CircuitKey for UpstreamHost {
    type Key = Box<str>;
}

#[cfg(feature = "http")]
impl<B> ExtractCircuitKey<http::Request<B>> for UpstreamHost {
    fn extract(&self, req: &http::Request<B>) -> Box<str> {
        let authority = match req.uri().authority() {
            Some(a) => a.as_str(),
            None => req
                .headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(""),
        };
        // Userinfo (`user:pass@`) is not part of which upstream it is, and must not reach logs.
        let host = authority.rsplit('@').next().unwrap_or(authority);
        host.to_ascii_lowercase().into_boxed_str()
    }
}

#[cfg(all(test, feature = "http"))]
mod tests {
    use super::*;

    #[test]
    fn upstream_host_takes_the_authority_then_the_host_header() {
        let key = |req: http::Request<()>| UpstreamHost.extract(&req);
        let req = http::Request::get("https://User:Pw@API.Example.com:8443/x")
            .body(())
            .unwrap();
        assert_eq!(&*key(req), "api.example.com:8443");
        let req = http::Request::get("/x")
            .header("host", "Svc.Internal")
            .body(())
            .unwrap();
        assert_eq!(&*key(req), "svc.internal");
        assert_eq!(&*key(http::Request::get("/x").body(()).unwrap()), "");
    }
}
