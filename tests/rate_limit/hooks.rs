//! Hooks: refusals reach `.on_event` hooks with their reason and retry time; admissions do not
//! (they are the hot path); a panicking hook does not change the decision (#19).

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tower::{Layer, Service};
use tower_rampart::hooks::Event;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Quota, RateLimitEvent, RateLimitLayer};

use crate::support::Counting;

/// Sends `n` through `svc` (synchronous on the in-memory path): whether it was admitted.
fn send<S>(svc: &mut S, n: u32) -> bool
where
    S: Service<u32>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = std::pin::pin!(svc.call(n));
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(r) => r.is_ok(),
        Poll::Pending => panic!("the in-memory path is synchronous"),
    }
}

#[test]
fn refusals_reach_the_hooks_admissions_do_not() {
    let seen: Arc<Mutex<Vec<RateLimitEvent>>> = Arc::default();
    let log = Arc::clone(&seen);
    let layer = RateLimitLayer::builder()
        .name("uploads")
        .quota(Quota::per_hour(2))
        .key(key_fn(|n: &u32| (*n > 0).then_some(*n)))
        .on_event(move |e: &RateLimitEvent| log.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    assert!(send(&mut svc, 1) && send(&mut svc, 1));
    assert!(seen.lock().unwrap().is_empty(), "admissions are not events");
    assert!(!send(&mut svc, 1));
    assert!(!send(&mut svc, 0), "no key: refused");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let RateLimitEvent::Refused {
        name, retry_after, ..
    } = &seen[0]
    else {
        panic!("{:?}", seen[0]);
    };
    assert_eq!(*name, "uploads");
    // Two an hour: the next unit frees half an hour after the first.
    assert!(
        *retry_after > Duration::from_secs(29 * 60) && *retry_after <= Duration::from_secs(30 * 60),
        "{retry_after:?}"
    );
    assert_eq!(
        (seen[1].layer_name(), seen[1].kind()),
        ("uploads", "key_missing")
    );
    assert!(matches!(seen[1], RateLimitEvent::KeyMissing { .. }));
}

#[test]
fn a_panicking_hook_does_not_change_the_decision() {
    let refusals = Arc::new(Mutex::new(0));
    let count = Arc::clone(&refusals);
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(1))
        .on_event(|_: &RateLimitEvent| panic!("a broken hook"))
        .on_event(move |_: &RateLimitEvent| *count.lock().unwrap() += 1)
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    assert!(send(&mut svc, 1));
    assert!(!send(&mut svc, 2));
    assert!(!send(&mut svc, 3));
    assert_eq!(*refusals.lock().unwrap(), 2);
}
