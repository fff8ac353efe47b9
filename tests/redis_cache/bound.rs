//! The layer's `max_bytes` bounds the cache in Redis too: a flood of distinct keys (random query
//! strings) through the real layer leaves at most `max_bytes` of entries as the store counts them
//! (read back from the private server: entry lengths, names, `MEMORY USAGE`, `DBSIZE`), keeps the
//! latest entries, and hits still hit; expiry (real TTLs: Redis's clock), invalidation,
//! overwrites and corrupt counts keep each slot's count equal to what it holds.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;
use tower::Layer;
use tower::util::BoxCloneSyncService;
use tower_rampart::BoxError;
use tower_rampart::backend::redis::RedisCacheStore;
use tower_rampart::cache::entry::{Lifetimes, Timing};
use tower_rampart::cache::{CacheEntry, CacheKey, CacheLayer, CacheStore, StoreOp};
use tower_rampart::key::key_fn;

use crate::common::redis::RedisServer;
use crate::support::{Svc, call, connect, stored, unique_prefix, until_stored};

/// What the store counts for an entry besides its bytes, its name and its key three times (as
/// documented on `RedisCacheStore`).
const PER_ENTRY: u64 = 256;

/// One slot of a cache as read from Redis.
#[derive(Debug, Default)]
struct SlotView {
    count: u64,
    records: BTreeMap<Vec<u8>, u64>,
    idx: BTreeSet<Vec<u8>>,
    exp: BTreeSet<Vec<u8>>,
}

async fn slot_view(con: &mut MultiplexedConnection, head: &str) -> SlotView {
    let count: Option<String> = con.get(format!("{head}bytes")).await.unwrap();
    let count = count.map_or(0, |c| {
        c.parse::<u64>()
            .unwrap_or_else(|_| panic!("{head}bytes is a count, not {c:?}"))
    });
    let records: Vec<(Vec<u8>, String)> = con.hgetall(format!("{head}sz")).await.unwrap();
    let records = records
        .into_iter()
        .map(|(k, w)| (k, w.parse::<u64>().expect("a weight")))
        .collect();
    let idx: Vec<Vec<u8>> = con.zrange(format!("{head}idx"), 0, -1).await.unwrap();
    let exp: Vec<Vec<u8>> = con.zrange(format!("{head}exp"), 0, -1).await.unwrap();
    SlotView {
        count,
        records,
        idx: idx.into_iter().collect(),
        exp: exp.into_iter().collect(),
    }
}

fn slot_head(prefix: &str, name: &str, slot: u16) -> String {
    format!("{prefix}:cache:{name}:{{{name}:{slot}}}:")
}

/// Checks that each slot's count is the sum of its records, that the records, the index and the
/// expiry set list the same keys, and that each live entry's record is its documented weight.
/// Returns the slots' views.
async fn consistent(
    con: &mut MultiplexedConnection,
    store: &RedisCacheStore<String>,
    prefix: &str,
    slots: u16,
) -> Vec<SlotView> {
    let mut views = Vec::new();
    for slot in 0..slots {
        let view = slot_view(con, &slot_head(prefix, store.name(), slot)).await;
        assert_eq!(
            view.count,
            view.records.values().sum::<u64>(),
            "slot {slot}: the count is the sum of the records"
        );
        let recorded: BTreeSet<_> = view.records.keys().cloned().collect();
        assert_eq!(recorded, view.idx, "slot {slot}: records and index agree");
        assert_eq!(recorded, view.exp, "slot {slot}: records and expiry agree");
        for (key, weight) in &view.records {
            let name = store.redis_key(&CacheKey::from(key.clone()));
            let len: u64 = con.strlen(&name).await.unwrap();
            if len > 0 {
                assert_eq!(
                    *weight,
                    len + name.len() as u64 + 3 * key.len() as u64 + PER_ENTRY,
                    "slot {slot}: the weight of {:?}",
                    String::from_utf8_lossy(key)
                );
            }
        }
        views.push(view);
    }
    views
}

/// Every key of the private server under `prefix`, by `SCAN` (bounded: the test's keys only).
async fn keys_under(con: &mut MultiplexedConnection, pattern: &str) -> Vec<Vec<u8>> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    for _ in 0..10_000 {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            return keys;
        }
    }
    panic!("SCAN did not finish");
}

