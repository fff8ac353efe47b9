//! Liveness (#14): two replicas share a cache through Redis, and their connections go silent
//! without closing (a fault proxy freezes them). Requests are served meanwhile (calling through,
//! none waiting past the timeout), each backend replaces its connection, and entries are shared
//! through Redis again within the documented bound.

use std::time::{Duration, Instant};

use tower_rampart::backend::FailurePolicy;
use tower_rampart::backend::redis::DEFAULT_LIVENESS_TIMEOUT;

use crate::common::fault_proxy::FaultProxy;
use crate::common::redis::RedisServer;
use crate::support::{
    Config, Upstream, call, connect, replica, stored, unique_prefix, until_stored,
};

const TIMEOUT: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_recovers_from_a_frozen_connection() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let prefix = unique_prefix("liveness");
    let up = Upstream::default();
    let backend = || async {
        connect(&proxy.url(), &prefix)
            .await
            .timeout(TIMEOUT)
            .failure_policy(FailurePolicy::Open)
    };
    let (ra, rb) = (backend().await, backend().await);
    let mut a = replica(ra.clone(), "liveness", Config::default(), &up);
    let mut b = replica(rb.clone(), "liveness", Config::default(), &up);
    assert_eq!(call(&mut a.svc, "k").await.unwrap(), "k#1");
    until_stored(&a.store, "k").await;
    assert_eq!(call(&mut b.svc, "k").await.unwrap(), "k#1", "shared");

    proxy.freeze();
    let frozen = Instant::now();
    // Served throughout, none waiting on the silent connection past twice its timeout.
    let mut recovered = None;
    for i in 0..200 {
        let r = if i % 2 == 0 { &mut a } else { &mut b };
        let at = Instant::now();
        call(&mut r.svc, "k")
            .await
            .expect("served while the connection is silent");
        let took = at.elapsed();
        // A request makes at most two store calls (lookup, lock), each bounded by the timeout.
        assert!(took < 4 * TIMEOUT, "a request waited {took:?}");
        if ra.replaced_connections() == 1 && rb.replaced_connections() == 1 {
            recovered = Some(frozen.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered = recovered.expect("both connections replaced within 4 s");
    assert!(
        recovered < DEFAULT_LIVENESS_TIMEOUT + Duration::from_secs(2),
        "replaced {recovered:?} after the freeze"
    );
    // Entries are shared through Redis again: a new key filled on one is served by the other.
    let calls = up.calls();
    let answer = call(&mut a.svc, "fresh").await.unwrap();
    let value = until_stored(&a.store, "fresh").await;
    assert_eq!(value, answer);
    assert_eq!(
        call(&mut b.svc, "fresh").await.unwrap(),
        answer,
        "served from redis"
    );
    assert_eq!(up.calls(), calls + 1, "one upstream call for both replicas");
    assert!(stored(&b.store, "fresh").await.is_some());
    assert!(ra.is_connected() && rb.is_connected());
}
