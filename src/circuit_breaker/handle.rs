//! Reading and steering a layer's circuits from outside: state, a metrics snapshot for a status
//! endpoint, and forcing a circuit open, closed or disabled.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use super::keyed::CircuitMap;
use super::snapshot::CircuitSnapshot;
use super::state::Breaker;
use super::transition::{CircuitState, TransitionReason};

/// Reads and steers the circuits of a [`CircuitBreakerLayer`](super::CircuitBreakerLayer). Made by
/// [`CircuitBreakerLayer::handle`](super::CircuitBreakerLayer::handle), on every layer; cheap to
/// clone; every clone and the layer's services share the circuits.
///
/// `K` is the layer's key type. A layer with one circuit (the default) gives a `CircuitHandle`
/// (`K = ()`), which reads and steers that circuit: [`state`](Self::state),
/// [`snapshot`](Self::snapshot), [`force_open`](Self::force_open), ... A layer with
/// [per-key circuits](super::key) gives a `CircuitHandle<K>`, which reaches each key's circuit,
/// again as a `CircuitHandle`, through [`circuit`](Self::circuit) or [`get`](Self::get). Every
/// handle lists its circuits ([`all`](Self::all), [`snapshots`](Self::snapshots)), so a status
/// endpoint reads either kind of layer the same way.
///
/// ```
/// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
/// use tower_rampart::key::key_fn;
///
/// // One circuit: the handle is the circuit's.
/// let layer = CircuitBreakerLayer::builder().build().unwrap();
/// let handle = layer.handle();
/// handle.force_open();
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
///
/// // A circuit per upstream host: the handle reaches each one.
/// let layer = CircuitBreakerLayer::builder()
///     .key(key_fn(|host: &&'static str| Some(*host)))
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// handle.circuit(&"db.internal").force_open();
/// assert_eq!(handle.get(&"db.internal").unwrap().state(), CircuitState::ForcedOpen);
/// assert_eq!(handle.snapshots().len(), 1);
/// ```
pub struct CircuitHandle<K = ()> {
    reach: Reach<K>,
}

enum Reach<K> {
    /// One circuit, under its key (`()` for a layer with one circuit).
    One(K, Arc<Breaker>),
    /// A layer's per-key circuits.
    PerKey(Arc<CircuitMap<K>>),
}

impl<K: Clone> Clone for CircuitHandle<K> {
    fn clone(&self) -> Self {
        Self {
            reach: match &self.reach {
                Reach::One(k, b) => Reach::One(k.clone(), Arc::clone(b)),
                Reach::PerKey(map) => Reach::PerKey(Arc::clone(map)),
            },
        }
    }
}

impl<K: Hash + Eq + Clone> fmt::Debug for CircuitHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CircuitHandle");
        d.field("name", &self.name());
        match &self.reach {
            Reach::One(_, b) => d.field("key", &b.key).field("state", &b.state()),
            Reach::PerKey(map) => d
                .field("circuits", &map.len())
                .field("capacity", &map.capacity()),
        };
        d.finish()
    }
}

impl CircuitHandle {
    pub(crate) fn one(breaker: Arc<Breaker>) -> Self {
        Self {
            reach: Reach::One((), breaker),
        }
    }

    /// The circuit (for a layer keyed by `()`, the circuit of that key, made if there is none).
    fn breaker(&self) -> Arc<Breaker> {
        match &self.reach {
            Reach::One(_, b) => Arc::clone(b),
            Reach::PerKey(map) => map.get_or_insert(&()),
        }
    }

    /// For one of a layer's per-key circuits, its key (as text).
    pub fn key(&self) -> Option<&str> {
        match &self.reach {
            Reach::One(_, b) => b.key.as_deref(),
            Reach::PerKey(_) => None,
        }
    }

    /// The current state. An open circuit whose wait is over moves to half-open here, so a status
    /// endpoint shows the change even when no traffic arrives to trigger it.
    pub fn state(&self) -> CircuitState {
        let breaker = self.breaker();
        breaker.refresh();
        breaker.state()
    }

    /// State and counts, for a status endpoint.
    pub fn snapshot(&self) -> CircuitSnapshot {
        let breaker = self.breaker();
        breaker.refresh();
        breaker.snapshot()
    }

    /// Whether the circuit is shared and this replica follows the shared state now (its last sync
    /// succeeded). A shared circuit that does not is run by this replica alone until its store
    /// answers again.
    pub fn is_following_shared(&self) -> bool {
        #[cfg(feature = "redis")]
        return self
            .breaker()
            .link
            .as_ref()
            .is_some_and(|l| l.is_following());
        #[cfg(not(feature = "redis"))]
        false
    }

