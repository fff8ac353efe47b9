//! The hasher of every table the crate keys by its callers' keys, and the shard a hash picks.
//!
//! foldhash's `quality` variant, not its `fast` one: `fast` ends on the folded multiply of its last
//! input, and for short structured keys (an `IpAddr`, consecutive) the middle bits that pick a
//! shard and the low bits that pick a bucket are not spread for some of its random seeds. Measured
//! over 1,000 seeds, 4,096 consecutive IPv4 addresses gave some shard of 64 less than a quarter or
//! more than four times its share for 16 of them; over 3,000 seeds, 20,000 consecutive addresses
//! reached as few as 5 of the 64 shards. A rate limit store so seeded holds a fraction of its cap
//! before it forgets active keys, and its idle sweep (run by each shard's own inserts) leaves the
//! shards no new key reaches (how `rate_limit_flood` failed once in CI). `quality` finishes with
//! one more folded multiply: a few instructions a hash.

/// A hasher with a seed of its own, for the tables of one store.
pub(crate) type RandomState = foldhash::quality::RandomState;

/// The shard of `hash` among `mask + 1` (a power of two): its middle bits (hashbrown takes the
/// low ones for the bucket and the top seven for its tags).
#[cfg_attr(
    not(any(feature = "circuit-breaker", feature = "memory")),
    allow(dead_code)
)]
#[inline(always)]
pub(crate) fn shard(hash: u64, mask: u64) -> usize {
    ((hash >> 32) & mask) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;
    use std::net::{IpAddr, Ipv4Addr};

    /// Consecutive IPv4 addresses spread over 64 shards and 64 buckets for every one of 1,000
    /// seeds: no shard or bucket below a quarter of its share or above four times it (for a
    /// uniform hash, a chance of about 1e-10 over the whole test; with foldhash's `fast` variant,
    /// 16 of 1,000 seeds fail).
    #[test]
    fn consecutive_addresses_spread_over_shards_and_buckets_for_every_seed() {
        const KEYS: u32 = 4096;
        let share = KEYS / 64;
        let mut skewed = 0;
        for _ in 0..1000 {
            let state = RandomState::default();
            let (mut shards, mut buckets) = ([0u32; 64], [0u32; 64]);
            for i in 0..KEYS {
                let hash = state.hash_one(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)));
                shards[shard(hash, 63)] += 1;
                buckets[(hash & 63) as usize] += 1;
            }
            let even =
                |counts: &[u32; 64]| counts.iter().all(|&c| c >= share / 4 && c <= share * 4);
            skewed += usize::from(!even(&shards) || !even(&buckets));
        }
        assert_eq!(skewed, 0, "{skewed} of 1,000 seeds skewed");
    }
}
