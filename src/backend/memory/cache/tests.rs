//! The in-memory cache store's tests: bound, eviction, expiry, invalidation.

use super::table::ENTRY_HEADER;
use super::*;
use crate::cache::entry::{Lifetimes, Timing};

fn store(max_bytes: u64) -> MemoryCacheStore<u64> {
    MemoryCacheStore::new(&CacheSpec {
        name: "test",
        max_bytes,
        max_entry_bytes: None,
    })
}

fn entry(value: u64, weight: usize, ttl: Duration) -> CacheEntry<u64> {
    CacheEntry::new(
        value,
        Timing::new(Instant::now(), Lifetimes::ttl(ttl)),
        weight,
    )
}

const HOUR: Duration = Duration::from_secs(3600);

fn get(s: &MemoryCacheStore<u64>, key: u64) -> Option<u64> {
    match s.get(&CacheKey::from(key)) {
        StoreOp::Ready(Ok(found)) => found.map(|e| *e.value()),
        _ => unreachable!("the memory store answers at once"),
    }
}

fn put(s: &MemoryCacheStore<u64>, key: u64, weight: usize) {
    let _ = s.put(CacheKey::from(key), entry(key, weight, HOUR));
}

#[tokio::test(start_paused = true)]
async fn the_lock_answers_a_fresh_entry_unless_forced_and_never_a_stale_one() {
    let s = store(1 << 20);
    let lock = |key: u64, mode| match s.lock(&CacheKey::from(key), HOUR, mode) {
        StoreOp::Ready(Ok(lock)) => lock,
        _ => unreachable!("the memory store answers at once"),
    };
    assert!(matches!(
        lock(1, LockMode::UnlessFresh),
        FillLock::NotShared
    ));
    let lifetimes = Lifetimes {
        ttl: Duration::from_secs(10),
        stale_while_revalidate: Duration::from_secs(10),
        stale_if_error: Duration::from_secs(10),
        age: Duration::ZERO,
    };
    let fresh = CacheEntry::new(1, Timing::new(Instant::now(), lifetimes), 8);
    let _ = s.put(CacheKey::from(1u64), fresh);
    assert!(matches!(
        lock(1, LockMode::UnlessFresh),
        FillLock::Fresh(e) if *e.value() == 1
    ));
    assert!(matches!(lock(1, LockMode::Always), FillLock::NotShared));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(get(&s, 1), Some(1), "stale, still stored");
    assert!(matches!(
        lock(1, LockMode::UnlessFresh),
        FillLock::NotShared
    ));
}

#[test]
fn a_flood_of_keys_stays_within_the_bound_tables_included() {
    let s = store(32 * 1024);
    assert_eq!(s.shards.len(), 1);
    for k in 0..10_000 {
        put(&s, k, 100);
        assert!(
            s.bytes() <= s.max_bytes(),
            "{} > {}",
            s.bytes(),
            s.max_bytes()
        );
    }
    let held = s.entry_count();
    // An entry is charged 100 + its header; a slot and an index bucket come on top.
    assert!(held > 80 && held < 32 * 1024 / 100, "{held} entries held");
    assert_eq!(get(&s, 9_999), Some(9_999), "the newest entry is kept");
    let tables = s.shards[0].lock.read().unwrap().table_bytes;
    let charges: u64 = held * (100 + ENTRY_HEADER);
    assert_eq!(
        s.bytes(),
        tables + charges,
        "bytes are the entries' charges and the tables"
    );
}

#[test]
fn entries_read_since_the_hand_passed_survive_a_scan_of_one_off_keys() {
    let s = store(32 * 1024);
    let hot: Vec<u64> = (1_000_000..1_000_010).collect();
    for &k in &hot {
        put(&s, k, 100);
    }
    for k in 0..5_000 {
        put(&s, k, 100);
        for &h in &hot {
            assert_eq!(
                get(&s, h),
                Some(h),
                "hot key {h} evicted after {k} one-off keys"
            );
        }
    }
    // Keys that are not read go: the oldest one-off keys are gone.
    assert_eq!(get(&s, 0), None);
}

#[test]
fn a_new_entry_has_a_whole_turn_of_the_hand_to_be_read() {
    let s = store(32 * 1024);
    for k in 0..1_000 {
        put(&s, k, 100);
    }
    // Once full, each insert evicts one entry: the oldest, not the one inserted just before
    // (which took the slot the hand had just freed). Looked at without being marked read.
    let held = |k: u64| {
        s.shards[0]
            .lock
            .read()
            .unwrap()
            .find(&CacheKey::from(k))
            .is_some()
    };
    let count = s.entry_count();
    for k in 1_000..3_000 {
        put(&s, k, 100);
        assert!(held(k - 1) && held(k), "{k}");
        assert!(!held(k - count), "{k}: the oldest went");
    }
}

