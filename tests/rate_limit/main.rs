//! Rate limiter integration tests: paused-time behaviour, algorithms against reference models,
//! concurrency, the Service contract, configuration errors, and real HTTP.

#[path = "../common/mod.rs"]
mod common;

mod algorithms;
mod concurrency;
mod config;
mod contract;
mod exactness;
mod grpc;
mod hooks;
mod http;
mod metrics;
mod paused_time;
mod policies;
mod policy_cases;
mod support;
