//! Where a limiter's state lands on Redis Cluster: the limiter's name is inside the hash tag with
//! the key (`<prefix>:rl:<algorithm>:<quota>:{<name>/<key>}`), so differently named limiters'
//! keys spread over the slots (with the key alone, every global limiter of an app shared the one
//! slot of `{global}`), while every limit of one limiter's key stays in one key, and so one slot.

use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::RedisRateLimitStore;
use tower_rampart::key::{GlobalKey, key_fn};
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Limit, Quota, RateLimitLayer, RateLimitStore, StoreLimits,
};

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{connect, connect_cluster, decide, unique_prefix};

/// Redis's own rule: the hash tag is what lies between the first `{` and the first `}` after
/// it, when that is not empty; otherwise the whole key is hashed.
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

fn global(
    backend: &RedisBackend,
    name: &'static str,
    quota: Quota,
    algorithm: Algorithm,
) -> RateLimitLayer<GlobalKey, RedisRateLimitStore<()>> {
    RateLimitLayer::builder()
        .name(name)
        .quota(quota)
        .algorithm(algorithm)
        .key(GlobalKey)
        .backend(backend.clone())
        .build()
        .unwrap()
}

const NAMES: [&str; 4] = ["uploads", "search", "login", "default"];

/// Four global limiters of one app with the same quota, on a 3-master cluster: their keys are in
/// four different slots (`CLUSTER KEYSLOT`), each that of its `<name>/global` tag, and each
/// decides and counts there on its own.
#[tokio::test]
async fn differently_named_global_limiters_hash_to_different_slots() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let backend = connect_cluster(&cluster.urls())
        .await
        .prefix(unique_prefix("slots"));
    let slot = |key: &str| {
        let answer = cluster.nodes[0].command(&format!("CLUSTER KEYSLOT {key}"));
        answer
            .strip_prefix(':')
            .unwrap_or_else(|| panic!("CLUSTER KEYSLOT {key}: {answer}"))
            .parse::<u16>()
            .unwrap()
    };
    let mut keys = Vec::new();
    let mut slots = Vec::new();
    for name in NAMES {
        let layer = global(&backend, name, Quota::per_hour(100), Algorithm::Gcra);
        let key = String::from_utf8(layer.store().redis_key(&())).unwrap();
        for _ in 0..3 {
            assert!(decide(layer.store(), &()).await.unwrap().is_allowed());
        }
        slots.push(slot(&key));
        keys.push(key);
    }
    for (i, a) in slots.iter().enumerate() {
        for (j, b) in slots.iter().enumerate().skip(i + 1) {
            assert_ne!(
                a, b,
                "{} and {} share slot {a}: {slots:?}",
                keys[i], keys[j]
            );
        }
    }
    for (name, key) in NAMES.iter().zip(&keys) {
        assert_eq!(hash_tag(key), format!("{name}/global"), "{key}");
        assert_eq!(slot(key), slot(&format!("{name}/global")), "{key}");
    }
    // Each counted its own three requests, wherever its slot is served (a peek answers what the
    // next request would get: 96 left; per hour, nothing refills meanwhile).
    for name in NAMES {
        let layer = global(&backend, name, Quota::per_hour(100), Algorithm::Gcra);
        let ask = Ask::new(layer.store().limit_set()).peek();
        let d = match RateLimitStore::check(layer.store(), &(), &ask) {
            Check::Ready(r) => r,
            Check::Pending(f) => f.await,
        }
        .unwrap();
        assert_eq!(d.remaining(), 96, "{name}");
    }
}

