//! Where a circuit's state lives: in the replica (the default), or shared by every replica through a
//! store (feature `redis`).
//!
//! A builder's last type parameter says which: [`NotShared`] until
//! [`backend`](super::CircuitBreakerBuilder::backend) is called, then [`SharedWith`] the backend
//! given (which may still keep circuits in each replica: the memory backend, or a
//! [`Backend`](crate::backend::Backend) that is memory). A shared circuit keeps its in-memory state machine, so calls never wait for the store;
//! a background task started by the layer itself syncs it with the store on a short interval.
//! See [Shared circuit state](super#shared-circuit-state) for what that means.
//!
//! [`CircuitBackend`] and [`CircuitStore`] are the traits a store implements. They are sealed for
//! now ([`RedisBackend`](crate::backend::RedisBackend) implements them): the sync protocol may
//! still change.

#[cfg(feature = "redis")]
use std::future::Future;
use std::time::Duration;

#[cfg(feature = "redis")]
use super::state::{Config, WindowConfig};
#[cfg(feature = "redis")]
use super::transition::CircuitState;
#[cfg(feature = "redis")]
use crate::backend::BackendError;
#[cfg(feature = "redis")]
use crate::error::ConfigError;

/// The default sync interval of a shared circuit: 250 ms.
///
/// A trip reaches every replica within about one interval plus a round trip, far below the wait
/// durations circuits use (seconds); and four small script calls a second per circuit and replica
/// are nothing to Redis (100 replicas with 10 circuits each make 4,000 calls a second, a few per
/// cent of one Redis core).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(250);

/// The circuit's state is kept in each replica only (the default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NotShared;

/// The circuit's state lives where the backend `B` keeps it (see
/// [`backend`](super::CircuitBreakerBuilder::backend)).
#[derive(Clone, Debug)]
pub struct SharedWith<B> {
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) backend: B,
}

#[cfg(feature = "redis")]
pub(crate) mod sealed {
    /// Seals the store traits.
    pub trait Sealed {}
}

/// A source of [`CircuitStore`]s (sealed; implemented by
/// [`RedisBackend`](crate::backend::RedisBackend)).
#[cfg(feature = "redis")]
pub trait CircuitBackend<K>: sealed::Sealed {
    /// The store this backend builds.
    type Store: CircuitStore<K>;

    /// Builds the store of the circuits described by `spec`.
    ///
    /// # Errors
    ///
    /// When the backend's settings are invalid or it cannot serve this configuration.
    fn circuit_store(&self, spec: &CircuitSpec) -> Result<Self::Store, ConfigError>;

    /// Whether circuits are shared through this backend's store; when not (the memory backend),
    /// each replica keeps its own and [`circuit_store`](Self::circuit_store) is not called.
    fn shares(&self) -> bool {
        true
    }
}

/// The store of a backend that keeps each replica's circuits to itself (the memory backend):
/// there is none, and no value of this type.
#[cfg(feature = "redis")]
#[derive(Debug)]
pub enum NoStore {}

#[cfg(feature = "redis")]
impl sealed::Sealed for NoStore {}
#[cfg(feature = "redis")]
impl sealed::Sealed for crate::backend::MemoryBackend {}

#[cfg(feature = "redis")]
impl<K> CircuitStore<K> for NoStore {
    type Future = std::future::Pending<Result<SyncReply, BackendError>>;

    fn sync(&self, _: &K, _: &SyncRequest) -> Self::Future {
        match *self {}
    }

    fn is_available(&self) -> bool {
        match *self {}
    }

    fn is_connected(&self) -> bool {
        match *self {}
    }

    fn timeout(&self) -> Duration {
        match *self {}
    }
}

/// What `circuit_store` answers for a backend that keeps circuits in each replica (never asked
/// for: [`CircuitBackend::shares`] says so first).
#[cfg(feature = "redis")]
pub(crate) fn no_store() -> ConfigError {
    ConfigError::new(
        "backend",
        "the memory backend keeps circuits in each replica; it has no store to share them",
    )
}

/// Each replica keeps its own circuits (as with no backend at all).
#[cfg(feature = "redis")]
impl<K> CircuitBackend<K> for crate::backend::MemoryBackend {
    type Store = NoStore;

    fn circuit_store(&self, _: &CircuitSpec) -> Result<NoStore, ConfigError> {
        Err(no_store())
    }

    fn shares(&self) -> bool {
        false
    }
}

/// Keeps the shared state of circuits (sealed). One call is one sync of one replica's circuit.
#[cfg(feature = "redis")]
pub trait CircuitStore<K>: sealed::Sealed + Send + Sync + 'static {
    /// The future of a sync.
    type Future: Future<Output = Result<SyncReply, BackendError>> + Send + 'static;

    /// Reports what the replica saw since its last sync and answers the shared state, atomically.
    fn sync(&self, key: &K, request: &SyncRequest) -> Self::Future;

    /// Whether a sync should be tried now (while the store is known to be down, only now and then).
    fn is_available(&self) -> bool;

    /// Whether the last call to the store succeeded.
    fn is_connected(&self) -> bool;

    /// The most a sync waits for the store.
    fn timeout(&self) -> Duration;
}

