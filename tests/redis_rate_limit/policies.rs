//! Issue #18 on Redis: several limits in one decision, costs, peeks and shadow limits decided by
//! one script call exactly as in memory (the shared policy cases, and memory against Redis on
//! random questions), on a single node and on a 3-master cluster; concurrent clients on two
//! replicas never over-admit any limit and never spend partially; the over-limit memory with
//! costs; and live changes carried between replicas through Redis (within the poll interval plus
//! the timeout, while Redis is down, from data it cannot read, to a replica started later).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tower_rampart::backend::redis::RedisRateLimitStore;
use tower_rampart::backend::{MemoryBackend, RedisBackend};
use tower_rampart::clock::ManualClock;
use tower_rampart::key::{KeyExtractor, key_fn};
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Decision, Limit, LimitSet, Quota, RateLimitHandle, RateLimitLayer,
    RateLimitStore,
};

use crate::common::redis::{RedisCluster, RedisServer};
use crate::policy_cases::{self as cases, Subject};
use crate::support::{LagProbe, connect, connect_cluster, unique_prefix};

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Gcra, Algorithm::SlidingWindow];
/// A Unix time of 2026 in nanoseconds (the scripts' split arithmetic), and one near zero.
const STARTS: [u64; 2] = [5_000_000_000, 1_771_234_567_891_234_567];

/// A small deterministic generator (xorshift64*), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Steps of (advance in ms, cost) as the memory suite's property tests draw them: 0-400 ms
/// apart, costs 0-6 (some above the short limit's burst of 4).
fn steps(seed: u64, n: usize) -> Vec<(u64, u32)> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let r = rng.next();
            (r % 400, ((r >> 32) % 7) as u32)
        })
        .collect()
}

fn clock_at(t: u64) -> ManualClock {
    let clock = ManualClock::new();
    clock.set(t);
    clock
}

/// Every shared policy case on the backend `make` gives for a clock.
async fn policy_cases(make: impl Fn(&ManualClock) -> RedisBackend) {
    for algorithm in ALGORITHMS {
        for (i, start) in STARTS.into_iter().enumerate() {
            let seed = 0x9e37_79b9_7f4a_7c15 ^ (i as u64) ^ ((algorithm as u64) << 8);
            let clock = clock_at(start);
            let s = cases::subject(make(&clock), algorithm);
            cases::multi_equals_strictest(&s, &clock, &steps(seed, 60)).await;
            let clock = clock_at(start);
            let s = cases::subject(make(&clock), algorithm);
            cases::shadow_limit_observes(&s, &clock, &steps(seed + 1, 60)).await;
            let clock = clock_at(start);
            let s = cases::subject(make(&clock), algorithm);
            cases::costs(&s, algorithm).await;
            cases::peeks_spend_nothing(&s).await;
        }
        let clock = clock_at(STARTS[1]);
        let s = cases::subject(make(&clock), Algorithm::Gcra);
        cases::quota_change_keeps_state(&s, &clock).await;
    }
    let clock = clock_at(STARTS[1]);
    let s = cases::subject(make(&clock), Algorithm::SlidingWindow);
    cases::window_period_change_keeps_counts(&s, &clock).await;
}