/// On a single node, read back what the limiters wrote (`KEYS`): one key per limiter and
/// algorithm, the global limiters' tags apart; every limit of one limiter's key (three tiers, two
/// limits) in one key whose tag is `<name>/<key>`; and names holding `:` never meet a key
/// holding it.
#[tokio::test]
async fn limiters_write_their_name_in_the_hash_tag_and_a_keys_limits_in_one_key() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("tags");
    let backend = connect(&server.url()).await.prefix(prefix.clone());
    let keys = |server: &RedisServer| {
        let mut keys: Vec<String> = server
            .command(&format!("KEYS {prefix}:*"))
            .lines()
            .filter(|l| !l.starts_with('*') && !l.starts_with('$'))
            .map(str::to_owned)
            .collect();
        keys.sort();
        keys
    };

    // Two global limiters, both algorithms.
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        for name in ["uploads", "search"] {
            let layer = global(&backend, name, Quota::per_minute(100), algorithm);
            assert!(decide(layer.store(), &()).await.unwrap().is_allowed());
        }
    }
    let written = keys(&server);
    let tags: Vec<&str> = written.iter().map(|k| hash_tag(k)).collect();
    assert_eq!(written.len(), 4, "{written:?}");
    let mut distinct = tags.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct, ["search/global", "uploads/global"], "{written:?}");
    assert!(
        written.contains(&format!("{prefix}:rl:gcra:100/60s:{{uploads/global}}")),
        "{written:?}"
    );
    assert!(
        written.contains(&format!("{prefix}:rl:sw:100/60s:{{search/global}}")),
        "{written:?}"
    );

    // One limiter, key 7, under three tiers of two limits: one key.
    let (a, b) = (
        Limit::new("a", Quota::per_minute(10)),
        Limit::new("b", Quota::per_hour(100)),
    );
    let two = RateLimitLayer::builder()
        .name("two")
        .quota(Quota::per_second(1000))
        .tier("ab", [a, b])
        .tier("a", [a])
        .tier("b", [b])
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend.clone())
        .build()
        .unwrap();
    for tier in ["ab", "a", "b"] {
        let set = two.handle().tier_set(tier).unwrap();
        let ask = Ask::new(&set);
        let d = match RateLimitStore::check(two.store(), &7, &ask) {
            Check::Ready(r) => r,
            Check::Pending(f) => f.await,
        }
        .unwrap();
        assert!(d.is_allowed(), "{tier}");
    }
    assert!(decide(two.store(), &7).await.unwrap().is_allowed());
    let mine: Vec<String> = keys(&server)
        .into_iter()
        .filter(|k| hash_tag(k).starts_with("two/"))
        .collect();
    assert_eq!(
        mine,
        [format!("{prefix}:rl:gcra:1000/1s:{{two/7}}")],
        "every limit of key 7 in one key"
    );
    assert_eq!(
        String::from_utf8(two.store().redis_key(&7)).unwrap(),
        mine[0]
    );

    // Names may hold `:`, keys may hold `:` and `/`: limiter `a:b` with key `c` and limiter `a`
    // with key `b:c` (or `b/c`) count apart.
    let named = |name: &'static str| {
        RateLimitLayer::builder()
            .name(name)
            .quota(Quota::per_minute(1))
            .key(key_fn(|k: &String| Some(k.clone())))
            .backend(backend.clone())
            .build()
            .unwrap()
    };
    assert!(
        RateLimitLayer::builder()
            .name("a/b")
            .quota(Quota::per_minute(1))
            .key(key_fn(|k: &String| Some(k.clone())))
            .backend(backend.clone())
            .build()
            .is_err(),
        "a name cannot hold the `/` that ends it in the hash tag"
    );
    let (ab, a) = (named("a:b"), named("a"));
    let pairs = [(&ab, "c"), (&a, "b:c"), (&a, "b/c"), (&ab, "/c")];
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for (layer, key) in pairs {
        let redis_key = layer.store().redis_key(&key.to_string());
        assert!(!seen.contains(&redis_key), "{key:?} shares a key");
        seen.push(redis_key);
        assert!(
            decide(layer.store(), &key.to_string())
                .await
                .unwrap()
                .is_allowed(),
            "{key:?}: its own limit of 1"
        );
    }
}
