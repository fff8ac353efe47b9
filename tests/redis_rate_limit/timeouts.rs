//! A call abandoned on its timeout is not counted when Redis runs it later (review of #7).
//!
//! Redis is stalled (`CLIENT PAUSE`) while five requests for one key are in flight: each times out
//! and its failure policy answers it. When Redis resumes it runs the five scripts it had queued;
//! they must not count, or the client would find its quota spent by requests that were refused
//! (`Closed`), let through uncounted (`Open`) or already counted in memory (`Local`). After the
//! stall the key holds nothing and the client's next request sees its whole quota.
//!
//! `CLIENT PAUSE .. WRITE` holds the scripts (they may write) but lets `CLIENT UNPAUSE` and `TIME`
//! through, so these tests end the stall when they choose, with no sleeping; one test replays the
//! review's `CLIENT PAUSE .. ALL`, which ends by itself.

use std::time::Duration;

use tower_rampart::backend::redis::RedisRateLimitStore;
use tower_rampart::backend::{BackendError, FailurePolicy, RedisBackend};
use tower_rampart::rate_limit::{Algorithm, Decision, Quota};

use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{decide, unique_prefix};

const TIMEOUT: Duration = Duration::from_millis(50);
/// Per hour, so nothing comes back while a test runs.
const LIMIT: u32 = 5;

fn limiter(backend: RedisBackend, name: &'static str) -> RedisRateLimitStore<u32> {
    crate::support::u32_store(backend, name, Quota::per_hour(LIMIT), Algorithm::Gcra)
}

/// Five concurrent decisions for `key`, all started while Redis is stalled.
async fn five_at_once(
    store: &RedisRateLimitStore<u32>,
    key: u32,
) -> Vec<Result<Decision, BackendError>> {
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { decide(&store, &key).await })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.expect("no panic"));
    }
    results
}

/// Each result is the failure policy's answer to a call Redis did not answer in time.
fn answered_by_the_policy(policy: FailurePolicy, results: &[Result<Decision, BackendError>]) {
    for r in results {
        match policy {
            // A timeout, or (for a call that started after another had timed out) Redis known down.
            FailurePolicy::Closed => {
                let e = r.as_ref().unwrap_err();
                assert!(e.is_timeout() || e.is_unreachable(), "{e}");
            }
            FailurePolicy::Open => {
                let d = r.as_ref().unwrap();
                assert!(d.is_allowed() && !d.is_counted(), "{d:?}");
            }
            _ => {
                // Counted in memory: LIMIT is 5, so all five fit.
                let d = r.as_ref().unwrap();
                assert!(d.is_allowed() && d.is_counted(), "{d:?}");
            }
        }
    }
}