    /// Refuses every call until [`force_closed`](Self::force_closed), [`reset`](Self::reset) or
    /// [`disable`](Self::disable).
    ///
    /// On a shared circuit, this and the other commands below act on the shared state: applied in
    /// this replica at once, sent to the store by the sync task right away, and followed by the
    /// other replicas at their next sync (within one sync interval plus a round trip). While the
    /// store is unreachable, the command applies to this replica and is sent when the store
    /// answers again (the latest command wins).
    pub fn force_open(&self) {
        self.breaker().force(
            CircuitState::ForcedOpen,
            false,
            TransitionReason::ForcedOpen,
        );
    }

    /// Closes the circuit now, with an empty window.
    pub fn force_closed(&self) {
        self.breaker()
            .force(CircuitState::Closed, false, TransitionReason::ForcedClosed);
    }

    /// Closes the circuit now, with an empty window, and forgets earlier openings (the exponential
    /// wait starts again from its initial duration).
    pub fn reset(&self) {
        self.breaker()
            .force(CircuitState::Closed, true, TransitionReason::Reset);
    }

    /// Lets every call through without counting, until [`force_closed`](Self::force_closed) or
    /// [`reset`](Self::reset).
    pub fn disable(&self) {
        self.breaker()
            .force(CircuitState::Disabled, false, TransitionReason::Disabled);
    }
}

impl<K: Hash + Eq + Clone> CircuitHandle<K> {
    pub(crate) fn new_one(key: K, breaker: Arc<Breaker>) -> Self {
        Self {
            reach: Reach::One(key, breaker),
        }
    }

    pub(crate) fn per_key(map: Arc<CircuitMap<K>>) -> Self {
        Self {
            reach: Reach::PerKey(map),
        }
    }

    /// The layer's name ([`name`](super::CircuitBreakerBuilder::name)).
    pub fn name(&self) -> &'static str {
        match &self.reach {
            Reach::One(_, b) => b.cfg.name,
            Reach::PerKey(map) => map.name(),
        }
    }

    /// Whether the circuits are shared by the replicas through a store
    /// ([`backend`](super::CircuitBreakerBuilder::backend)).
    pub fn is_shared(&self) -> bool {
        match &self.reach {
            #[cfg(feature = "redis")]
            Reach::One(_, b) => b.link.is_some(),
            #[cfg(not(feature = "redis"))]
            Reach::One(..) => false,
            Reach::PerKey(map) => map.is_shared(),
        }
    }

    /// The circuit of `key`, if one has been made (by a call with that key, or by
    /// [`circuit`](Self::circuit)) and not evicted since. A layer with one circuit has it under
    /// its one key, `()`.
    pub fn get(&self, key: &K) -> Option<CircuitHandle> {
        match &self.reach {
            Reach::One(k, b) => (k == key).then(|| CircuitHandle::one(Arc::clone(b))),
            Reach::PerKey(map) => map.get(key).map(CircuitHandle::one),
        }
    }

    /// The circuit of `key`, made now if there is none (for example to force it open before any
    /// call has gone to that upstream). A layer with one circuit has it under its one key, `()`.
    pub fn circuit(&self, key: &K) -> CircuitHandle {
        match &self.reach {
            Reach::One(_, b) => CircuitHandle::one(Arc::clone(b)),
            Reach::PerKey(map) => CircuitHandle::one(map.get_or_insert(key)),
        }
    }

    /// Every circuit, with its key.
    pub fn all(&self) -> Vec<(K, CircuitHandle)> {
        match &self.reach {
            Reach::One(k, b) => vec![(k.clone(), CircuitHandle::one(Arc::clone(b)))],
            Reach::PerKey(map) => map
                .all()
                .into_iter()
                .map(|(k, breaker)| (k, CircuitHandle::one(breaker)))
                .collect(),
        }
    }

    /// A snapshot of every circuit (each one's [`key`](CircuitSnapshot::key) says which), for a
    /// status endpoint.
    pub fn snapshots(&self) -> Vec<CircuitSnapshot> {
        let snapshot = |b: &Breaker| {
            b.refresh();
            b.snapshot()
        };
        match &self.reach {
            Reach::One(_, b) => vec![snapshot(b)],
            Reach::PerKey(map) => map.all().iter().map(|(_, b)| snapshot(b)).collect(),
        }
    }

    /// How many circuits there are now.
    pub fn len(&self) -> usize {
        match &self.reach {
            Reach::One(..) => 1,
            Reach::PerKey(map) => map.len(),
        }
    }

    /// Whether no circuit has been made yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most circuits kept at once.
    pub fn capacity(&self) -> usize {
        match &self.reach {
            Reach::One(..) => 1,
            Reach::PerKey(map) => map.capacity(),
        }
    }
}