/// A layer with `max_bytes` over `slots` slots whose upstream answers `"<request>#<n>"` padded
/// with `pad` bytes; the upstream's call count.
async fn layer(
    url: &str,
    prefix: &str,
    max_bytes: u64,
    slots: u16,
    pad: usize,
) -> (
    Svc,
    RedisCacheStore<String>,
    tower_rampart::cache::CacheHandle,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let up = tower::service_fn(move |req: String| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move { Ok::<_, BoxError>(format!("{req}#{n}#{}", "x".repeat(pad))) }
    });
    let layer = CacheLayer::builder()
        .name("bounded")
        .ttl(Duration::from_secs(120))
        .max_bytes(max_bytes)
        .key(key_fn(|r: &String| Some(r.clone())))
        .backend(connect(url, prefix).await.cache_slots(slots))
        .build()
        .expect("valid configuration");
    let handle = layer.handle();
    let store = layer.store().clone();
    let svc = BoxCloneSyncService::new(layer.layer(up));
    (svc, store, handle, calls)
}

/// The bound is split over the cache's slots: an HTTP cache whose body cap is larger than one
/// slot's share would fetch such responses and never store them. Refused when the layer is
/// built, naming the settings (no server needed: the backend connects lazily).
#[tokio::test]
async fn a_slot_too_small_for_the_largest_response_is_a_configuration_error() {
    let backend = || {
        tower_rampart::backend::RedisBackend::connect_lazy("redis://127.0.0.1:1")
            .expect("a valid url")
    };
    // 8 MiB over the default 16 slots: 512 KiB each, under the default 1 MiB body cap.
    let err = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .max_bytes(8 << 20)
        .backend(backend())
        .build()
        .map(drop)
        .expect_err("a slot cannot hold the largest response");
    let text = err.to_string();
    assert!(text.contains("max_bytes"), "{text}");
    assert!(text.contains("524288 bytes each"), "{text}");
    // The body cap and 16 KiB for headers, key and bookkeeping, over 16 slots.
    assert!(text.contains("at least 17039360"), "{text}");
    // Fewer slots, or a smaller body cap, and it builds.
    CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .max_bytes(8 << 20)
        .backend(backend().cache_slots(4))
        .build()
        .expect("2 MiB slots leave room for a 1 MiB body");
    CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .max_body_bytes(256 << 10)
        .max_bytes(8 << 20)
        .backend(backend())
        .build()
        .expect("512 KiB slots leave room for a 256 KiB body");
    // The clone mode knows no largest value: any bound builds.
    let cloned = CacheLayer::builder()
        .ttl(Duration::from_secs(1))
        .key(key_fn(|r: &String| Some(r.clone())))
        .max_bytes(1024)
        .backend(backend())
        .build()
        .expect("no largest value to check");
    let _: &RedisCacheStore<String> = cloned.store();
}