/// Random questions (sets {a, b}, {a, b (shadow)}, {a}, {b} and the layer's default; costs 0-6;
/// one in five a peek) on three keys, decided by memory and by `redis` on one clock: every
/// decision equal, binding limit, shadow refusals and figures included.
async fn differential(make: impl Fn(&ManualClock) -> RedisBackend) {
    for algorithm in ALGORITHMS {
        for (i, start) in STARTS.into_iter().enumerate() {
            let clock = clock_at(start);
            let memory = cases::subject(MemoryBackend::new().clock(clock.clone()), algorithm);
            let redis = cases::subject(make(&clock), algorithm);
            let default = redis.handle.default_set();
            let sets = |s: &Subject| {
                [
                    Arc::clone(&s.ab),
                    Arc::clone(&s.ab_shadow),
                    Arc::clone(&s.a),
                    Arc::clone(&s.b),
                    s.handle.default_set(),
                ]
            };
            let (mine, theirs) = (sets(&memory), sets(&redis));
            let mut rng = Rng(0x2545_f491 + i as u64 + ((algorithm as u64) << 16));
            let (mut admitted, mut refused) = (0, 0);
            for step in 0..200 {
                let r = rng.next();
                clock.advance(Duration::from_millis(r % 300));
                let key = ((r >> 12) % 3) as u8;
                let which = ((r >> 16) % 5) as usize;
                let cost = ((r >> 24) % 7) as u32;
                let peek = (r >> 32).is_multiple_of(5);
                let ask = |set| {
                    let a = Ask::new(set).cost(cost);
                    if peek { a.peek() } else { a }
                };
                let expected = (memory.check)(key, &ask(&mine[which])).await;
                let got = (redis.check)(key, &ask(&theirs[which])).await;
                assert_eq!(
                    got, expected,
                    "{algorithm:?} from {start}, step {step}: key {key}, set {which}, cost {cost}, \
                     peek {peek}"
                );
                if expected.is_allowed() {
                    admitted += 1;
                } else {
                    refused += 1;
                }
            }
            assert!(admitted > 20 && refused > 20, "{admitted} / {refused}");
            assert_eq!(default.limits().len(), 1);
        }
    }
}

#[tokio::test]
async fn the_policy_cases_and_memory_agree_on_a_single_node() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url()).await;
    let make = |clock: &ManualClock| {
        backend
            .clone()
            .prefix(unique_prefix("cases"))
            .clock(clock.clone())
    };
    policy_cases(make).await;
    differential(make).await;
}

#[tokio::test]
async fn the_policy_cases_and_memory_agree_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let backend = connect_cluster(&cluster.urls()).await;
    let make = |clock: &ManualClock| {
        backend
            .clone()
            .prefix(unique_prefix("cases"))
            .clock(clock.clone())
    };
    policy_cases(make).await;
    differential(make).await;
}

/// A layer on `backend` with limits a (`qa`) and b (`qb`) in tiers, keyed by `u32`.
fn two_limits(
    backend: RedisBackend,
    algorithm: Algorithm,
    qa: Quota,
    qb: Quota,
) -> RateLimitLayer<impl KeyExtractor<Key = u32>, RedisRateLimitStore<u32>> {
    let (a, b) = (Limit::new("a", qa), Limit::new("b", qb));
    RateLimitLayer::builder()
        .name("two")
        .quota(Quota::per_second(1000))
        .algorithm(algorithm)
        .tier("ab", [a, b])
        .tier("a", [a])
        .tier("b", [b])
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .expect("valid limits")
}

async fn decide<St: RateLimitStore<u32>>(store: &St, key: u32, ask: &Ask<'_>) -> Decision {
    match store.check(&key, ask) {
        Check::Ready(r) => r,
        Check::Pending(f) => f.await,
    }
    .expect("no backend error")
}

