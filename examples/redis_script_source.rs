//! Prints a Redis rate-limit script exactly as the crate sends it (`EVALSHA`/`EVAL` body), for
//! `benches/redis_script_cost.sh`, which loads it into a `redis-server` of its own and measures its
//! cost per call with `redis-benchmark` and `INFO commandstats`.
//!
//! ```sh
//! cargo run --all-features --example redis_script_source -- gcra > /tmp/gcra.lua
//! cargo run --all-features --example redis_script_source -- sliding-window > /tmp/window.lua
//! cargo run --all-features --example redis_script_source -- gcra batch > /tmp/gcra-batch.lua
//! ```

#[cfg(feature = "redis")]
fn main() {
    use tower_rampart::backend::redis::{batch_script_source, script_source};
    use tower_rampart::rate_limit::Algorithm;

    let algorithm = match std::env::args().nth(1).as_deref() {
        None | Some("gcra") => Algorithm::Gcra,
        Some("sliding-window") => Algorithm::SlidingWindow,
        Some(other) => {
            eprintln!("unknown algorithm {other:?}: gcra or sliding-window");
            std::process::exit(2);
        }
    };
    match std::env::args().nth(2).as_deref() {
        None => print!("{}", script_source(algorithm)),
        // Several decisions in one call, as the store sends decisions made at once.
        Some("batch") => print!("{}", batch_script_source(algorithm)),
        Some(other) => {
            eprintln!("unknown form {other:?}: batch, or nothing for the single script");
            std::process::exit(2);
        }
    }
}

#[cfg(not(feature = "redis"))]
fn main() {
    eprintln!("build with --features redis (or --all-features)");
    std::process::exit(2);
}
