//! Soft and hard expiry across replicas: stale-while-revalidate serves the stale entry at once on
//! every replica while one replica refreshes it; stale-if-error serves it when refreshes fail,
//! until its hard expiry. Entry ages move with a `ManualClock` shared by the replicas' backends.

use std::time::Duration;

use futures::future::join_all;
use tower_rampart::clock::ManualClock;

use crate::common::redis::RedisServer;
use crate::support::{
    Config, Upstream, call, connect, replica, unique_prefix, until_stored, until_value,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_and_stale_if_error_work_across_replicas() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("stale");
    let clock = ManualClock::new();
    let up = Upstream::default();
    up.delay(100);
    let cfg = Config {
        ttl: Duration::from_secs(10),
        swr: Duration::from_secs(30),
        sie: Duration::from_secs(300),
        ..Config::default()
    };
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let backend = connect(&server.url(), &prefix).await.clock(clock.clone());
        replicas.push(replica(backend, "stale", cfg, &up));
    }

    // Filled by one replica, a hit on all.
    assert_eq!(call(&mut replicas[0].svc, "k").await.unwrap(), "k#1");
    until_stored(&replicas[0].store, "k").await;
    for r in &mut replicas {
        assert_eq!(call(&mut r.svc, "k").await.unwrap(), "k#1");
    }
    assert_eq!(up.calls(), 1);

    // Past the TTL, within stale-while-revalidate: every replica answers the stale entry at once,
    // and one refresh (across all four) replaces it.
    clock.advance(Duration::from_secs(15));
    let answers = join_all(replicas.iter().map(|r| {
        let mut svc = r.svc.clone();
        async move { call(&mut svc, "k").await.unwrap() }
    }))
    .await;
    assert!(answers.iter().all(|a| a == "k#1"), "{answers:?}");
    // Refreshed in the background.
    until_value(&replicas[3].store, "k", "k#2").await;
    assert_eq!(up.calls(), 2, "one refresh across four replicas");
    for r in &mut replicas {
        assert_eq!(call(&mut r.svc, "k").await.unwrap(), "k#2", "fresh again");
    }
    assert_eq!(up.calls(), 2);

    // Past stale-while-revalidate, within stale-if-error, with a failing upstream: every replica
    // tries a refresh, which fails, and answers the stale entry instead.
    clock.advance(Duration::from_secs(100));
    up.fail(true);
    let before = up.calls();
    for r in &mut replicas {
        assert_eq!(
            call(&mut r.svc, "k").await.unwrap(),
            "k#2",
            "stale if error"
        );
    }
    let tries = up.calls() - before;
    assert!((1..=4).contains(&tries), "{tries}");

    // Past the hard expiry the entry is of no use: the failure goes through.
    clock.advance(Duration::from_secs(300));
    for r in &mut replicas {
        assert!(call(&mut r.svc, "k").await.is_err());
    }

    // And once the upstream answers again, caching resumes.
    up.fail(false);
    let fresh = call(&mut replicas[1].svc, "k").await.unwrap();
    until_value(&replicas[2].store, "k", &fresh).await;
    assert_eq!(call(&mut replicas[2].svc, "k").await.unwrap(), fresh);
}
