//! Single-flight: concurrent misses on one key make one inner call. What the waiting requests get
//! when that call fails (each calls through, or all get a clone of the error), is not stored, or
//! is cancelled; they never hang.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::cache::CacheLayer;
use tower_rampart::key::key_fn;

use crate::{Upstream, call};

#[tokio::test(start_paused = true)]
async fn a_thousand_concurrent_misses_make_one_call_and_all_get_its_answer() {
    let up = Upstream::default();
    up.delay(100);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|req: &String| Some(req.clone())))
        .build()
        .unwrap();
    let svc = layer.layer(up.service());
    let answers = join_all((0..1000).map(|_| {
        let mut svc = svc.clone();
        async move { call(&mut svc, "summary").await.unwrap() }
    }))
    .await;
    assert_eq!(up.calls(), 1, "one inner call for 1,000 concurrent misses");
    assert_eq!(answers.len(), 1000);
    assert!(
        answers.iter().all(|a| a == "summary#1"),
        "all get the same answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_misses_from_spawned_tasks_on_two_threads_make_one_call() {
    let up = Upstream::default();
    up.delay(200); // real time: long enough for every task to arrive while the call runs
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|req: &String| Some(req.clone())))
        .build()
        .unwrap();
    let svc = layer.layer(up.service());
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let mut svc = svc.clone();
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                call(&mut svc, "summary").await.unwrap()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "summary#1");
    }
    assert_eq!(up.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn when_the_call_fails_each_waiting_request_calls_through_and_nothing_is_stored() {
    let up = Upstream::default();
    up.delay(100);
    up.fail(true);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|req: &String| Some(req.clone())))
        .build()
        .unwrap();
    let svc = layer.layer(up.service());
    let results = join_all((0..10).map(|_| {
        let mut svc = svc.clone();
        async move { call(&mut svc, "k").await }
    }))
    .await;
    assert!(
        results.iter().all(Result::is_err),
        "every request answered, with an error"
    );
    assert_eq!(
        up.calls(),
        10,
        "the leader's failed call, then one per waiting request (9)"
    );
    up.fail(false);
    up.delay(0);
    let mut s = svc.clone();
    assert_eq!(
        call(&mut s, "k").await.unwrap(),
        "k#11",
        "nothing was stored"
    );
}

/// An upstream whose errors are `Clone`, counting calls.
fn cloneable_errors(
    calls: Arc<AtomicUsize>,
) -> impl Service<u32, Response = String, Error = String, Future: Send> + Clone + Send + Sync {
    tower::service_fn(move |n: u32| {
        let calls = Arc::clone(&calls);
        async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            if n == 0 {
                Err(format!("no such item (call {call})"))
            } else {
                Ok(format!("item {n}"))
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn with_share_errors_the_waiting_requests_get_a_clone_of_the_error() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|n: &u32| Some(*n)))
        .share_errors()
        .build()
        .unwrap();
    let svc = layer.layer(cloneable_errors(Arc::clone(&calls)));
    let results = join_all((0..100).map(|_| {
        let mut svc = svc.clone();
        async move { svc.ready().await?.call(0).await }
    }))
    .await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one call, however it ended"
    );
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap_err() == "no such item (call 1)")
    );
    // And nothing was stored.
    let mut s = svc.clone();
    assert_eq!(
        s.ready().await.unwrap().call(0).await.unwrap_err(),
        "no such item (call 2)"
    );
}

#[tokio::test(start_paused = true)]
async fn responses_that_may_not_be_stored_are_fetched_by_each_waiting_request() {
    let up = Upstream::default();
    up.delay(100);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|req: &String| Some(req.clone())))
        .predicate(|_: &String| false)
        .build()
        .unwrap();
    let svc = layer.layer(up.service());
    let answers = join_all((0..5).map(|_| {
        let mut svc = svc.clone();
        async move { call(&mut svc, "k").await.unwrap() }
    }))
    .await;
    assert_eq!(
        up.calls(),
        5,
        "the leader's call, then one per waiting request"
    );
    let mut distinct = answers.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        5,
        "each request got its own answer: {answers:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_hands_over_to_a_waiting_request() {
    let up = Upstream::default();
    up.delay(100);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|req: &String| Some(req.clone())))
        .build()
        .unwrap();
    let svc = layer.layer(up.service());
    let mut s = svc.clone();
    let leader = tokio::spawn(async move { call(&mut s, "k").await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let waiters: Vec<_> = (0..20)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(async move { call(&mut s, "k").await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for w in waiters {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("waiters do not hang")
                .unwrap(),
            "k#2"
        );
    }
    assert_eq!(
        up.calls(),
        2,
        "the cancelled call, and one by the new leader"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiting_requests_leave_the_others_unharmed() {
    let up = Upstream::default();
    up.delay(100);
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(60))
        .key(key_fn(|req: &String| Some(req.clone())))
        .build()
        .unwrap();
    let svc = layer.layer(up.service());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(async move { call(&mut s, "k").await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for t in &tasks[5..] {
        t.abort();
    }
    for t in tasks.into_iter().take(5) {
        assert_eq!(t.await.unwrap(), "k#1");
    }
    assert_eq!(up.calls(), 1);
}
