//! Shared circuit state in Redis ([#8]): replicas built on their own `RedisBackend`s over one
//! `redis-server` (and a 3-master cluster), started by the tests on free loopback ports.
//!
//! - propagation: a trip seen by one replica rejects on all within the sync interval, hooks fire
//!   on every replica with the same reason; per-key circuits; single node and cluster.
//! - probes: exactly N half-open probes across replicas under concurrency; their outcome closes or
//!   reopens the circuit for all.
//! - faults: Redis killed mid-test (local circuits serve, no call waits), restarted (replicas
//!   rejoin, a local opening is carried over, a trip propagates again).
//! - traffic: the closed path makes no round trip per call (`INFO commandstats`); the sync task
//!   stops with the layer and starts without being told.
//! - handle and contract: commands act on the shared state, snapshots say whether the circuit is
//!   shared and followed, the Service contract and auto traits, configuration errors.
//! - corrupt: a hash holding numbers the script could not have written is refused before any
//!   write (Redis stays free, an unreadable or too distant end of a wait does not keep the circuit
//!   open, a time slice HINCRBY cannot add to leaves the old slices and totals as they were); a
//!   large count window closes and slides in a bounded number of commands.
//!
//! Without `redis-server` these tests skip with a printed reason, unless `RAMPART_REQUIRE_REDIS=1`
//! or `CI` is set. Redis I/O runs on real time: every wait is bounded, and the few time bounds
//! asserted are the issue's own (about one sync interval) with generous margins.
//!
//! [#8]: https://github.com/tower-rampart/tower-rampart/issues/8

#[path = "../common/mod.rs"]
mod common;

mod support;

mod backend_choice;
mod contract;
mod corrupt;
mod faults;
mod handle;
mod liveness;
mod metrics;
mod probes;
mod propagation;
mod recovery;
mod traffic;
