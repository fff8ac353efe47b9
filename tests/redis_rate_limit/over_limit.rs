//! Keys known to be over their limit are refused locally until their retry time: hammering one
//! costs no Redis round trips (counted with `INFO commandstats`), and the refusals carry the same
//! decision Redis would give. The memory they use is bounded.

use std::time::{Duration, Instant};

use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

use crate::common::redis::RedisServer;
use crate::support::{connect, decide, unique_prefix};

#[tokio::test]
async fn hammering_a_refused_key_costs_no_round_trips() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_hour(3))
            .algorithm(algorithm)
            .key(key_fn(|k: &u32| Some(*k)))
            .backend(connect(&server.url()).await.prefix(unique_prefix("memo")))
            .build()
            .unwrap();
        let store = layer.store();
        for _ in 0..3 {
            assert!(decide(store, &7).await.unwrap().is_allowed());
        }
        let first = decide(store, &7).await.unwrap();
        assert!(!first.is_allowed());
        let calls = server.calls("evalsha");
        let mut last = first.retry_after();
        for _ in 0..10_000 {
            let d = decide(store, &7).await.unwrap();
            assert!(!d.is_allowed());
            assert_eq!(d.limit(), 3);
            assert_eq!(d.remaining(), 0);
            assert!(d.retry_after() <= last, "the retry time only comes closer");
            assert!(d.retry_after() > Duration::ZERO);
            last = d.retry_after();
        }
        assert_eq!(
            server.calls("evalsha"),
            calls,
            "{algorithm:?}: 10,000 refusals of a known key, no round trip"
        );
        // Another key still goes to Redis.
        assert!(decide(store, &8).await.unwrap().is_allowed());
        assert_eq!(server.calls("evalsha"), calls + 1);
    }
}

#[tokio::test]
async fn remembered_keys_are_bounded() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(1))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(
            connect(&server.url())
                .await
                .prefix(unique_prefix("memo-bound"))
                .local_max_keys(256),
        )
        .build()
        .unwrap();
    let store = layer.store();
    for key in 0..2_000u32 {
        assert!(decide(store, &key).await.unwrap().is_allowed());
        assert!(!decide(store, &key).await.unwrap().is_allowed());
    }
    assert!(
        store.over_limit_len() <= 256,
        "{} keys remembered",
        store.over_limit_len()
    );
    assert!(store.over_limit_len() > 0);
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap()
}

#[tokio::test]
async fn keys_expire_once_their_state_is_that_of_a_fresh_key() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url()).await.prefix(unique_prefix("expiry"));
    let pttl = |key: &[u8]| {
        let name = String::from_utf8(key.to_vec()).unwrap();
        server
            .command(&format!("PTTL {name}"))
            .trim_start_matches(':')
            .parse::<i64>()
            .unwrap()
    };
    // GCRA, 10 per minute: one request puts the arrival time 6 s ahead; the key lives that long.
    let gcra = RateLimitLayer::builder()
        .quota(Quota::per_minute(10))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend.clone())
        .build()
        .unwrap();
    let name = String::from_utf8(gcra.store().redis_key(&1)).unwrap();
    assert!(name.ends_with(":rl:gcra:10/60s:{default/1}"), "{name}");
    // The script sets 6,001 ms; PTTL reads that less the time since (at most `elapsed`).
    let started = Instant::now();
    assert!(decide(gcra.store(), &1).await.unwrap().is_allowed());
    let ttl = pttl(&gcra.store().redis_key(&1));
    let least = 6_000 - millis(started.elapsed());
    assert!(
        (least..=6_001).contains(&ttl),
        "GCRA key expires in {ttl} ms ({least} at least)"
    );
    // Sliding window, per minute: counts decay by the end of the next window (60 to 120 s).
    let window = RateLimitLayer::builder()
        .quota(Quota::per_minute(10))
        .algorithm(Algorithm::SlidingWindow)
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend.clone())
        .build()
        .unwrap();
    let name = String::from_utf8(window.store().redis_key(&1)).unwrap();
    assert!(name.ends_with(":rl:sw:10/60s:{default/1}"), "{name}");
    let started = Instant::now();
    assert!(decide(window.store(), &1).await.unwrap().is_allowed());
    let ttl = pttl(&window.store().redis_key(&1));
    let least = 60_000 - millis(started.elapsed());
    assert!(
        (least..=120_001).contains(&ttl),
        "window key expires in {ttl} ms ({least} at least)"
    );
    // A fast quota, same limiter name and key: a key of its own (the quota is part of it), gone
    // once idle (real time, on Redis's clock).
    let fast = RateLimitLayer::builder()
        .quota(Quota::per_second(20))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .unwrap();
    assert!(decide(fast.store(), &1).await.unwrap().is_allowed());
    let key = String::from_utf8(fast.store().redis_key(&1)).unwrap();
    assert_eq!(server.command(&format!("EXISTS {key}")), ":1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.command(&format!("EXISTS {key}")),
        ":0",
        "idle keys vanish"
    );
}