/// What a store needs to know of the circuits it serves: name and configuration (validated).
#[cfg(feature = "redis")]
#[derive(Clone, Debug)]
pub struct CircuitSpec {
    pub(crate) cfg: Config,
    pub(crate) interval: Duration,
}

#[cfg(feature = "redis")]
impl CircuitSpec {
    /// The circuit's name.
    pub fn name(&self) -> &'static str {
        self.cfg.name
    }

    /// How often each replica syncs.
    pub fn sync_interval(&self) -> Duration {
        self.interval
    }

    /// With a count-based window, its size (`None` for a time-based window).
    pub fn window_calls(&self) -> Option<u32> {
        match self.cfg.window {
            WindowConfig::Count(n) => Some(n),
            WindowConfig::Time { .. } => None,
        }
    }

    /// With a time-based window, its span and number of buckets.
    pub fn time_window(&self) -> Option<(Duration, u32)> {
        match self.cfg.window {
            WindowConfig::Count(_) => None,
            WindowConfig::Time { span, buckets } => Some((span, buckets)),
        }
    }

    /// The probes a half-open period admits, across all replicas.
    pub fn half_open_probes(&self) -> u32 {
        self.cfg.half_open_probes
    }
}

/// A command from a [`CircuitHandle`](super::CircuitHandle), sent to the shared state.
#[cfg(feature = "redis")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    ForceOpen,
    ForceClosed,
    Reset,
    Disable,
}

#[cfg(feature = "redis")]
impl Command {
    pub(crate) fn from_force(to: CircuitState, forget_streak: bool) -> Option<Self> {
        match to {
            CircuitState::ForcedOpen => Some(Self::ForceOpen),
            CircuitState::Closed if forget_streak => Some(Self::Reset),
            CircuitState::Closed => Some(Self::ForceClosed),
            CircuitState::Disabled => Some(Self::Disable),
            CircuitState::Open | CircuitState::HalfOpen => None,
        }
    }

    /// As the shared script takes it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::ForceOpen => "open",
            Self::ForceClosed => "closed",
            Self::Reset => "reset",
            Self::Disable => "disable",
        }
    }
}

/// What one replica reports at a sync: the outcomes it counted since the last one, its half-open
/// probes, and commands from its handle.
#[cfg(feature = "redis")]
#[derive(Clone, Debug, Default)]
pub struct SyncRequest {
    pub(crate) replica: u64,
    pub(crate) lease: Duration,
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
    /// Failures in a row at the end of the batch (the replica's own count).
    pub(crate) run: u32,
    /// The shared epoch the probe figures refer to.
    pub(crate) probe_epoch: u64,
    pub(crate) probe_ok: u32,
    pub(crate) probe_bad: u32,
    /// Probe permits the replica still holds (unused or in flight).
    pub(crate) held: u32,
    /// Probe permits it asks for.
    pub(crate) want: u32,
    pub(crate) command: Option<Command>,
    /// An opening made while the store was unreachable, carried over: how long is left, and why.
    pub(crate) assert_open: Option<(Duration, u8)>,
}

#[cfg(feature = "redis")]
impl SyncRequest {
    /// Calls reported (completed since the last sync).
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Failures among them.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Probe permits asked for.
    pub fn probes_wanted(&self) -> u32 {
        self.want
    }
}

/// The shared state, as a store answers a sync.
#[cfg(feature = "redis")]
#[derive(Clone, Debug)]
pub struct SyncReply {
    /// Changes when the store lost the circuit and started it afresh.
    pub(crate) generation: u64,
    /// Incremented by every shared transition.
    pub(crate) epoch: u64,
    pub(crate) state: CircuitState,
    /// While open: how long until the wait is over.
    pub(crate) open_for: Option<Duration>,
    pub(crate) streak: u32,
    pub(crate) reason: u8,
    /// Probe permits this replica holds now.
    pub(crate) held: u32,
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
    pub(crate) run: u32,
    pub(crate) in_state_for: Duration,
    /// Half-open: another replica waits for a probe permit; unused ones should go back.
    pub(crate) contended: bool,
}

#[cfg(feature = "redis")]
impl SyncReply {
    /// The shared state.
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// The shared transition count.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Probe permits the replica holds.
    pub fn probes_held(&self) -> u32 {
        self.held
    }

    /// Calls in the shared window.
    pub fn calls(&self) -> u32 {
        self.calls
    }

    /// Failures in the shared window.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How long the circuit has been in its shared state.
    pub fn in_state_for(&self) -> Duration {
        self.in_state_for
    }
}