#[test]
fn a_flood_of_distinct_keys_stays_within_max_bytes() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            const MAX_BYTES: u64 = 384 * 1024;
            const SLOTS: u16 = 4;
            const FLOOD: usize = 2_000;
            let prefix = unique_prefix("bound");
            let (mut svc, store, _handle, calls) =
                layer(&server.url(), &prefix, MAX_BYTES, SLOTS, 2_000).await;
            let mut con = server.connection().await;
            let key = |i: usize| format!("GET /api/summary?r={i:016x}");
            let mut answers = Vec::new();
            for i in 0..FLOOD {
                answers.push(call(&mut svc, &key(i)).await.unwrap());
            }
            // Fills are written after the answer: wait for the last.
            until_stored(&store, &key(FLOOD - 1)).await;

            let entries = keys_under(&mut con, &format!("{prefix}:cache:bounded:*:e:*")).await;
            let mut stored_bytes = 0u64;
            let mut memory = 0u64;
            for name in &entries {
                let len: u64 = con.strlen(name).await.unwrap();
                stored_bytes += len + name.len() as u64;
            }
            for name in keys_under(&mut con, &format!("{prefix}:*")).await {
                let used: Option<u64> = redis::cmd("MEMORY")
                    .arg("USAGE")
                    .arg(&name)
                    .query_async(&mut con)
                    .await
                    .unwrap();
                memory += used.unwrap_or(0);
            }
            let dbsize: u64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
            eprintln!(
                "{} entries of {FLOOD} kept: {stored_bytes} bytes stored, \
                 {memory} bytes by MEMORY USAGE, {dbsize} keys",
                entries.len()
            );
            assert!(
                stored_bytes <= MAX_BYTES,
                "the entries hold {stored_bytes} bytes, over {MAX_BYTES}"
            );
            assert!(
                memory <= MAX_BYTES + MAX_BYTES / 2,
                "redis reports {memory} bytes for the cache's keys, far over {MAX_BYTES}"
            );
            let views = consistent(&mut con, &store, &prefix, SLOTS).await;
            let counted: u64 = views.iter().map(|v| v.count).sum();
            for (slot, view) in views.iter().enumerate() {
                assert!(
                    view.count <= MAX_BYTES / u64::from(SLOTS),
                    "slot {slot} counts {} bytes, over its share",
                    view.count
                );
            }
            assert!(
                counted <= MAX_BYTES,
                "{counted} bytes counted, over {MAX_BYTES}"
            );
            // At least half the budget is in use (eviction makes room, it does not empty slots),
            // and the keys are the entries plus five per slot (index, expiry, records, counts,
            // invalidation counter; no locks are left).
            assert!(counted >= MAX_BYTES / 2, "only {counted} bytes counted");
            assert!(
                dbsize <= entries.len() as u64 + 5 * u64::from(SLOTS),
                "{dbsize} keys for {} entries",
                entries.len()
            );

            // The latest entries are kept, the earliest evicted (the soonest to expire).
            for i in 0..200 {
                assert_eq!(stored(&store, &key(i)).await, None, "{} evicted", key(i));
            }
            let before = calls.load(std::sync::atomic::Ordering::SeqCst);
            for (i, answer) in answers.iter().enumerate().skip(FLOOD - 20) {
                assert_eq!(
                    &call(&mut svc, &key(i)).await.unwrap(),
                    answer,
                    "{} is a hit",
                    key(i)
                );
            }
            assert_eq!(
                calls.load(std::sync::atomic::Ordering::SeqCst),
                before,
                "the latest keys are hits"
            );
        });
}

/// An entry of `len` bytes fresh for `ttl` (real time: Redis's clock expires it).
fn entry(value: &str, len: usize, ttl: Duration) -> CacheEntry<String> {
    let value = format!("{value}{}", "y".repeat(len));
    let weight = value.len();
    CacheEntry::new(
        value,
        Timing::new(Instant::now(), Lifetimes::ttl(ttl)),
        weight,
    )
}

async fn done(op: StoreOp<(), tower_rampart::backend::redis::RedisCacheFuture<()>>) {
    match op {
        StoreOp::Ready(r) => r.expect("redis answers"),
        StoreOp::Pending(f) => f.await.expect("redis answers"),
    }
}

