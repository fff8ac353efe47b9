//! Prints a Redis rate-limit script exactly as the crate sends it (`EVALSHA`/`EVAL` body), for
//! `benches/redis_script_cost.sh`, which loads it into a `redis-server` of its own and measures its
//! cost per call with `redis-benchmark` and `INFO commandstats`.
//!
//! ```sh
//! cargo run --all-features --example redis_script_source -- gcra > /tmp/gcra.lua
//! cargo run --all-features --example redis_script_source -- sliding-window > /tmp/window.lua
//! ```

#[cfg(feature = "redis")]
fn main() {
    use tower_rampart::backend::redis::script_source;
    use tower_rampart::rate_limit::Algorithm;

    let algorithm = match std::env::args().nth(1).as_deref() {
        None | Some("gcra") => Algorithm::Gcra,
        Some("sliding-window") => Algorithm::SlidingWindow,
        Some(other) => {
            eprintln!("unknown algorithm {other:?}: gcra or sliding-window");
            std::process::exit(2);
        }
    };
    print!("{}", script_source(algorithm));
}

#[cfg(not(feature = "redis"))]
fn main() {
    eprintln!("build with --features redis (or --all-features)");
    std::process::exit(2);
}
