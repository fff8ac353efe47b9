//! Health: what `is_connected` says before, while and after Redis answers, and the
//! `rampart_redis_up` gauge, one series per server (review of #7).

use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_rampart::backend::{FailurePolicy, RedisBackend};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};

use crate::common::redis::RedisServer;
use crate::support::{decide, unique_prefix};

/// Review of #7: `is_connected` read true before anything had reached Redis (a lazily connected
/// backend reported a server that was not there as connected).
#[tokio::test]
async fn health_is_unknown_until_redis_has_answered() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lazy = RedisBackend::connect_lazy(&server.url())
        .unwrap()
        .prefix(unique_prefix("health"));
    assert!(!lazy.is_connected(), "nothing has reached redis yet");
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(1))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(lazy.clone())
        .build()
        .unwrap();
    assert!(decide(layer.store(), &1).await.unwrap().is_allowed());
    assert!(lazy.is_connected(), "a decision made by redis proves it");

    let eager = RedisBackend::connect(&server.url()).await.unwrap();
    assert!(eager.is_connected(), "connect checks that redis answers");

    // Lazily connected to nothing: not connected, before and after trying.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nothing = RedisBackend::connect_lazy(&format!("redis://127.0.0.1:{port}/")).unwrap();
    assert!(!nothing.is_connected());
    assert!(nothing.ping().await.is_err());
    assert!(!nothing.is_connected());
}

/// Review of #7: an error reply (here `OOM`, as from a full Redis; `READONLY` is the same) proves
/// the connection is up. Before, a probe answered with one left the backend marked down for good.
#[tokio::test]
async fn an_error_reply_proves_the_connection_is_up() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let redis = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(50))
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("reply-error"));
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(100))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(redis.clone())
        .build()
        .unwrap();
    let store = layer.store();
    assert!(decide(store, &1).await.unwrap().is_allowed());

    // Down: a call times out while Redis holds scripts back.
    assert_eq!(server.command("CLIENT PAUSE 30000 WRITE"), "+OK");
    assert!(decide(store, &2).await.unwrap_err().is_timeout());
    assert!(!redis.is_connected());
    // Back, but full: every script that writes is answered with OOM.
    assert_eq!(server.command("CONFIG SET maxmemory 1"), "+OK");
    assert_eq!(server.command("CLIENT UNPAUSE"), "+OK");
    let mut last = None;
    for _ in 0..100 {
        last = Some(decide(store, &3).await);
        if redis.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        redis.is_connected(),
        "an OOM reply proves the connection is up (last decision: {last:?})"
    );
    let e = decide(store, &4).await.unwrap_err();
    assert!(
        !e.is_timeout() && !e.is_unreachable() && !e.is_corrupt_data(),
        "redis answered, with an error: {e}"
    );
    assert!(redis.is_connected());
    // Room again: decisions are made by Redis.
    assert_eq!(server.command("CONFIG SET maxmemory 0"), "+OK");
    assert!(decide(store, &5).await.unwrap().is_allowed());
}

/// The `rampart_redis_up` series in Prometheus's text format: `(server label, value)`, sorted.
fn up_gauges(prometheus: &PrometheusHandle) -> Vec<(String, f64)> {
    let mut gauges: Vec<(String, f64)> = prometheus
        .render()
        .lines()
        .filter_map(|l| l.strip_prefix("rampart_redis_up{server=\""))
        .map(|rest| {
            let (server, value) = rest.split_once("\"} ").expect("one label, then the value");
            (server.to_string(), value.parse().expect("a number"))
        })
        .collect();
    gauges.sort_by(|a, b| a.0.cmp(&b.0));
    gauges
}

fn sorted(mut gauges: Vec<(String, f64)>) -> Vec<(String, f64)> {
    gauges.sort_by(|a, b| a.0.cmp(&b.0));
    gauges
}

/// Review of #7: the gauge was set to 1 when a backend was made, before anything was known, and had
/// no label, so two backends overwrote each other's value.
#[test]
fn the_up_gauge_has_one_series_per_server_set_once_known() {
    let (Some(a), Some(mut b)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let recorder = PrometheusBuilder::new().build_recorder();
    let prometheus = recorder.handle();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let on_a = RedisBackend::connect_lazy(&a.url())
                .unwrap()
                .failure_policy(FailurePolicy::Closed)
                .prefix(unique_prefix("gauge"));
            assert!(
                !prometheus.render().contains("rampart_redis_up"),
                "nothing is known yet: {}",
                prometheus.render()
            );
            let on_b = RedisBackend::connect(&b.url())
                .await
                .unwrap()
                .timeout(Duration::from_millis(200))
                .failure_policy(FailurePolicy::Closed)
                .prefix(unique_prefix("gauge"));
            assert_eq!(up_gauges(&prometheus), [(b.url(), 1.0)]);

            let limiter = |backend: RedisBackend| {
                RateLimitLayer::builder()
                    .quota(Quota::per_hour(10))
                    .key(key_fn(|k: &u32| Some(*k)))
                    .backend(backend)
                    .build()
                    .unwrap()
            };
            let (la, lb) = (limiter(on_a), limiter(on_b.clone()));
            assert!(decide(la.store(), &1).await.unwrap().is_allowed());
            assert_eq!(
                up_gauges(&prometheus),
                sorted(vec![(a.url(), 1.0), (b.url(), 1.0)])
            );

            b.kill();
            assert!(decide(lb.store(), &1).await.is_err());
            assert!(!on_b.is_connected());
            assert_eq!(
                up_gauges(&prometheus),
                sorted(vec![(a.url(), 1.0), (b.url(), 0.0)]),
                "one series per server"
            );
            assert!(decide(la.store(), &2).await.unwrap().is_allowed());
        });
    });
}