/// Waits (at most 5 s) until a call sent on `backend`'s connection after the abandoned ones has
/// been answered: Redis answers one connection's commands in order, so they have run by then.
async fn flush(backend: &RedisBackend) {
    for _ in 0..250 {
        if backend.ping().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("redis did not answer within 5 s of the stall's end");
}

/// After the stall: nothing was written for `key` (`exists` says whether its Redis key exists),
/// and the next request has the whole quota.
async fn nothing_was_counted(exists: bool, store: &RedisRateLimitStore<u32>, key: u32, what: &str) {
    assert!(
        !exists,
        "{what}: redis ran the abandoned calls and counted them"
    );
    let d = decide(store, &key).await.unwrap();
    assert!(d.is_allowed() && d.is_counted(), "{what}: {d:?}");
    assert_eq!(d.remaining(), LIMIT - 1, "{what}: the whole quota is left");
}

fn exists(server: &RedisServer, store: &RedisRateLimitStore<u32>, key: u32) -> bool {
    let name = String::from_utf8(store.redis_key(&key)).unwrap();
    server.command(&format!("EXISTS {name}")) == ":1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_on_their_timeout_are_not_counted_by_any_policy() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for policy in [
        FailurePolicy::Closed,
        FailurePolicy::Open,
        FailurePolicy::Local,
    ] {
        for lazy in [false, true] {
            let what = format!("{policy}, lazy: {lazy}");
            let backend = if lazy {
                RedisBackend::connect_lazy(&server.url()).unwrap()
            } else {
                RedisBackend::connect(&server.url()).await.unwrap()
            };
            let redis = backend
                .timeout(TIMEOUT)
                .failure_policy(policy)
                .prefix(unique_prefix("abandoned"));
            let store = limiter(redis.clone(), "paused");
            // A first decision loads the script and tells the backend Redis's clock (a lazily
            // connected backend knows nothing of it before).
            assert!(decide(&store, &99).await.unwrap().is_allowed(), "{what}");

            let before = server.calls("evalsha");
            assert_eq!(server.command("CLIENT PAUSE 30000 WRITE"), "+OK");
            let results = five_at_once(&store, 1).await;
            answered_by_the_policy(policy, &results);
            assert!(!redis.is_connected(), "{what}: the stall was noticed");
            assert_eq!(server.command("CLIENT UNPAUSE"), "+OK");
            flush(&redis).await;
            assert!(
                server.calls("evalsha") > before,
                "{what}: at least one call reached redis and was run after the stall"
            );
            nothing_was_counted(exists(&server, &store, 1), &store, 1, &what).await;
        }
    }
}

/// The review's reproduction as it was: `CLIENT PAUSE 300 ALL` (here 2 s, so the five requests are
/// surely sent while it lasts, however loaded the machine), `Closed`, a 50 ms timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reviews_reproduction_with_client_pause_all() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .timeout(TIMEOUT)
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("pause-all"));
    let store = limiter(redis.clone(), "default");
    assert!(decide(&store, &99).await.unwrap().is_allowed());
    assert_eq!(server.command("CLIENT PAUSE 2000 ALL"), "+OK");
    let results = five_at_once(&store, 1).await;
    answered_by_the_policy(FailurePolicy::Closed, &results);
    flush(&redis).await;
    nothing_was_counted(exists(&server, &store, 1), &store, 1, "CLIENT PAUSE ALL").await;
}

/// The same on a 3-master cluster: each node's own `TIME` bounds the calls it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_abandoned_on_their_timeout_are_not_counted_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let redis = RedisBackend::connect_cluster(cluster.urls())
        .await
        .unwrap()
        .timeout(TIMEOUT)
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("abandoned-cluster"));
    let store = limiter(redis.clone(), "paused");
    // Six keys, spread over the nodes by their slots; a first decision on each node's connection
    // tells the backend Redis's clock.
    let keys: Vec<u32> = (1..=6).collect();
    for k in &keys {
        assert!(decide(&store, k).await.unwrap().is_allowed());
    }
    for node in &cluster.nodes {
        assert_eq!(node.command("CLIENT PAUSE 30000 WRITE"), "+OK");
    }
    for k in &keys {
        let results = five_at_once(&store, k + 100).await;
        answered_by_the_policy(FailurePolicy::Closed, &results);
    }
    for node in &cluster.nodes {
        assert_eq!(node.command("CLIENT UNPAUSE"), "+OK");
    }
    // A decision with the same hash tag goes to the same node on the same connection, after the
    // abandoned calls.
    let flusher = limiter(redis.clone().timeout(Duration::from_secs(5)), "flush");
    for k in &keys {
        let mut answered = false;
        for _ in 0..250 {
            if decide(&flusher, &(k + 100)).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "the cluster answers again");
    }
    let client = redis::cluster::ClusterClient::new(cluster.urls()).unwrap();
    let mut raw = client.get_async_connection().await.unwrap();
    for k in &keys {
        let key = k + 100;
        let found: bool = redis::cmd("EXISTS")
            .arg(store.redis_key(&key))
            .query_async(&mut raw)
            .await
            .unwrap();
        nothing_was_counted(found, &store, key, &format!("cluster key {key}")).await;
    }
}
