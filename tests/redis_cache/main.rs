//! The cache layer on Redis against real `redis-server`s (a single node and a 3-master cluster,
//! started by the tests on free loopback ports): four replicas on one Redis, each a layer on its
//! own `RedisBackend`. A stampede on one key, and the documented bound on upstream calls;
//! stale-while-revalidate and stale-if-error across replicas; invalidation by key, prefix and all
//! seen by every replica (and fencing fills that were running); bytes that are not an entry;
//! Redis killed and restarted; an axum app served by two replicas over real HTTP.
//!
//! Without `redis-server` these tests skip with a printed reason, unless `RAMPART_REQUIRE_REDIS=1`
//! or `CI` is set. Redis I/O runs on real time; entry ages are moved with a shared `ManualClock`
//! given to the backends (`RedisBackend::clock`), every loop is bounded in count and time, and
//! no test asserts how long something took.

#[path = "../common/mod.rs"]
mod common;

mod backend_choice;
mod bound;
mod corrupt;
mod faults;
mod first_miss;
mod http;
mod invalidation;
mod liveness;
mod stale;
mod stampede;
mod support;
mod traits;
