//! Tests of `examples/grpc_analytics`: the generated code against the `.proto`, and every RPC over
//! real loopback gRPC.

#[path = "../common/mod.rs"]
mod common;
#[path = "../../examples/analytics_api/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../examples/common/deadline.rs"]
#[allow(dead_code)]
mod deadline;
#[path = "../../examples/analytics_api/dependency.rs"]
#[allow(dead_code)]
mod dependency;
#[path = "../../examples/grpc_analytics/retrying.rs"]
#[allow(dead_code)]
mod retrying;
#[path = "../../examples/grpc_analytics/server.rs"]
#[allow(dead_code)]
mod server;

#[path = "../../examples/common/setup.rs"]
#[allow(dead_code)]
mod setup;
#[path = "../../examples/analytics_api/storage/mod.rs"]
#[allow(dead_code)]
mod storage;
#[path = "../../examples/analytics_api/timestamp.rs"]
#[allow(dead_code)]
mod timestamp;

/// The code generated from `analytics.proto`, as the example includes it.
#[allow(
    missing_docs,
    unreachable_pub,
    dead_code,
    clippy::all,
    clippy::pedantic
)]
mod pb {
    include!("../../examples/grpc_analytics/generated/rampart.analytics.v1.rs");

    pub const DESCRIPTOR: &[u8] =
        include_bytes!("../../examples/grpc_analytics/generated/analytics_descriptor.bin");
}

mod codegen;
mod rpc;
