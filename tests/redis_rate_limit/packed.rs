//! Every limit of a key in the key's one value (#18): the layer's own limit alone keeps the bare
//! state a single-quota limiter has always written; any other limit's state makes the value packed
//! (`|<name>|<expires ms>|<state>` entries, see `entries.lua`), read and written by the single form
//! and the set form alike. Entries of limits outside a decision are carried while live and dropped
//! once expired; unreadable values and entries follow the repair rule.

use tower_rampart::backend::redis::RedisRateLimitStore;
use tower_rampart::backend::{FailurePolicy, RedisBackend};
use tower_rampart::key::{KeyExtractor, key_fn};
use tower_rampart::rate_limit::{Algorithm, Ask, Decision, Limit, Quota, RateLimitLayer};

use crate::common::redis::RedisServer;
use crate::support::{connect, decide, decide_ask, unique_prefix};

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Gcra, Algorithm::SlidingWindow];

/// A layer named "api" whose own limit is 10 per minute, with tiers "day" (100 per hour) and
/// "both" (the two limits at once).
fn layer(
    backend: RedisBackend,
    algorithm: Algorithm,
) -> RateLimitLayer<impl KeyExtractor<Key = u32>, RedisRateLimitStore<u32>> {
    let own = Limit::new("api", Quota::per_minute(10));
    let day = Limit::new("day", Quota::per_hour(100));
    RateLimitLayer::builder()
        .name("api")
        .quota(Quota::per_minute(10))
        .algorithm(algorithm)
        .tier("day", [day])
        .tier("both", [own, day])
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .expect("valid limits")
}

struct Rig<X: KeyExtractor<Key = u32>> {
    layer: RateLimitLayer<X, RedisRateLimitStore<u32>>,
    raw: redis::aio::MultiplexedConnection,
    prefix: String,
}

impl<X: KeyExtractor<Key = u32>> Rig<X> {
    async fn tier(
        &self,
        tier: &str,
        key: u32,
    ) -> Result<Decision, tower_rampart::backend::BackendError> {
        let set = self
            .layer
            .handle()
            .tier_set(tier)
            .expect("a tier of the layer");
        decide_ask(self.layer.store(), &key, &Ask::new(&set)).await
    }

    async fn peek(&self, tier: &str, key: u32) -> Decision {
        let set = self
            .layer
            .handle()
            .tier_set(tier)
            .expect("a tier of the layer");
        decide_ask(self.layer.store(), &key, &Ask::new(&set).peek())
            .await
            .expect("no backend error")
    }

    async fn get(&self, key: u32) -> Option<String> {
        redis::cmd("GET")
            .arg(self.layer.store().redis_key(&key))
            .query_async(&mut self.raw.clone())
            .await
            .unwrap()
    }

    async fn set(&self, key: u32, value: &str) {
        let _: () = redis::cmd("SET")
            .arg(self.layer.store().redis_key(&key))
            .arg(value)
            .query_async(&mut self.raw.clone())
            .await
            .unwrap();
    }

    async fn pttl(&self, key: u32) -> i64 {
        redis::cmd("PTTL")
            .arg(self.layer.store().redis_key(&key))
            .query_async(&mut self.raw.clone())
            .await
            .unwrap()
    }

    /// Redis's clock, in ms since the Unix epoch.
    async fn now_ms(&self) -> u64 {
        let (s, us): (u64, u64) = redis::cmd("TIME")
            .query_async(&mut self.raw.clone())
            .await
            .unwrap();
        s * 1_000 + us / 1_000
    }
}

async fn rig(
    server: &RedisServer,
    algorithm: Algorithm,
    what: &str,
    backend: impl FnOnce(RedisBackend) -> RedisBackend,
) -> Rig<impl KeyExtractor<Key = u32>> {
    let raw = server.connection().await;
    let prefix = unique_prefix(what);
    let backend = backend(connect(&server.url()).await.prefix(prefix.clone()));
    Rig {
        layer: layer(backend, algorithm),
        raw,
        prefix,
    }
}

