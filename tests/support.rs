//! placeholder until the Redis support lands
fn main() {}
