//! Active users in history under attacker-chosen `user_id`s: every distinct id was kept 25 hours,
//! in a set per minute (in memory) or a Redis set per minute, and a history request merged them
//! all at once: under the in-memory store's lock (0.23 s a call at 200,000 ids, blocking every
//! event and every 4xx), or in one Redis script over up to 17,280 keys (227 ms, past the 250 ms
//! timeout once loaded). Users are now counted in HyperLogLog sketches per block of time (a minute,
//! 5 and 15 minutes, an hour): at most 16 KiB each however many ids, Redis's own algorithm in
//! memory and `PFADD`/`PFCOUNT` in Redis, so both stores answer the same counts; a history request
//! reads at most one block per minute kept, at most 14 per command.

use chrono::{DateTime, Utc};

use crate::common::redis::RedisServer;
use crate::storage::blocks::{GRAINS, MAX_BLOCKS_PER_INTERVAL, interval_blocks};
use crate::storage::distinct::{self, MAX_SKETCH_BYTES, Sketch};
use crate::storage::{EventRecord, HISTORY_RETENTION_MINUTES, Series, Storage};

fn login(user_id: u64) -> EventRecord {
    EventRecord {
        user_id,
        event_type: "login".into(),
        platform: "web".into(),
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap()
}

/// Ten minutes into the current hour: the minutes written below share their hour.
fn ten_past() -> i64 {
    Utc::now().timestamp().div_euclid(3600) * 3600 + 600
}

fn within(count: f64, expected: f64, error: f64) -> bool {
    (count - expected).abs() <= expected * error
}

/// Every interval of whole minutes (1 to 60), wherever it falls in the hour, is its blocks exactly
/// (each minute in one block, each block aligned on its grain), and at most
/// `MAX_BLOCKS_PER_INTERVAL` of them.
#[test]
fn blocks_tile_every_interval_exactly_and_few() {
    let mut most = 0;
    for minutes in 1..=60i64 {
        let interval = minutes * 60;
        // 60 consecutive intervals fall at every place in the hour an interval of this length can.
        for k in 0..60 {
            let start = (29_000_000 + k) * interval;
            let blocks = interval_blocks(&[start], interval, start).remove(0);
            most = most.max(blocks.len());
            let mut covered: Vec<i64> = Vec::new();
            for b in &blocks {
                assert!(GRAINS.contains(&b.grain) && b.start % b.grain == 0, "{b:?}");
                covered.extend(b.start..b.start + b.grain);
            }
            covered.sort_unstable();
            let minutes: Vec<i64> = (start / 60..(start + interval) / 60).collect();
            assert_eq!(covered, minutes, "{blocks:?}");
        }
    }
    assert_eq!(most, MAX_BLOCKS_PER_INTERVAL);
    // Past the history kept, an interval reads nothing.
    let now = 29_000_000 * 3600;
    let old = now - (HISTORY_RETENTION_MINUTES + 60) * 60;
    assert!(interval_blocks(&[old], 3600, now)[0].is_empty());
}

#[tokio::test]
async fn fifty_thousand_distinct_users_hold_at_most_a_sketch_per_block_in_memory() {
    const USERS: u64 = 50_000;
    let storage = Storage::default();
    let Storage::Memory(memory) = &storage else {
        unreachable!("the default store is in memory")
    };
    let t0 = ten_past();
    for id in 0..USERS {
        storage.record_event(&login(id), at(t0)).await.unwrap();
    }
    // One minute, so one block of each grain. A set held 8 bytes and more per id: 400 KB here.
    let per_block = MAX_SKETCH_BYTES + std::mem::size_of::<Sketch>();
    let bytes = memory.distinct_users_bytes();
    assert!(
        bytes <= GRAINS.len() * per_block,
        "{bytes} bytes of history for one minute of {USERS} users"
    );
    // The next minute: the same users, and as many new ones. Two minute blocks now; the 5- and
    // 15-minute and hour blocks are the same ones, still one sketch each.
    for id in 0..2 * USERS {
        storage.record_event(&login(id), at(t0 + 60)).await.unwrap();
    }
    let bytes = memory.distinct_users_bytes();
    assert!(
        bytes <= (GRAINS.len() + 1) * per_block,
        "{bytes} bytes of history for two minutes"
    );

    let now = at(t0 + 60);
    let minutes: Vec<f64> = storage
        .history(&Series::ActiveUsers, 60, 2, now)
        .await
        .unwrap()
        .iter()
        .map(|p| p.value)
        .collect();
    assert!(within(minutes[0], 50_000.0, 0.02), "{minutes:?}");
    assert!(within(minutes[1], 100_000.0, 0.02), "{minutes:?}");
    // Both minutes in one 5-minute interval and one hour: their union, not their sum.
    for interval in [300, 3600] {
        let union = storage
            .history(&Series::ActiveUsers, interval, 1, now)
            .await
            .unwrap()[0]
            .value;
        assert!(
            within(union, 100_000.0, 0.02),
            "{union} users every {interval} s"
        );
    }

    // 25 hours on, the blocks are forgotten.
    let later = t0 + 60 + HISTORY_RETENTION_MINUTES * 60 + 3600;
    storage.record_event(&login(1), at(later)).await.unwrap();
    assert!(memory.distinct_users_bytes() <= GRAINS.len() * per_block);
}

/// The in-memory sketch answers what Redis's `PFCOUNT` answers for the same ids, alone and merged,
/// from 0 to 60,000 users (exact for small sets; within 2% of the truth for large ones).
#[tokio::test]
async fn the_memory_sketch_counts_as_redis_pfcount_does() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connection().await;
    // Ids across the whole u64 range (every digit count), not just 0..n.
    let id = |i: u64| match i {
        0 => u64::MAX,
        1 => 0,
        i => i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (i % 60),
    };
    let (mut a, mut b) = (Sketch::default(), Sketch::default());
    let mut added = 0u64;
    let mut distinct_ids = std::collections::HashSet::new();
    for checkpoint in [0u64, 1, 2, 3, 10, 100, 1_000, 3_000, 10_000, 60_000] {
        let (mut to_a, mut to_b) = (Vec::new(), Vec::new());
        while added < checkpoint {
            let user = id(added);
            distinct_ids.insert(user);
            a.insert_hash(distinct::hash(user));
            to_a.push(user.to_string());
            if added.is_multiple_of(3) {
                // b: a third of a's ids, and as many of its own.
                let own = user ^ 1;
                b.insert_hash(distinct::hash(user));
                b.insert_hash(distinct::hash(own));
                to_b.extend([user.to_string(), own.to_string()]);
            }
            added += 1;
        }
        for (key, ids) in [("a", &to_a), ("b", &to_b)] {
            for chunk in ids.chunks(1_000) {
                let _: u64 = redis::cmd("PFADD")
                    .arg(key)
                    .arg(chunk)
                    .query_async(&mut con)
                    .await
                    .unwrap();
            }
        }
        let pfcount = |keys: &'static [&'static str]| {
            let mut con = con.clone();
            async move {
                redis::cmd("PFCOUNT")
                    .arg(keys)
                    .query_async::<u64>(&mut con)
                    .await
                    .unwrap()
            }
        };
        assert_eq!(a.count(), pfcount(&["a"]).await, "{checkpoint} ids");
        assert_eq!(b.count(), pfcount(&["b"]).await, "{checkpoint} ids");
        assert_eq!(
            distinct::union_count([&a, &b]),
            pfcount(&["a", "b"]).await,
            "{checkpoint} ids, merged"
        );
        let truth = distinct_ids.len() as f64;
        if checkpoint <= 100 {
            assert_eq!(a.count() as f64, truth, "small sets count exactly");
        }
        assert!(within(a.count() as f64, truth, 0.02), "{checkpoint} ids");
        assert!(a.bytes() <= MAX_SKETCH_BYTES + std::mem::size_of::<Sketch>());
    }
}

