//! The Redis backend against real `redis-server`s (a single node and a 3-master cluster started by
//! the tests on free loopback ports): one conformance suite shared with the in-memory store,
//! exactness across replicas, faults (kill, restart, stall), calls abandoned on their timeout that
//! must not count, data it cannot read (repaired or reported), health and its gauge, local memory
//! of over-limit keys, and real HTTP with two app replicas.
//!
//! Without `redis-server` these tests skip with a printed reason, unless `RAMPART_REQUIRE_REDIS=1`
//! or `CI` is set. Redis I/O runs on real time; every loop is bounded in count and time, and the
//! few time bounds asserted are the issue's own, plus an allowance for the scheduling lag measured
//! in the same run (`support::LagProbe`), or follow from the elapsed time measured.

#[path = "../common/mod.rs"]
mod common;

mod backend_choice;
mod batched;
mod conformance;
mod connect;
mod corrupt;
mod exactness;
mod faults;
mod fenced;
mod health;
mod http;
mod leases;
mod liveness;
#[cfg(feature = "metrics")]
mod observe;
mod over_limit;
mod packed;
mod policies;
#[path = "../rate_limit/policy_cases.rs"]
mod policy_cases;
mod script;
mod slots;
mod support;
mod timeouts;
#[cfg(feature = "redis-tls")]
mod tls;
mod traits;
