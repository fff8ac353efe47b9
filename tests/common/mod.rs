//! Test support shared by the integration tests (`#[path = "../common/mod.rs"] mod common;`).

#![allow(dead_code, unreachable_pub)]

pub mod fault_proxy;
pub mod http;
pub mod redis;
