//! The layer: its circuits (one, or one per key) shared by every clone and service, and its handle.

use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use super::fallback::NoFallback;
use super::handle::CircuitHandle;
use super::keyed::CircuitMap;
use super::service::CircuitBreaker;
use super::state::Breaker;
use crate::classify::ErrorsAreFailures;
use crate::key::{GlobalKey, KeyExtractor};
use crate::rejection::AsError;

/// Stops calling an upstream that keeps failing, and probes it until it recovers.
///
/// The layer holds its circuit (or, [per key](super::key), its circuits) in an `Arc`: every clone
/// of the layer and every service it makes share it, and [`handle`](Self::handle) reads and
/// steers it. Build it with
/// [`CircuitBreakerLayer::builder`]. See the [module documentation](super).
pub struct CircuitBreakerLayer<C = ErrorsAreFailures, M = AsError, F = NoFallback, X = GlobalKey>
where
    X: KeyExtractor,
{
    pub(crate) shared: Arc<Shared<C, M, F, X>>,
}

pub(crate) struct Shared<C, M, F, X: KeyExtractor> {
    pub(crate) circuits: Circuits<X::Key>,
    pub(crate) key: X,
    pub(crate) classifier: C,
    pub(crate) mode: M,
    pub(crate) fallback: F,
    /// For circuits shared through a store: the sync task's state, kept alive by the layer.
    #[cfg(feature = "redis")]
    pub(crate) sync: Option<SyncGuard>,
}

/// Keeps a shared layer's sync task's state alive, and starts the task.
#[cfg(feature = "redis")]
pub(crate) struct SyncGuard {
    pub(super) _driver: Arc<dyn std::any::Any + Send + Sync>,
    pub(super) signal: Arc<super::shared::Signal>,
}

/// One circuit, or one per key.
pub(crate) enum Circuits<K> {
    One(Arc<Breaker>),
    PerKey(Arc<CircuitMap<K>>),
}

impl<K> fmt::Debug for Circuits<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::One(b) => b.fmt(f),
            Self::PerKey(map) => map.fmt(f),
        }
    }
}

impl<C, M, F, X: KeyExtractor> Clone for CircuitBreakerLayer<C, M, F, X> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C: fmt::Debug, M: fmt::Debug, F: fmt::Debug, X: KeyExtractor + fmt::Debug> fmt::Debug
    for CircuitBreakerLayer<C, M, F, X>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("circuits", &self.shared.circuits)
            .field("key", &self.shared.key)
            .field("classifier", &self.shared.classifier)
            .field("mode", &self.shared.mode)
            .field("fallback", &self.shared.fallback)
            .finish()
    }
}

impl<S, C, M, F, X: KeyExtractor> Layer<S> for CircuitBreakerLayer<C, M, F, X> {
    type Service = CircuitBreaker<S, C, M, F, X>;

    fn layer(&self, inner: S) -> Self::Service {
        #[cfg(feature = "redis")]
        if let Some(sync) = &self.shared.sync {
            sync.signal.ensure_started();
        }
        CircuitBreaker::new(inner, Arc::clone(&self.shared))
    }
}

impl<C, M, F, X: KeyExtractor> CircuitBreakerLayer<C, M, F, X> {
    /// Whether the layer's circuits are shared by the replicas through a store
    /// ([`backend`](super::CircuitBreakerBuilder::backend)).
    pub fn is_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self.shared.sync.is_some();
        #[cfg(not(feature = "redis"))]
        false
    }

    /// For a shared layer: whether its sync task is running. It starts by itself on the first
    /// call (or `build`, `layer`, or handle command) made inside a Tokio runtime, and stops when
    /// the layer, its clones and its services are dropped.
    pub fn is_syncing(&self) -> bool {
        #[cfg(feature = "redis")]
        return self
            .shared
            .sync
            .as_ref()
            .is_some_and(|s| s.signal.is_running());
        #[cfg(not(feature = "redis"))]
        false
    }
}

impl<C, M, F, X: KeyExtractor> CircuitBreakerLayer<C, M, F, X> {
    /// A handle to the layer's circuits: state, counts, and forcing a circuit open, closed or
    /// disabled. For a layer with one circuit, a [`CircuitHandle`] of that circuit; for
    /// [per-key circuits](super::key), a `CircuitHandle<Key>` that reaches each key's circuit
    /// ([`circuit`](CircuitHandle::circuit), [`get`](CircuitHandle::get)).
    pub fn handle(&self) -> CircuitHandle<X::Key> {
        match &self.shared.circuits {
            Circuits::One(breaker) => CircuitHandle::new_one(
                self.shared
                    .key
                    .fixed_key()
                    .expect("a layer with one circuit has one key"),
                Arc::clone(breaker),
            ),
            Circuits::PerKey(map) => CircuitHandle::per_key(Arc::clone(map)),
        }
    }
}