#[test]
fn expiry_invalidation_overwrites_and_corruption_keep_the_count() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let prefix = unique_prefix("count");
            let (_svc, store, _handle, _calls) =
                layer(&server.url(), &prefix, 64 * 1024, 1, 0).await;
            let mut con = server.connection().await;
            let head = slot_head(&prefix, "bounded", 0);
            let records = |views: &[SlotView]| -> BTreeSet<String> {
                views[0]
                    .records
                    .keys()
                    .map(|k| String::from_utf8(k.clone()).unwrap())
                    .collect()
            };
            let set = |keys: &[&str]| -> BTreeSet<String> {
                keys.iter().map(|k| (*k).to_owned()).collect()
            };

            for i in 0..10 {
                let key = format!("short:{i}");
                done(store.put(
                    CacheKey::from(key.as_str()),
                    entry(&key, 1_000, Duration::from_millis(800)),
                ))
                .await;
            }
            for i in 0..5 {
                let key = format!("long:{i}");
                done(store.put(
                    CacheKey::from(key.as_str()),
                    entry(&key, 1_000, Duration::from_secs(60)),
                ))
                .await;
            }
            let views = consistent(&mut con, &store, &prefix, 1).await;
            assert_eq!(views[0].records.len(), 15, "every entry is counted");
            let first = views[0].count;

            // Overwritten: the new weight replaces the old.
            done(store.put(
                CacheKey::from("long:0"),
                entry("long:0", 3_000, Duration::from_secs(60)),
            ))
            .await;
            let views = consistent(&mut con, &store, &prefix, 1).await;
            assert_eq!(views[0].records.len(), 15);
            assert_eq!(views[0].count, first + 2_000, "an overwrite counts once");

            // Invalidated by key and by prefix: no longer counted.
            done(store.invalidate(&CacheKey::from("long:1"))).await;
            done(store.invalidate_prefix(b"long:2")).await;
            let views = consistent(&mut con, &store, &prefix, 1).await;
            assert_eq!(views[0].records.len(), 13);

            // Expired by Redis (its clock): the next write's trim subtracts them.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                let left: u64 = redis::cmd("EXISTS")
                    .arg(store.redis_key(&CacheKey::from("short:0")))
                    .query_async(&mut con)
                    .await
                    .unwrap();
                if left == 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "short entries did not expire"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            done(store.put(
                CacheKey::from("long:5"),
                entry("long:5", 1_000, Duration::from_secs(60)),
            ))
            .await;
            let views = consistent(&mut con, &store, &prefix, 1).await;
            assert_eq!(
                records(&views),
                set(&["long:0", "long:3", "long:4", "long:5"]),
                "expired entries are no longer counted"
            );
            assert!(stored(&store, "long:5").await.is_some(), "a hit still hits");

            // Corrupt counts are repaired from the records, never negative, never stuck.
            for bad in ["garbage", "-7", "1", "nan", "1e300"] {
                let _: () = con.set(format!("{head}bytes"), bad).await.unwrap();
                done(store.invalidate(&CacheKey::from("long:3"))).await;
                done(store.put(
                    CacheKey::from("long:3"),
                    entry("long:3", 1_000, Duration::from_secs(60)),
                ))
                .await;
                let views = consistent(&mut con, &store, &prefix, 1).await;
                assert_eq!(views[0].records.len(), 4, "after a count of {bad:?}");
            }
            // A count far above its records (records lost): counted again when no room is left.
            let _: () = con.del(format!("{head}sz")).await.unwrap();
            let _: () = con
                .set(format!("{head}bytes"), "1000000000000")
                .await
                .unwrap();
            done(store.put(
                CacheKey::from("long:6"),
                entry("long:6", 1_000, Duration::from_secs(60)),
            ))
            .await;
            let view = slot_view(&mut con, &head).await;
            assert_eq!(view.count, view.records.values().sum::<u64>());
            assert!(
                stored(&store, "long:6").await.is_some(),
                "stored after repair"
            );
            // Records of another type: dropped, and counting starts again.
            let _: () = con.del(format!("{head}sz")).await.unwrap();
            let _: () = con.set(format!("{head}sz"), "not a hash").await.unwrap();
            done(store.put(
                CacheKey::from("long:7"),
                entry("long:7", 1_000, Duration::from_secs(60)),
            ))
            .await;
            let view = slot_view(&mut con, &head).await;
            assert_eq!(view.count, view.records.values().sum::<u64>());
            assert!(
                stored(&store, "long:7").await.is_some(),
                "stored after repair"
            );

            // A record whose key an older release's script took out of the index (without the
            // record): found by the writes' sampling and dropped.
            done(store.put(
                CacheKey::from("long:8"),
                entry("long:8", 1_000, Duration::from_secs(60)),
            ))
            .await;
            let _: () = con.zrem(format!("{head}idx"), "long:8").await.unwrap();
            let _: () = con.zrem(format!("{head}exp"), "long:8").await.unwrap();
            let _: () = con
                .del(store.redis_key(&CacheKey::from("long:8")))
                .await
                .unwrap();
            let mut writes = 0;
            while slot_view(&mut con, &head)
                .await
                .records
                .contains_key(&b"long:8"[..])
            {
                writes += 1;
                assert!(writes <= 200, "the orphan record stayed through 200 writes");
                done(store.put(
                    CacheKey::from("long:9"),
                    entry("long:9", 1_000, Duration::from_secs(60)),
                ))
                .await;
            }
            // (long:6 has had no record since the records were dropped: it leaves by its TTL.)
            let view = slot_view(&mut con, &head).await;
            assert_eq!(view.count, view.records.values().sum::<u64>());

            // An entry larger than the whole cache is not stored; the key's old entry goes.
            done(store.put(
                CacheKey::from("long:7"),
                entry("long:7", 70_000, Duration::from_secs(60)),
            ))
            .await;
            assert_eq!(stored(&store, "long:7").await, None, "too large to keep");
            let view = slot_view(&mut con, &head).await;
            assert_eq!(view.count, view.records.values().sum::<u64>());
            assert!(!view.records.contains_key(&b"long:7"[..]));
        });
}