#[test]
fn a_large_entry_takes_room_from_other_shards_and_one_too_large_is_not_kept() {
    let s = store(4 * 1024 * 1024);
    assert!(s.shards.len() > 1);
    for k in 0..30_000 {
        put(&s, k, 100);
    }
    assert!(s.bytes() <= s.max_bytes());
    // Most of the store, in one entry: its own shard cannot give that much.
    put(&s, 7, 3 * 1024 * 1024);
    assert_eq!(get(&s, 7), Some(7));
    assert!(s.bytes() <= s.max_bytes(), "{}", s.bytes());
    // More than the store may hold: not kept, and the older entry under its key goes.
    put(&s, 7, 5 * 1024 * 1024);
    assert_eq!(get(&s, 7), None);
    assert!(s.bytes() <= s.max_bytes());
}

#[test]
fn replacing_an_entry_recharges_it() {
    let s = store(1024 * 1024);
    put(&s, 1, 100);
    let one = s.bytes();
    put(&s, 1, 1_100);
    assert_eq!(s.entry_count(), 1);
    assert_eq!(s.bytes(), one + 1_000);
    put(&s, 1, 100);
    assert_eq!(s.bytes(), one);
}

#[tokio::test(start_paused = true)]
async fn expired_entries_are_never_returned_and_are_dropped_on_writes_and_sync() {
    let s = store(64 * 1024);
    assert_eq!(s.shards.len(), 1);
    let _ = s.put(CacheKey::from(1u64), entry(1, 100, Duration::from_secs(10)));
    let _ = s.put(
        CacheKey::from(2u64),
        entry(2, 100, Duration::from_secs(100)),
    );
    assert_eq!(get(&s, 1), Some(1));
    let at = Instant::now() + Duration::from_secs(10);
    assert!(matches!(
        s.get_at(&CacheKey::from(1u64), at),
        StoreOp::Ready(Ok(None))
    ));
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(get(&s, 1), None, "expired: not returned");
    assert_eq!(s.entry_count(), 2, "but still held until a write or a sync");
    // A write to its shard sweeps it.
    put(&s, 3, 100);
    assert_eq!(s.entry_count(), 2);
    assert_eq!(get(&s, 2), Some(2));
    tokio::time::advance(Duration::from_secs(90)).await;
    s.sync();
    assert_eq!(s.entry_count(), 1, "entry 2 expired and went at the sync");
    assert_eq!(get(&s, 3), Some(3));
}

#[test]
fn invalidation_by_key_prefix_and_all_gives_the_memory_back() {
    let s = store(4 * 1024 * 1024);
    for k in 0..2_000u64 {
        let key = CacheKey::from(format!("{}:{k}", if k % 2 == 0 { "even" } else { "odd" }));
        let _ = s.put(key, entry(k, 100, HOUR));
    }
    assert_eq!(s.entry_count(), 2_000);
    let _ = s.invalidate(&CacheKey::from("even:0"));
    assert_eq!(s.entry_count(), 1_999);
    let _ = s.invalidate_prefix(b"odd:");
    assert_eq!(s.entry_count(), 999);
    let tables: u64 = s
        .shards
        .iter()
        .map(|sh| sh.lock.read().unwrap().table_bytes)
        .sum();
    // Every key here is inline: no heap bytes of its own.
    assert_eq!(s.bytes(), tables + 999 * (100 + ENTRY_HEADER));
    let _ = s.clear();
    assert_eq!(s.entry_count(), 0);
    assert_eq!(s.bytes(), 0, "cleared: the tables are freed too");
    // Still usable.
    put(&s, 5, 100);
    assert_eq!(get(&s, 5), Some(5));
}

/// Every shard's index of variants holds exactly its live slots whose key has a newline.
fn assert_variants_indexed(s: &MemoryCacheStore<u64>) {
    for shard in s.shards.iter() {
        let t = shard.lock.read().unwrap();
        let live_variants: Vec<usize> = (0..t.slots.len())
            .filter(|&i| t.slots[i].entry.is_some() && t.slots[i].key.as_bytes().contains(&b'\n'))
            .collect();
        assert_eq!(
            t.variants.len(),
            live_variants.len(),
            "one index entry per variant"
        );
        for &i in t.variants.iter() {
            assert!(
                live_variants.contains(&(i as usize)),
                "slot {i} is a live variant"
            );
        }
    }
}