/// 16 clients on two replicas (two backends, two connections) ask key 7 at once: half the set
/// {a, b} at costs 1-3, a quarter {a} alone, a quarter {b} alone. Per hour, so nothing accrues
/// while they run: the units admitted under each limit are at most its quota, and exactly what
/// its state in Redis says was spent (a set never spent one limit without the other).
async fn concurrent(replicas: [RedisBackend; 2]) {
    for algorithm in ALGORITHMS {
        let prefix = unique_prefix("concurrent");
        let (qa, qb) = (Quota::per_hour(40), Quota::per_hour(25));
        let layers: Vec<_> = replicas
            .iter()
            .map(|b| two_limits(b.clone().prefix(&prefix), algorithm, qa, qb))
            .collect();
        let spent_a = Arc::new(AtomicU32::new(0));
        let spent_b = Arc::new(AtomicU32::new(0));
        let tasks: Vec<_> = (0..16u32)
            .map(|client| {
                let layer = layers[client as usize % 2].clone();
                let (spent_a, spent_b) = (Arc::clone(&spent_a), Arc::clone(&spent_b));
                tokio::spawn(async move {
                    let handle = layer.handle();
                    let which = match client % 4 {
                        0 | 1 => "ab",
                        2 => "a",
                        _ => "b",
                    };
                    let set = handle.tier_set(which).unwrap();
                    for i in 0..12u32 {
                        let cost = 1 + (client + i) % 3;
                        let d = decide(layer.store(), 7, &Ask::new(&set).cost(cost)).await;
                        if d.is_allowed() {
                            if which.contains('a') {
                                spent_a.fetch_add(cost, Ordering::SeqCst);
                            }
                            if which.contains('b') {
                                spent_b.fetch_add(cost, Ordering::SeqCst);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let (a, b) = (
            spent_a.load(Ordering::SeqCst),
            spent_b.load(Ordering::SeqCst),
        );
        assert!(
            a <= 40 && b <= 25,
            "{algorithm:?}: a {a} of 40, b {b} of 25"
        );
        assert!(
            a >= 30 && b >= 20,
            "{algorithm:?}: the quotas were used: a {a}, b {b}"
        );
        let handle = layers[0].handle();
        for (tier, spent, quota) in [("a", a, 40), ("b", b, 25)] {
            let set = handle.tier_set(tier).unwrap();
            let left = decide(layers[1].store(), 7, &Ask::new(&set).cost(0).peek()).await;
            assert_eq!(
                left.remaining(),
                quota - spent,
                "{algorithm:?}: limit {tier}'s state holds exactly the units admitted under it"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_two_replicas_never_over_admit_a_limit_on_a_single_node() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    concurrent([connect(&server.url()).await, connect(&server.url()).await]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_two_replicas_never_over_admit_a_limit_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let urls = cluster.urls();
    concurrent([connect_cluster(&urls).await, connect_cluster(&urls).await]).await;
}

/// A key's limits live in one Redis key, the one a single-quota limiter has (so one Cluster slot,
/// by its hash tag of the limiter's name and the key), and a limiter's live changes are two keys
/// of one slot of their own.
#[tokio::test]
async fn a_keys_limits_share_one_key_and_the_changes_have_one_slot_of_their_own() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let layer = two_limits(
        connect_cluster(&cluster.urls()).await.prefix("tags"),
        Algorithm::Gcra,
        Quota::per_minute(10),
        Quota::per_hour(100),
    );
    let store = layer.store();
    assert_eq!(store.redis_key(&42), b"tags:rl:gcra:1000/1s:{two/42}");
    let [policies, changes] = store.policy_keys();
    assert_eq!(policies, b"{tags:rl:two}:policies");
    assert_eq!(changes, b"{tags:rl:two}:changes");
    let slot = |key: &[u8]| {
        cluster.nodes[0].command(&format!(
            "CLUSTER KEYSLOT {}",
            String::from_utf8(key.to_vec()).unwrap()
        ))
    };
    let tag = slot(b"two/42");
    assert!(tag.starts_with(':'), "{tag}");
    assert_eq!(slot(&store.redis_key(&42)), tag);
    assert_eq!(slot(&policies), slot(b"tags:rl:two"));
    assert_eq!(slot(&changes), slot(b"tags:rl:two"));
    // And one script call decides them all there.
    let set = layer.handle().tier_set("ab").unwrap();
    assert!(
        decide(store, 42, &Ask::new(&set).cost(2))
            .await
            .is_allowed()
    );
    let a = decide(
        store,
        42,
        &Ask::new(&layer.handle().tier_set("a").unwrap()).peek(),
    )
    .await;
    assert_eq!(a.remaining(), 7);
}

/// The over-limit memory answers only the question Redis answered: the same limits at the same
/// cost. A refusal of 3 units is replayed without a round trip for 3 units, while 1 unit goes to
/// Redis (and is admitted); peeks and sets with a shadow limit always go to Redis.
#[tokio::test]
async fn the_over_limit_memory_is_per_cost_and_per_set() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in ALGORITHMS {
        let layer = two_limits(
            connect(&server.url())
                .await
                .prefix(unique_prefix("memo-cost")),
            algorithm,
            Quota::per_hour(5),
            Quota::per_hour(100),
        );
        let handle = layer.handle();
        let store = layer.store();
        let a = handle.tier_set("a").unwrap();
        let ab = handle.tier_set("ab").unwrap();
        assert!(decide(store, 1, &Ask::new(&a).cost(3)).await.is_allowed());
        let refused = decide(store, 1, &Ask::new(&a).cost(3)).await;
        assert!(!refused.is_allowed() && refused.retry_after() > Duration::ZERO);
        let calls = server.calls("evalsha");
        for _ in 0..100 {
            let d = decide(store, 1, &Ask::new(&a).cost(3)).await;
            assert!(!d.is_allowed());
            assert_eq!(d.limit(), 5);
        }
        assert_eq!(
            server.calls("evalsha"),
            calls,
            "{algorithm:?}: 3 units, known refused"
        );
        // Other questions go to Redis.
        let peek = decide(store, 1, &Ask::new(&a).cost(3).peek()).await;
        assert!(!peek.is_allowed());
        assert_eq!(server.calls("evalsha"), calls + 1, "{algorithm:?}: a peek");
        let other = decide(store, 1, &Ask::new(&ab).cost(3)).await;
        assert!(!other.is_allowed());
        assert_eq!(
            server.calls("evalsha"),
            calls + 2,
            "{algorithm:?}: other limits"
        );
        let one = decide(store, 1, &Ask::new(&a)).await;
        assert!(
            one.is_allowed(),
            "{algorithm:?}: 1 unit still fits: {one:?}"
        );
        assert_eq!(
            server.calls("evalsha"),
            calls + 3,
            "{algorithm:?}: another cost"
        );
    }
}

/// A layer as an application replica builds it: tiers "free" and "pro", keyed by `u32`, every
/// key its own tier (even keys "pro"), polling for changes every 50 ms.
fn replica(
    backend: RedisBackend,
) -> RateLimitLayer<impl KeyExtractor<Key = u32>, RedisRateLimitStore<u32>> {
    RateLimitLayer::builder()
        .name("api")
        .quota(Quota::per_minute(5))
        .tier("free", [Limit::new("minute", Quota::per_minute(10))])
        .tier("pro", [Limit::new("minute", Quota::per_minute(100))])
        .key(key_fn(|k: &u32| Some(*k)))
        .tier_of(|k: &u32| Some(if k.is_multiple_of(2) { "pro" } else { "free" }))
        .backend(backend.policy_poll_interval(Duration::from_millis(50)))
        .build()
        .expect("valid limits")
}

const POLL: Duration = Duration::from_millis(50);
/// The bound on a change reaching another replica is the poll interval plus the time the poll
/// takes (at most the backend's timeout: 5 s for the test backends, but a loopback server answers
/// in well under 1 s): the interval plus 1 s, plus what the machine lags.
const BOUND: Duration = Duration::from_millis(1_050);

/// Polls `f` every 10 ms until it holds or `within` has passed; returns how long it took.
async fn until(within: Duration, what: &str, f: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    for _ in 0..100_000 {
        if f() {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    unreachable!("bounded by time")
}

fn tier_quota(h: &RateLimitHandle<u32>, tier: &str) -> u32 {
    h.tier_set(tier).unwrap().limits()[0].quota().limit()
}

/// A change through one replica's handle reaches the other within the poll interval plus the
/// timeout: a tier's limits and the default at once; a key's own limits from its first request
/// after the poll. A replica started later sees every change made before it.
async fn propagation(make: impl Fn() -> RedisBackend) {
    let lag = LagProbe::start();
    let prefix = unique_prefix("live");
    let one = replica(make().prefix(&prefix));
    let two = replica(make().prefix(&prefix));
    let (h1, h2) = (one.handle(), two.handle());

    h1.set_tier("pro", [Limit::new("minute", Quota::per_minute(1000))])
        .unwrap();
    assert_eq!(
        tier_quota(&h1, "pro"),
        1000,
        "at once on the replica that made it"
    );
    let took = until(
        lag.allowing_for(BOUND),
        "the tier change on replica two",
        || tier_quota(&h2, "pro") == 1000,
    )
    .await;
    eprintln!("tier change seen by the other replica after {took:?}");

    h2.set_default([Limit::new("api", Quota::per_minute(7))])
        .unwrap();
    until(
        lag.allowing_for(BOUND),
        "the default change on replica one",
        || h1.default_limits()[0].quota().limit() == 7,
    )
    .await;

    // A key's own limits: applied at that key's first request after the poll (decided as before),
    // every request after it decided with them.
    h1.set_key(&3, [Limit::new("vip", Quota::per_minute(2))])
        .unwrap();
    tokio::time::sleep(lag.allowing_for(BOUND)).await;
    let set = h2.resolved(&3);
    decide(two.store(), 3, &Ask::new(&set)).await;
    assert_eq!(
        h2.limits_of(&3)[0].name(),
        "vip",
        "applied at the key's request"
    );
    // The vip limit is a state of its own, fresh: 2 per minute.
    let set = h2.resolved(&3);
    assert!(decide(two.store(), 3, &Ask::new(&set)).await.is_allowed());
    assert!(decide(two.store(), 3, &Ask::new(&set)).await.is_allowed());
    assert!(!decide(two.store(), 3, &Ask::new(&set)).await.is_allowed());
    h1.clear_key(&3);
    tokio::time::sleep(lag.allowing_for(BOUND)).await;
    decide(two.store(), 3, &Ask::new(&h2.resolved(&3))).await;
    assert_eq!(
        h2.limits_of(&3)[0].name(),
        "minute",
        "cleared: its tier again"
    );
    // A key given its own limits through replica two's handle, cleared through replica one's:
    // cleared on two as well (a clearing is kept for keys whose limits a replica holds).
    h2.set_key(&5, [Limit::new("vip", Quota::per_minute(2))])
        .unwrap();
    tokio::time::sleep(lag.allowing_for(BOUND)).await;
    h1.clear_key(&5);
    tokio::time::sleep(lag.allowing_for(BOUND)).await;
    decide(two.store(), 5, &Ask::new(&h2.resolved(&5))).await;
    assert_eq!(
        h2.limits_of(&5)[0].name(),
        "minute",
        "cleared on the replica that set it"
    );
    decide(one.store(), 5, &Ask::new(&h1.resolved(&5))).await;
    assert_eq!(
        h1.limits_of(&5)[0].name(),
        "minute",
        "the setting received before the clearing made here is not applied after it"
    );

    // A replica started now: every change made before it.
    let three = replica(make().prefix(&prefix));
    let h3 = three.handle();
    until(
        lag.allowing_for(BOUND),
        "the changes on a new replica",
        || tier_quota(&h3, "pro") == 1000 && h3.default_limits()[0].quota().limit() == 7,
    )
    .await;
    assert_eq!(tier_quota(&h3, "free"), 10, "unchanged tiers as built");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_replica_within_the_poll_interval_on_a_single_node() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url()).await;
    propagation(|| backend.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_reaches_every_replica_within_the_poll_interval_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let backend = connect_cluster(&cluster.urls()).await;
    propagation(|| backend.clone()).await;
}

/// Redis down while a change is made: it applies at once where it was made, waits there, and
/// reaches the other replica within the bound once Redis is back; the last change of a field
/// wins. Meanwhile both replicas keep the limits they have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_redis_is_down_reaches_the_others_when_it_returns() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let lag = LagProbe::start();
    let prefix = unique_prefix("down");
    let make = || async {
        RedisBackend::connect(&server.url())
            .await
            .unwrap()
            .timeout(Duration::from_millis(200))
            .prefix(&prefix)
    };
    let one = replica(make().await);
    let two = replica(make().await);
    let (h1, h2) = (one.handle(), two.handle());
    // Both replicas have polled once (an empty log).
    tokio::time::sleep(POLL * 4).await;

    server.kill();
    h1.set_tier("pro", [Limit::new("minute", Quota::per_minute(500))])
        .unwrap();
    h1.set_tier("pro", [Limit::new("minute", Quota::per_minute(600))])
        .unwrap();
    assert_eq!(tier_quota(&h1, "pro"), 600);
    tokio::time::sleep(POLL * 6).await;
    assert_eq!(tier_quota(&h2, "pro"), 100, "nothing reached replica two");
    assert_eq!(tier_quota(&h1, "pro"), 600, "replica one keeps its change");

    server.restart();
    let back = Instant::now();
    // The outbox is written at the first round that reaches Redis, then polled by the other:
    // two intervals and two timeouts, plus the reconnect.
    let took = until(
        lag.allowing_for(Duration::from_secs(5)),
        "the change made while redis was down",
        || tier_quota(&h2, "pro") == 600,
    )
    .await;
    eprintln!("seen {took:?} after redis came back ({:?})", back.elapsed());
    assert_eq!(tier_quota(&h1, "pro"), 600);
}

/// A live change sent on a connection that stalls, and delivered to Redis only after the
/// connection was replaced and a newer change went through on the new one, does not apply: it is
/// fenced by its deadline on Redis's clock. It used to run late, under a newer version, and every
/// replica took the older change back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_delivered_late_on_a_stalled_connection_does_not_revert_a_newer_one() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lag = LagProbe::start();
    let proxy = crate::common::fault_proxy::FaultProxy::start(server.addr()).await;
    let prefix = unique_prefix("late");
    let backend = RedisBackend::connect(&proxy.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(100))
        .prefix(&prefix);
    let one = replica(backend);
    let h = one.handle();
    let policies = format!("{{{prefix}:rl:api}}:policies");
    let stored = || server.command(&format!("HGET {policies} t:pro"));
    // A decision through Redis, so the backend knows Redis's clock (the fence needs it).
    decide(one.store(), 2, &Ask::new(&h.resolved(&2))).await;

    proxy.hold_open();
    h.set_tier("pro", [Limit::new("minute", Quota::per_minute(500))])
        .unwrap();
    // The change goes out on the held connection (and times out, and is tried again there);
    // decisions time out too, until the connection is replaced.
    let stalled = Instant::now();
    while proxy.accepted() < 2 {
        assert!(
            stalled.elapsed() < lag.allowing_for(Duration::from_secs(10)),
            "the held connection was not replaced"
        );
        decide(one.store(), 2, &Ask::new(&h.resolved(&2))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    h.set_tier("pro", [Limit::new("minute", Quota::per_minute(600))])
        .unwrap();
    until(
        lag.allowing_for(Duration::from_secs(5)),
        "the newer change in redis",
        || stored().contains(" 600 "),
    )
    .await;
    // The path heals: what was held reaches Redis now, long after its deadline, and is refused
    // by it (Redis counts the error replies it sends by their first word).
    let late = || server.errors("RAMPARTLATE");
    let before = late();
    proxy.forward();
    until(
        lag.allowing_for(Duration::from_secs(5)),
        "the held calls refused late",
        || late() > before,
    )
    .await;
    tokio::time::sleep(POLL * 6).await;
    assert!(
        stored().contains(" 600 "),
        "the late change applied: {}",
        stored()
    );
    assert_eq!(tier_quota(&h, "pro"), 600);
}

/// Data in the policies hash this release cannot read (not limits, limits that cannot work, a
/// field it does not write, a newer format) is skipped, logged and counted; the limits in force
/// stay, and later good changes apply.
#[test]
fn policy_data_it_cannot_read_is_skipped_and_the_limits_in_force_stay() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    #[cfg(feature = "metrics")]
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    #[cfg(feature = "metrics")]
    let snapshotter = recorder.snapshotter();
    let run = || {
        // One thread: the sync task runs where the recorder is installed.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let lag = LagProbe::start();
            let prefix = unique_prefix("bad-policy");
            let one = replica(connect(&server.url()).await.prefix(&prefix));
            let h1 = one.handle();
            let [policies, changes] = one.store().policy_keys();
            let (policies, changes) = (
                String::from_utf8(policies).unwrap(),
                String::from_utf8(changes).unwrap(),
            );
            let mut v = 0;
            let mut write = |field: &str, value: &str| {
                v += 1;
                server.command(&format!("HSET {policies} {field} \"{value}\" v {v}"));
                server.command(&format!("ZADD {changes} {v} {field}"));
            };
            write("t:pro", "hello");
            write("t:free", "1:minute 0 60000000000 - 0"); // a limit of 0 cannot work
            write("x:what", "1:minute 10 60000000000 - 0");
            write("d", "2:api 10 60000000000 - 0"); // a newer format
            tokio::time::sleep(lag.allowing_for(BOUND)).await;
            assert_eq!(tier_quota(&h1, "pro"), 100);
            assert_eq!(tier_quota(&h1, "free"), 10);
            assert_eq!(h1.default_limits()[0].quota().limit(), 5);
            // Requests are still decided, with the limits in force.
            let set = h1.resolved(&2);
            assert_eq!(decide(one.store(), 2, &Ask::new(&set)).await.limit(), 100);
            // A good change after the bad ones applies.
            write("t:pro", "1:minute 250 60000000000 - 0");
            until(lag.allowing_for(BOUND), "the good change", || {
                tier_quota(&h1, "pro") == 250
            })
            .await;
        });
    };
    #[cfg(feature = "metrics")]
    metrics::with_local_recorder(&recorder, run);
    #[cfg(not(feature = "metrics"))]
    run();
    #[cfg(feature = "metrics")]
    {
        let errors: u64 = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(key, ..)| key.key().name() == "rampart_rate_limit_policy_errors_total")
            .map(|(.., value)| match value {
                metrics_util::debugging::DebugValue::Counter(n) => n,
                _ => 0,
            })
            .sum();
        assert_eq!(errors, 4, "each change it could not apply, counted once");
    }
}

/// A set the scripts could never decide exactly (a GCRA burst spanning more than 52 days) given
/// at run time is not sent to Redis: the failure policy decides it, as for any decision Redis
/// cannot make.
#[tokio::test]
async fn a_set_beyond_the_scripts_range_is_left_to_the_failure_policy() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let layer = replica(
        connect(&server.url())
            .await
            .prefix(unique_prefix("range"))
            .failure_policy(tower_rampart::backend::FailurePolicy::Closed),
    );
    let h = layer.handle();
    let huge = Limit::new(
        "year",
        Quota::with_period(10, Duration::from_secs(366 * 86_400)),
    );
    h.set_key(&9, [huge]).unwrap();
    let set: Arc<LimitSet> = h.resolved(&9);
    let err = match layer.store().check(&9, &Ask::new(&set)) {
        Check::Ready(r) => r.unwrap_err(),
        Check::Pending(f) => f.await.unwrap_err(),
    };
    assert!(err.to_string().contains("52 days"), "{err}");
}

/// Redis gone: the failure policy gets the same question. `Local` decides the set, the cost and the
/// peek in memory, all or nothing, with the binding limit's figures.
#[tokio::test]
async fn with_redis_gone_the_local_policy_decides_the_same_set_cost_and_peek() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(200))
        .prefix(unique_prefix("local"))
        .failure_policy(tower_rampart::backend::FailurePolicy::Local);
    let layer = two_limits(
        backend,
        Algorithm::Gcra,
        Quota::per_hour(5),
        Quota::per_hour(3),
    );
    let h = layer.handle();
    let (ab, a) = (h.tier_set("ab").unwrap(), h.tier_set("a").unwrap());
    server.kill();
    let store = layer.store();
    let d = decide(store, 1, &Ask::new(&ab).cost(2)).await;
    assert!(d.is_allowed());
    assert_eq!((d.policy_index(), d.remaining()), (1, 1), "b binds: {d:?}");
    let peek = decide(store, 1, &Ask::new(&ab).cost(2).peek()).await;
    assert!(!peek.is_allowed() && peek.policy_index() == 1, "{peek:?}");
    let d = decide(store, 1, &Ask::new(&ab).cost(2)).await;
    assert!(!d.is_allowed(), "{d:?}");
    // Nothing spent by the refusal: a has 3 of its 5 left, so one more unit would leave 2.
    assert_eq!(decide(store, 1, &Ask::new(&a).peek()).await.remaining(), 2);
}

/// A replica whose policy task was dropped with the runtime it ran on (an app with several
/// runtimes, or one rebuilt) starts it again on the next request made on another: changes keep
/// reaching it. It stayed marked as started before, and the replica never synced again.
#[test]
fn the_policy_task_starts_again_after_its_runtime_is_gone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let prefix = unique_prefix("runtimes");
    let first = runtime();
    let one = first.block_on(async {
        let one = replica(connect(&server.url()).await.prefix(&prefix));
        let set = one.handle().resolved(&2);
        decide(one.store(), 2, &Ask::new(&set)).await;
        tokio::time::sleep(POLL * 2).await; // the task runs, then waits for its next poll
        one
    });
    drop(first);
    let second = runtime();
    second.block_on(async {
        let lag = LagProbe::start();
        let two = replica(connect(&server.url()).await.prefix(&prefix));
        two.handle()
            .set_tier("pro", [Limit::new("minute", Quota::per_minute(321))])
            .unwrap();
        let h1 = one.handle();
        let set = h1.resolved(&2);
        decide(one.store(), 2, &Ask::new(&set)).await;
        until(
            lag.allowing_for(BOUND),
            "the change on the replica whose task was dropped",
            || tier_quota(&h1, "pro") == 321,
        )
        .await;
    });
}

/// Redis loses the policies (a restart without persistence, a failover that lost writes) and
/// versions start again from 1: a change made then, under a version number another replica has
/// applied before, still reaches it (the hash names its run of versions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_after_redis_lost_the_policies_reaches_replicas_that_knew_its_version() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lag = LagProbe::start();
    let prefix = unique_prefix("lost");
    let one = replica(connect(&server.url()).await.prefix(&prefix));
    let two = replica(connect(&server.url()).await.prefix(&prefix));
    let (h1, h2) = (one.handle(), two.handle());
    h1.set_tier("pro", [Limit::new("minute", Quota::per_minute(200))])
        .unwrap();
    until(lag.allowing_for(BOUND), "version 1 on replica two", || {
        tier_quota(&h2, "pro") == 200
    })
    .await;
    server.command("FLUSHALL");
    // The next change is version 1 again.
    h1.set_tier("pro", [Limit::new("minute", Quota::per_minute(300))])
        .unwrap();
    until(
        lag.allowing_for(BOUND),
        "the new version 1 on replica two",
        || tier_quota(&h2, "pro") == 300,
    )
    .await;
    assert_eq!(tier_quota(&h1, "pro"), 300);
}