/// A packed value's entries, as (name, expires, state).
fn entries(value: &str) -> Vec<(String, u64, String)> {
    assert!(value.starts_with('|'), "a packed value: {value:?}");
    let parts: Vec<&str> = value[1..].split('|').collect();
    assert_eq!(parts.len() % 3, 0, "{value:?}");
    parts
        .chunks(3)
        .map(|e| {
            (
                e[0].to_string(),
                e[1].parse().expect("an expiry"),
                e[2].to_string(),
            )
        })
        .collect()
}

/// A bare state of `algorithm`, as a single-quota limiter writes it.
fn is_bare_state(algorithm: Algorithm, value: &str) -> bool {
    match algorithm {
        Algorithm::Gcra => !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()),
        _ => {
            let parts: Vec<&str> = value.split(' ').collect();
            // Window index, previous and current counts, and the period they were counted under.
            parts.len() == 4 && parts.iter().all(|p| p.parse::<u64>().is_ok())
        }
    }
}

#[tokio::test]
async fn every_limit_of_a_key_is_in_its_one_value_and_the_own_limit_alone_stays_bare() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in ALGORITHMS {
        let r = rig(&server, algorithm, "packed", |b| b).await;
        let store = r.layer.store();
        // The single form writes the bare state.
        assert_eq!(decide(store, &1).await.unwrap().remaining(), 9);
        let bare = r.get(1).await.unwrap();
        assert!(is_bare_state(algorithm, &bare), "{algorithm:?}: {bare:?}");
        let bare_ttl = r.pttl(1).await;
        assert!(bare_ttl > 0);

        // Another limit's state packs the value: the own state is carried with its expiry.
        let now = r.now_ms().await;
        assert_eq!(r.tier("day", 1).await.unwrap().remaining(), 99);
        let packed = r.get(1).await.unwrap();
        let e = entries(&packed);
        assert_eq!(e.len(), 2, "{packed:?}");
        assert_eq!(
            (e[0].0.as_str(), e[0].2.as_str()),
            ("", bare.as_str()),
            "{packed:?}"
        );
        assert!(
            e[0].1 > now && e[0].1 <= now + bare_ttl as u64 + 1_000,
            "{packed:?}"
        );
        assert_eq!(e[1].0, "day");
        assert!(is_bare_state(algorithm, &e[1].2), "{packed:?}");
        let longest = e.iter().map(|e| e.1).max().unwrap();
        let ttl = r.pttl(1).await;
        assert!(ttl > 0 && ttl as u64 <= longest - now, "{ttl} {packed:?}");

        // The single form reads the own entry and keeps the other (a peek answers what the next
        // request would leave).
        assert_eq!(decide(store, &1).await.unwrap().remaining(), 8);
        assert_eq!(r.peek("day", 1).await.remaining(), 98);
        // The set form spends both, in the one value.
        let d = r.tier("both", 1).await.unwrap();
        assert!(d.is_allowed(), "{d:?}");
        assert_eq!(d.remaining(), 7, "the binding limit is the own one");
        assert_eq!(r.peek("day", 1).await.remaining(), 97);
        assert_eq!(decide(store, &1).await.unwrap().remaining(), 6);
        let e = entries(&r.get(1).await.unwrap());
        assert_eq!(
            e.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
            ["", "day"]
        );
        // One Redis key for the key, whatever the limits.
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
            .arg(format!("{}*", r.prefix))
            .query_async(&mut r.raw.clone())
            .await
            .unwrap();
        assert_eq!(keys, [store.redis_key(&1)]);

        // A peek and a refusal write nothing.
        let before = r.get(1).await;
        r.peek("both", 1).await;
        for _ in 0..6 {
            assert!(decide(store, &1).await.unwrap().is_allowed());
        }
        let after_spend = r.get(1).await;
        assert_ne!(before, after_spend);
        let refused = r.tier("both", 1).await.unwrap();
        assert!(!refused.is_allowed());
        assert_eq!(r.get(1).await, after_spend, "a refusal writes nothing");
    }
}