fn present(s: &MemoryCacheStore<u64>, key: &str) -> bool {
    match s.get(&CacheKey::from(key)) {
        StoreOp::Ready(Ok(found)) => found.is_some(),
        _ => unreachable!("the memory store answers at once"),
    }
}

#[test]
fn a_resources_variants_go_and_nothing_else_does() {
    let s = store(4 * 1024 * 1024);
    let keys = [
        "GET /a",              // the exact key: not under `GET /a\n`
        "GET /a\naccept=json", // variants of `GET /a`
        "GET /a\naccept=xml",
        "GET /a\nx\ny",           // a variant whose fields hold a newline too
        "GET /a\n",               // the empty variant
        "GET /ab\naccept=json",   // another resource that `GET /a` is a prefix of
        "GET /\naccept=json",     // a resource that is a prefix of `GET /a`
        "HEAD /a\naccept=json",   // another method
        "x\nGET /a\naccept=json", // a user key holding the prefix further in
    ];
    // Many other resources' variants, spread over every shard (first: the keys above sit
    // after them in their shards' slots, and move when the shards are compacted).
    for k in 0..2_000u64 {
        let _ = s.put(
            CacheKey::from(format!("GET /r{k}\nv={k}")),
            entry(k, 10, HOUR),
        );
    }
    for (v, key) in keys.iter().enumerate() {
        let _ = s.put(CacheKey::from(*key), entry(v as u64, 100, HOUR));
    }
    assert_variants_indexed(&s);
    let _ = s.invalidate_prefix(b"GET /a\n");
    let gone = [
        "GET /a\naccept=json",
        "GET /a\naccept=xml",
        "GET /a\nx\ny",
        "GET /a\n",
    ];
    for key in keys {
        assert_eq!(present(&s, key), !gone.contains(&key), "{key:?}");
    }
    assert_eq!(
        s.entry_count(),
        2_000 + keys.len() as u64 - gone.len() as u64
    );
    assert_variants_indexed(&s);
    // A prefix with a newline before its end is not a base: it walks, with the same meaning.
    let _ = s.invalidate_prefix(b"x\nGET /a\n");
    assert!(!present(&s, "x\nGET /a\naccept=json"));
    // So does one without a newline (a handle's prefix).
    let _ = s.invalidate_prefix(b"GET /r1");
    assert!(!present(&s, "GET /r1\nv=1") && !present(&s, "GET /r19\nv=19"));
    assert!(present(&s, "GET /r2\nv=2"));
    assert_variants_indexed(&s);
    // Emptied shards move their last entries together and index them again.
    let _ = s.invalidate_prefix(b"GET /r");
    assert_eq!(s.entry_count(), 4);
    assert_variants_indexed(&s);
    let _ = s.invalidate_prefix(b"GET /ab\n");
    assert!(!present(&s, "GET /ab\naccept=json"));
    assert!(present(&s, "GET /\naccept=json") && present(&s, "HEAD /a\naccept=json"));
    assert_variants_indexed(&s);
}

/// Random puts (new keys, replaced ones), single invalidations, variant invalidations and a
/// bound small enough to evict: after each step the variants index matches the slots, and a
/// variant invalidation leaves no key under its prefix while keeping every other one it had.
#[test]
fn the_variants_index_follows_puts_replacements_evictions_and_shrinking() {
    let s = store(256 * 1024);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for step in 0..20_000u64 {
        let r = next();
        let resource = r % 97;
        let key = match (r >> 8) % 4 {
            0 => format!("GET /{resource}"),
            _ => format!("GET /{resource}\nf={}", (r >> 16) % 13),
        };
        match (r >> 24) % 16 {
            0 => {
                let _ = s.invalidate(&CacheKey::from(key.as_str()));
            }
            1 => {
                let prefix = format!("GET /{resource}\n");
                let before: Vec<bool> = (0..97)
                    .map(|other| present(&s, &format!("GET /{other}")))
                    .collect();
                let _ = s.invalidate_prefix(prefix.as_bytes());
                for f in 0..13 {
                    assert!(
                        !present(&s, &format!("GET /{resource}\nf={f}")),
                        "step {step}"
                    );
                }
                for (other, was) in before.into_iter().enumerate() {
                    assert_eq!(
                        present(&s, &format!("GET /{other}")),
                        was,
                        "exact keys stay"
                    );
                }
            }
            _ => {
                let _ = s.put(CacheKey::from(key.as_str()), entry(step, 1_000, HOUR));
            }
        }
        if step % 97 == 0 {
            assert_variants_indexed(&s);
        }
    }
    assert_variants_indexed(&s);
    let _ = s.clear();
    assert_eq!(s.bytes(), 0, "the variants index is freed with the tables");
}
