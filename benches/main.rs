//! Benchmarks of tower-rampart's layers.
//!
//! Run with `cargo bench --bench rampart --all-features` (add a filter such as
//! `-- rate_limit/global` to run one group). Each group has a `bare` row, the same inner service
//! without any layer, measured in the same run: compare the other rows with it, not with numbers
//! from another machine or another run.
//!
//! - [`clock`]: what reading the time costs (the floor under any limiter on tokio's clock).
//! - [`rate_limit`]: the rate limiter against a bare service, tower's and governor's limiters.
//! - [`circuit_breaker`]: the circuit breaker's closed and open paths, two threads on one circuit,
//!   and the closed path of a circuit shared through Redis (starts its own `redis-server`).
//! - [`redis`]: Redis-backed decisions per second against a raw `EVALSHA` of the same script
//!   (starts its own `redis-server`; skipped with a printed reason without one), and the same
//!   single-limit rows in alternating rounds (`redis_paired`), the store's rate over its peer's
//!   taken round by round.
//! - [`retry`]: the retry layer on a successful first attempt against a bare service and tower's
//!   `Retry`, and the three layers stacked.
//! - [`cache`]: cache hits and misses against a bare service, and moka's own `get`.
//! - [`redis_cache`]: cache hits served from Redis against a raw `GET` of the same bytes at
//!   several concurrencies (starts its own `redis-server`; skipped with a printed reason without
//!   one).

use std::time::Duration;

use criterion::{Criterion, criterion_main};

mod cache;
mod circuit_breaker;
mod clock;
mod rate_limit;
mod redis;
mod redis_cache;
mod redis_lease;
mod retry;
mod support;

/// Every benchmark group's name, for [`group_selected`].
const GROUPS: &[&str] = &[
    "cache",
    "circuit_breaker",
    "clock",
    "rate_limit",
    "redis_cache_hit",
    "redis_lease",
    "redis_paired",
    "redis_rate_limit",
    "retry",
];

/// Criterion's options that take a value (the word after one is not the filter).
const VALUED: &[&str] = &[
    "--baseline",
    "--baseline-lenient",
    "--color",
    "-c",
    "--confidence-level",
    "--format",
    "--load-baseline",
    "--measurement-time",
    "--noise-threshold",
    "--nresamples",
    "--output-format",
    "--plotting-backend",
    "--profile-time",
    "--sample-size",
    "--save-baseline",
    "-s",
    "--significance-level",
    "--warm-up-time",
];

/// Whether criterion's filter (`cargo bench --bench rampart -- FILTER`) may select a row of the
/// benchmark group `group`, so that a group whose set-up is costly (a `redis-server`, a warm-up
/// measured by hand) runs it only when selected. Criterion matches its filter, a regular
/// expression, against `group/row`; without a regex engine this answers `false` only when the
/// filter is a plain word that names another group (a part of its name, or its name and more)
/// and not this one: `redis_lease` skips `redis_rate_limit` and `redis_cache_hit`, while `redis`,
/// a row's name alone, no filter, or any pattern with a metacharacter select every group, as
/// before.
pub(crate) fn group_selected(group: &str) -> bool {
    let mut filter = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if VALUED.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            filter = Some(arg);
        }
    }
    let Some(filter) = filter else {
        return true;
    };
    if filter.contains(|c: char| r"\.^$*+?()[]{}|".contains(c)) {
        return true;
    }
    // Whether `filter` may be found in `g/row`, judged from the group's name alone.
    let names = |g: &str| {
        g.contains(filter.as_str())
            || filter
                .split_once('/')
                .is_some_and(|(head, _)| g.ends_with(head))
    };
    names(group) || !GROUPS.iter().any(|g| names(g))
}

/// Whether criterion's filter names `group` itself (contains its name): for a group that is not
/// criterion's (it prints its own figures, so criterion's filter does not pick its rows) and runs
/// only when asked for.
pub(crate) fn group_named(group: &str) -> bool {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if VALUED.contains(&arg.as_str()) {
            args.next();
        } else if !arg.starts_with('-') {
            return arg.contains(group);
        }
    }
    false
}

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

    use crate::{
        cache, circuit_breaker, clock, config, rate_limit, redis, redis_cache, redis_lease, retry,
    };

    criterion_group! {
        name = rate_limit_benches;
        config = config();
        targets = clock::clocks, rate_limit::global, rate_limit::keyed_peer_ip, rate_limit::contention
    }

    criterion_group! {
        name = circuit_breaker_benches;
        config = config();
        targets = circuit_breaker::closed, circuit_breaker::open, circuit_breaker::contention,
            circuit_breaker::shared_closed
    }

    criterion_group! {
        name = retry_benches;
        config = config();
        targets = retry::overhead, retry::stacked
    }

    criterion_group! {
        name = cache_benches;
        config = config();
        targets = cache::hit_u64, cache::http_1k, cache::miss, cache::contention
    }

    criterion_group! {
        name = redis_benches;
        config = config();
        targets = redis::rate_limit, redis::paired
    }

    criterion_group! {
        name = redis_lease_benches;
        config = config();
        targets = redis_lease::lease
    }

    criterion_group! {
        name = redis_cache_benches;
        config = config();
        targets = redis_cache::hit
    }
}

criterion_main!(
    groups::rate_limit_benches,
    groups::circuit_breaker_benches,
    groups::retry_benches,
    groups::cache_benches,
    groups::redis_benches,
    groups::redis_lease_benches,
    groups::redis_cache_benches
);
