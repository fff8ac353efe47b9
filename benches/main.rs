//! Benchmarks of tower-rampart's layers.
//!
//! Run with `cargo bench --bench rampart --all-features` (add a filter such as
//! `-- rate_limit/global` to run one group). Each group has a `bare` row, the same inner service
//! without any layer, measured in the same run: compare the other rows with it, not with numbers
//! from another machine or another run.
//!
//! - [`clock`]: what reading the time costs (the floor under any limiter on tokio's clock).
//! - [`rate_limit`]: the rate limiter against a bare service, tower's and governor's limiters.

use std::time::Duration;

use criterion::{Criterion, criterion_main};

mod clock;
mod rate_limit;
mod support;

/// Short runs, so the suite finishes in a few minutes on a small machine.
fn config() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

/// The benchmark groups. `criterion_group!` declares an undocumented `pub fn`; inside this private
/// module it is not exported, so `missing_docs` has nothing to say about it.
mod groups {
    use criterion::criterion_group;

    use crate::{clock, config, rate_limit};

    criterion_group! {
        name = rate_limit_benches;
        config = config();
        targets = clock::clocks, rate_limit::global, rate_limit::keyed_peer_ip, rate_limit::contention
    }
}

criterion_main!(groups::rate_limit_benches);