/// What one `history` call cost Redis: keys looked up, the most keys one command read, and the
/// longest command (µs).
struct Cost {
    lookups: u64,
    most_keys: u64,
    longest_us: u64,
}

fn cost_of_next_calls(server: &RedisServer) -> impl FnOnce() -> Cost {
    let client = redis::Client::open(server.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    for (setting, value) in [
        ("slowlog-log-slower-than", "0"),
        ("slowlog-max-len", "4096"),
    ] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(setting)
            .arg(value)
            .query(&mut con)
            .unwrap();
    }
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .unwrap();
    let _: () = redis::cmd("SLOWLOG").arg("RESET").query(&mut con).unwrap();
    move || {
        let stats: String = redis::cmd("INFO").arg("stats").query(&mut con).unwrap();
        let stat = |name: &str| -> u64 {
            stats
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map_or(0, |n| n.trim().parse().unwrap())
        };
        type Entry = (u64, u64, u64, Vec<String>, String, String);
        let log: Vec<Entry> = redis::cmd("SLOWLOG")
            .arg("GET")
            .arg(4096)
            .query(&mut con)
            .unwrap();
        let keys = |args: &[String]| -> u64 {
            // Redis logs 32 arguments at most, the last saying how many more there were.
            let more = args
                .last()
                .and_then(|a| a.strip_prefix("... ("))
                .and_then(|a| a.split(' ').next())
                .map_or(0, |n| n.parse::<u64>().unwrap() - 1);
            match args.first().map(|c| c.to_ascii_lowercase()).as_deref() {
                Some("pfcount") => args.len() as u64 - 1 + more,
                Some("evalsha" | "eval") => args[2].parse().unwrap(),
                _ => 0,
            }
        };
        let reads = log.iter().filter(|e| keys(&e.3) > 0);
        Cost {
            lookups: stat("keyspace_hits") + stat("keyspace_misses"),
            most_keys: log.iter().map(|e| keys(&e.3)).max().unwrap_or(0),
            longest_us: reads.map(|e| e.2).max().unwrap_or(0),
        }
    }
}