#[tokio::test]
async fn entries_outside_a_decision_are_carried_while_live_and_dropped_once_expired() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in ALGORITHMS {
        let r = rig(&server, algorithm, "carried", |b| b).await;
        let now = r.now_ms().await;
        let far = now + 3_600_000;
        // "gone" expired a second ago; "other" is a limit no longer in any set (live for an hour:
        // its state is carried as it is, unread); the own limit's entry lives 30 s.
        r.set(
            2,
            &format!("|gone|{}|5|other|{far}|7||{}|1", now - 1_000, now + 30_000),
        )
        .await;
        assert_eq!(r.tier("day", 2).await.unwrap().remaining(), 99);
        let value = r.get(2).await.unwrap();
        let e = entries(&value);
        let names: Vec<&str> = e.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(names, ["other", "", "day"], "{value:?}");
        assert_eq!((e[0].1, e[0].2.as_str()), (far, "7"));
        assert_eq!((e[1].1, e[1].2.as_str()), (now + 30_000, "1"));
        let longest = e.iter().map(|e| e.1).max().unwrap();
        let ttl = r.pttl(2).await;
        assert!(
            ttl > 3_500_000 && ttl as u64 <= longest - now,
            "the longest entry's: {ttl} {value:?}"
        );

        // Once only the own limit's entry is live, it is written bare again.
        r.set(2, &format!("|day|{}|5", now - 1)).await;
        assert_eq!(decide(r.layer.store(), &2).await.unwrap().remaining(), 9);
        let value = r.get(2).await.unwrap();
        assert!(is_bare_state(algorithm, &value), "{value:?}");
    }
}

/// Packed values written with a raw connection that cannot be read, as a whole or in one entry.
#[tokio::test]
async fn unreadable_packed_values_are_repaired_by_default() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in ALGORITHMS {
        let r = rig(&server, algorithm, "packed-repair", |b| {
            b.failure_policy(FailurePolicy::Closed)
        })
        .await;
        let now = r.now_ms().await;
        let live = now + 600_000;
        // As a whole: every entry goes, and the decision is a fresh key's.
        for (key, value) in [
            (10, "|day|x".to_string()),
            (11, format!("|day|{live}|1|day|{live}|2")),
            (12, format!("|da y|{live}|1")),
            (13, format!("|day|{live}|1|")),
            (14, format!("12|day|{live}|1")),
        ] {
            r.set(key, &value).await;
            let d = r.tier("both", key).await.unwrap();
            assert!(d.is_allowed() && d.is_counted(), "{value:?}: {d:?}");
            assert_eq!(d.remaining(), 9, "{value:?}: fresh");
            assert_eq!(
                r.peek("day", key).await.remaining(),
                98,
                "{value:?}: fresh, one spent"
            );
        }
        // One entry: that limit starts afresh, the others keep their state.
        for _ in 0..3 {
            assert!(r.tier("day", 20).await.unwrap().is_allowed());
        }
        let day = r.get(20).await.unwrap();
        let corrupt = format!("||{live}|hello{day}");
        for (key, single) in [(20, false), (21, true)] {
            r.set(key, &corrupt).await;
            let d = if single {
                decide(r.layer.store(), &key).await.unwrap()
            } else {
                r.tier("both", key).await.unwrap()
            };
            assert!(d.is_allowed() && d.is_counted(), "{d:?}");
            assert_eq!(d.remaining(), 9, "the own limit afresh");
            // Three spent before (four with "both"), and a peek answers what the next would leave.
            let left = if single { 96 } else { 95 };
            assert_eq!(r.peek("day", key).await.remaining(), left, "day kept");
            let value = r.get(key).await.unwrap();
            assert!(!value.contains("hello"), "{value:?}");
        }
        // A refusal does not write, but a repaired entry is deleted: "day" refuses a cost it could
        // never admit, and the corrupt own entry goes.
        let set = r.layer.handle().tier_set("both").unwrap();
        r.set(22, &corrupt).await;
        let d = decide_ask(r.layer.store(), &22, &Ask::new(&set).cost(1_000))
            .await
            .unwrap();
        assert!(!d.is_allowed());
        let value = r.get(22).await.unwrap();
        assert_eq!(
            value,
            day[..].to_string(),
            "only day's entry is left: {value:?}"
        );
    }
}

