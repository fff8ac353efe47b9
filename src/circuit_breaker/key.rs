//! Per-key circuits: one circuit per upstream host, tenant or shard, so that one failing upstream
//! does not cut off the healthy ones.
//!
//! By default a layer has one circuit (its key is [`GlobalKey`](crate::key::GlobalKey)). With
//! [`key`](super::CircuitBreakerBuilder::key) it keeps a circuit per key, made on the first
//! call with that key, all with the layer's configuration. The map is bounded
//! ([`max_circuits`](super::CircuitBreakerBuilder::max_circuits), 1,000 by default): when it is
//! full, a new key takes the place of a closed circuit that has not been used lately, and only if
//! there is none, of an open one (whose upstream then gets calls again, as a new circuit's would).
//!
//! Keys come from any extractor of [`crate::key`]: a [`key_fn`](crate::key::key_fn) closure, or,
//! for HTTP, [`UpstreamHost`](crate::key::UpstreamHost) (clients), [`PeerIp`](crate::key::PeerIp),
//! [`ClientIp`](crate::key::ClientIp) or [`HeaderKey`](crate::key::HeaderKey). Each circuit is
//! named in logs, hooks, snapshots and refusals by its key's [`KeyLabel`](crate::key::KeyLabel),
//! and in metrics labels only with
//! [`key_in_metrics`](super::CircuitBreakerBuilder::key_in_metrics) (keys a client chooses would
//! make a series each).
//!
//! A call the extractor finds no key for (a key function returning `None`, a request without the
//! header or peer address keyed on) goes straight to the inner service, through no circuit, and
//! its outcome is not recorded: there is no upstream to attribute it to. [`GlobalKey`](crate::key::GlobalKey) and
//! [`UpstreamHost`](crate::key::UpstreamHost) always give a key.
//!
//! # Example: one circuit per upstream host
//!
//! ```
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//! use tower_rampart::BoxError;
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
//! use tower_rampart::key::key_fn;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! struct Call { host: &'static str }
//!
//! let layer = CircuitBreakerLayer::builder()
//!     .consecutive_failures(2)
//!     .key(key_fn(|call: &Call| Some(call.host)))
//!     .build()
//!     .unwrap();
//! let circuits = layer.handle();
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

use crate::key::{ExtractKey, KeyError, KeyExtractor};

/// A circuit per key taken by `X`: the key type parameter of a layer built with
/// [`key`](super::CircuitBreakerBuilder::key) (a layer with one circuit has [`GlobalKey`](crate::key::GlobalKey)).
#[derive(Clone, Copy, Debug, Default)]
pub struct PerKey<X> {
    pub(crate) extractor: X,
}

impl<X: KeyExtractor> KeyExtractor for PerKey<X> {
    type Key = X::Key;

    fn fixed_key(&self) -> Option<X::Key> {
        self.extractor.fixed_key()
    }

    fn validate(&self) -> Result<(), crate::ConfigError> {
        self.extractor.validate()
    }

    fn covers_header(&self, name: &str) -> bool {
        self.extractor.covers_header(name)
    }
}

impl<X: ExtractKey<Req>, Req> ExtractKey<Req> for PerKey<X> {
    #[inline]
    fn extract(&self, req: &Req) -> Result<X::Key, KeyError> {
        self.extractor.extract(req)
    }
}
