//! A flood of 1,000,000 distinct keys keeps the in-memory store under its cap, and memory under
//! a measured bound; idle keys are released afterwards without anyone calling anything.
//!
//! Its own test binary, because it counts every allocation of the process.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use cap::Cap;
use tower_rampart::backend::MemoryBackend;
use tower_rampart::backend::memory::DEFAULT_MAX_KEYS;
use tower_rampart::clock::ManualClock;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// The bounds documented in `backend::memory`: at most this many bytes per key of capacity, at the
/// peak (table growth and eviction included), for IP-address keys.
fn max_bytes_per_key(algorithm: Algorithm) -> usize {
    match algorithm {
        Algorithm::Gcra => 64,
        _ => 96,
    }
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
}

#[test]
fn a_million_distinct_keys_stay_under_the_cap() {
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let clock = ManualClock::new();
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_hour(100))
            .algorithm(algorithm)
            .key(key_fn(|ip: &IpAddr| Some(*ip)))
            .backend(MemoryBackend::new().clock(clock.clone()))
            .build()
            .unwrap();
        let store = layer.store();
        assert_eq!(store.capacity(), DEFAULT_MAX_KEYS);

        let before = ALLOC.allocated();
        let mut peak = 0;
        for i in 0..1_000_000u32 {
            // Every key stays active for an hour: nothing is idle, the cap alone must hold.
            assert!(store.decide(&ip(i)).is_allowed());
            if i % 50_000 == 0 {
                peak = peak.max(ALLOC.allocated() - before);
            }
        }
        peak = peak.max(ALLOC.allocated() - before);
        let held = store.len();
        assert!(
            held <= store.capacity(),
            "{held} keys held, cap {}",
            store.capacity()
        );
        assert!(
            held >= store.capacity() * 3 / 4,
            "eviction is too eager: {held} keys held"
        );
        let per_key = peak / store.capacity();
        println!(
            "{algorithm:?}: peak {peak} bytes for a cap of {} keys: {per_key} bytes per key",
            store.capacity()
        );
        assert!(
            per_key <= max_bytes_per_key(algorithm),
            "{algorithm:?} uses {per_key} bytes per key, documented bound {}",
            max_bytes_per_key(algorithm)
        );

        // The most recent keys are remembered exactly: the newest client is still counted.
        assert_eq!(store.decide(&ip(999_999)).remaining(), 98);

        // After the flood, once every key is idle, new traffic sweeps each shard it touches and
        // the memory goes back.
        clock.advance(Duration::from_secs(3 * 3600));
        for i in 0..20_000u32 {
            store.decide(&ip(2_000_000 + i));
        }
        assert!(
            store.len() <= 20_000,
            "idle keys were not swept: {} held",
            store.len()
        );
        let after = ALLOC.allocated() - before;
        assert!(
            after < peak / 2,
            "memory not released: {after} of a peak of {peak} bytes"
        );
    }
}