#[tokio::test]
async fn without_repair_unreadable_packed_values_are_errors_and_left_alone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in ALGORITHMS {
        let r = rig(&server, algorithm, "packed-corrupt", |b| {
            b.failure_policy(FailurePolicy::Closed)
                .repair_corrupt_data(false)
        })
        .await;
        let live = r.now_ms().await + 600_000;
        // A state each algorithm reads (long past).
        let ok = match algorithm {
            Algorithm::Gcra => "1",
            _ => "0 0 0",
        };
        for (key, value) in [
            (30, "|day|x".to_string()),
            (31, format!("|day|{live}|{ok}|day|{live}|{ok}")),
            (32, format!("||{live}|hello|day|{live}|{ok}")),
            (33, format!("||{live}|{ok}|day|{live}|hello")),
        ] {
            r.set(key, &value).await;
            let single = decide(r.layer.store(), &key).await;
            let both = r.tier("both", key).await;
            let day = r.tier("day", key).await;
            let own_corrupt = key != 33;
            let day_corrupt = key != 32;
            assert_eq!(single.is_err(), own_corrupt, "{value:?}: {single:?}");
            assert!(both.is_err(), "{value:?}: {both:?}");
            assert_eq!(day.is_err(), day_corrupt, "{value:?}: {day:?}");
            for e in [single.err(), both.err(), day.err()].into_iter().flatten() {
                assert!(e.is_corrupt_data(), "{value:?}: {e}");
                assert!(e.to_string().contains("cannot read"), "{e}");
            }
            if key < 32 {
                assert_eq!(
                    r.get(key).await.as_deref(),
                    Some(value.as_str()),
                    "left alone"
                );
            }
        }
    }
}

/// The leased store's script carves from the layer's own limit's entry of a packed value and keeps
/// the others; other sets go through the exact store, on the same value.
#[tokio::test]
async fn leases_carve_from_the_own_entry_of_a_packed_value() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut raw = server.connection().await;
    // Leases live at least twice the timeout (1 s by default).
    let backend = connect(&server.url())
        .await
        .timeout(std::time::Duration::from_millis(200))
        .prefix(unique_prefix("packed-lease"))
        .leased(tower_rampart::backend::redis::LeaseConfig::new());
    let layer = RateLimitLayer::builder()
        .name("api")
        .quota(Quota::per_minute(1000))
        .tier("day", [Limit::new("day", Quota::per_hour(100))])
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .expect("valid limits");
    let store = layer.store();
    let day = layer.handle().tier_set("day").unwrap();
    for _ in 0..3 {
        assert!(
            decide_ask(store, &5, &Ask::new(&day))
                .await
                .unwrap()
                .is_allowed()
        );
    }
    let name = store.redis_key(&5);
    let get = |mut raw: redis::aio::MultiplexedConnection| {
        let name = name.clone();
        async move {
            let v: String = redis::cmd("GET")
                .arg(&name)
                .query_async(&mut raw)
                .await
                .unwrap();
            v
        }
    };
    let before = get(raw.clone()).await;
    assert_eq!(entries(&before).len(), 1, "{before:?}");
    // The layer's own limit: leased, so the script carves a lease from its entry.
    assert!(decide(store, &5).await.unwrap().is_allowed());
    let after = get(raw.clone()).await;
    let e = entries(&after);
    let names: Vec<&str> = e.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(names, ["day", ""], "{after:?}");
    assert_eq!(
        format!("|{}|{}|{}", e[0].0, e[0].1, e[0].2),
        before,
        "day's entry kept as it was"
    );
    assert!(is_bare_state(Algorithm::Gcra, &e[1].2), "{after:?}");
    // And the day limit still counts what it spent.
    let peek = decide_ask(store, &5, &Ask::new(&day).peek()).await.unwrap();
    assert_eq!(peek.remaining(), 96);
    let _: () = redis::cmd("DEL")
        .arg(store.redis_key(&5))
        .query_async(&mut raw)
        .await
        .unwrap();
}