/// With a user in every minute of the 25 hours kept, every HyperLogLog dense (12 KiB: the costliest
/// to merge), a history request of 288 points reads at most one key per minute kept (one per hour
/// for hours), at most 14 per command, each command far under the store's 250 ms timeout; and Redis
/// answers what the memory store answers.
#[tokio::test]
async fn a_long_history_of_active_users_reads_few_keys_in_short_commands() {
    let Some(server) = RedisServer::start_with(&["--hll-sparse-max-bytes", "0"]) else {
        return;
    };
    let redis = crate::redis_storage::redis_storage(&server);
    let memory = Storage::default();
    let now = Utc::now().timestamp();
    let first = now.div_euclid(60) - HISTORY_RETENTION_MINUTES;
    for minute in first..=now.div_euclid(60) {
        for store in [&*redis, &memory] {
            store
                .record_event(&login(minute as u64 % 1_000), at(minute * 60))
                .await
                .unwrap();
        }
    }
    for minutes in [60, 1, 4, 7, 30, 58] {
        let interval = minutes * 60;
        let cost = cost_of_next_calls(&server);
        let points = redis
            .history(&Series::ActiveUsers, interval, 288, at(now))
            .await
            .unwrap();
        let cost = cost();
        let kept = HISTORY_RETENTION_MINUTES as u64 + 1;
        let bound = if minutes == 60 { kept / 60 + 2 } else { kept };
        assert!(
            cost.lookups <= bound,
            "every {minutes} min: {} keys read for {} points (at most {bound})",
            cost.lookups,
            points.len()
        );
        assert!(
            cost.most_keys <= MAX_BLOCKS_PER_INTERVAL as u64,
            "every {minutes} min: one command read {} keys",
            cost.most_keys
        );
        assert!(
            cost.longest_us < 50_000,
            "every {minutes} min: one command took {} µs",
            cost.longest_us
        );
        assert_eq!(
            points,
            memory
                .history(&Series::ActiveUsers, interval, 288, at(now))
                .await
                .unwrap(),
            "every {minutes} min"
        );
    }
    // One user a minute, a thousand users cycling: an hour counts 60 of them, give or take the
    // sketch's error (two of 60 ids share a register about one hour in nine: 59).
    let hours = redis
        .history(&Series::ActiveUsers, 3600, 3, at(now))
        .await
        .unwrap();
    assert!((57.0..=61.0).contains(&hours[1].value), "{hours:?}");
}

/// In Redis a block's sketch lives until its last minute is as old as the history kept, as the
/// memory store keeps it: from the block's end, not from its last write (an hour's block written
/// in its first minute went 59 minutes before the memory store dropped it).
#[tokio::test]
async fn a_blocks_sketch_expires_in_redis_when_the_memory_store_drops_it() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = crate::redis_storage::redis_storage(&server);
    // The first second of an hour.
    let now = Utc::now().timestamp().div_euclid(3600) * 3600;
    redis.record_event(&login(7), at(now)).await.unwrap();
    for grain in GRAINS {
        let start = (now / 60).div_euclid(grain) * grain;
        let ttl: i64 = server
            .command(&format!("TTL analytics:users:{grain}m:{start}"))
            .trim_start_matches(':')
            .parse()
            .unwrap();
        let expected = (start + grain + HISTORY_RETENTION_MINUTES) * 60 - now;
        assert!(
            (expected - 5..=expected).contains(&ttl),
            "{grain}-minute block: TTL {ttl} s, expected {expected} s"
        );
    }
}
