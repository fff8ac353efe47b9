//! A flood of distinct keys through a cache layer keeps the process's memory within the cache's
//! byte bound: every allocation is counted (the `cap` allocator), not just what the store says
//! it holds. Then an invalidation gives it all back.
//!
//! Its own test binary, because it counts every allocation of the process.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use cap::Cap;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use tower::{Layer, Service, service_fn};
use tower_rampart::cache::{CacheLayer, HttpKey};
use tower_rampart::key::key_fn;

#[global_allocator]
static ALLOC: Cap<std::alloc::System> = Cap::new(std::alloc::System, usize::MAX);

/// The cache's bound in these tests.
const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// What the layer allocates besides its store's entries and tables, and does not count against
/// the bound: its single-flight tables (sixteen small maps that keep their capacity), the
/// store's shard locks. A fixed amount, whatever the number of keys.
const FIXED: usize = 32 * 1024;

/// The tests measure the whole process: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Sends one request through `svc`, whose answer is ready at once (no runtime needed).
fn call<S: Service<R>, R>(svc: &mut S, req: R) -> S::Response {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => panic!("not ready"),
    }
    match pin!(svc.call(req)).poll(&mut cx) {
        Poll::Ready(Ok(res)) => res,
        _ => panic!("not answered at once"),
    }
}

/// Memory allocated now beyond `base`.
fn held_since(base: usize) -> usize {
    ALLOC.allocated().saturating_sub(base)
}

/// Runs `n` requests made by `request(i)` through `svc`, checking the memory held after each
/// batch against the bound; returns the peak.
fn flood<S: Service<R>, R>(svc: &mut S, base: usize, n: u64, request: impl Fn(u64) -> R) -> usize {
    let mut peak = 0;
    for i in 0..n {
        drop(call(svc, request(i)));
        if i % 1_000 == 0 {
            let held = held_since(base);
            peak = peak.max(held);
            assert!(
                held <= MAX_BYTES as usize + FIXED,
                "after {i} keys the process holds {held} bytes for a cache of {MAX_BYTES}"
            );
        }
    }
    peak.max(held_since(base))
}

#[test]
fn a_flood_of_distinct_keys_stays_within_the_byte_bound() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Clone mode: string answers of 40 to 2,000 bytes, weighed by their heap bytes; keys of
    // every length (those over 46 bytes live on the heap, and count too).
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(3600))
        .max_bytes(MAX_BYTES)
        .key(key_fn(|k: &String| Some(k.clone())))
        .weigher(|s: &String| s.capacity())
        .build()
        .unwrap();
    let store = layer.store();
    let handle = layer.handle();
    let base = ALLOC.allocated();
    let mut svc = layer.layer(service_fn(|k: String| {
        let len = 40 + (k.len() * 37) % 1_960;
        ready(Ok::<_, Infallible>("x".repeat(len)))
    }));
    let key = |i: u64| format!("{i}:{}", "k".repeat((i % 64) as usize));
    let peak = flood(&mut svc, base, 200_000, key);
    let held = store.bytes();
    println!(
        "clone mode: peak {peak} bytes allocated, store counts {held} of {MAX_BYTES}, {} entries",
        store.entry_count()
    );
    assert!(held <= MAX_BYTES);
    assert!(held > MAX_BYTES * 3 / 4, "the bound is used: {held}");
    // The newest keys are kept.
    let calls_before = store.entry_count();
    drop(call(&mut svc, key(199_999)));
    assert_eq!(store.entry_count(), calls_before, "a hit, not a new entry");

    // Invalidating everything gives the memory back (the tables too).
    drop(handle.invalidate_all());
    let after = held_since(base);
    assert!(after <= FIXED, "{after} bytes still held after clearing");
}

#[test]
fn a_flood_of_http_responses_stays_within_the_byte_bound() {
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // Keyed on `accept` too: every key has a variant part, which the store also indexes (and
    // must count against the bound).
    let layer = CacheLayer::builder()
        .http()
        .key(HttpKey::new().header(header::ACCEPT))
        .ttl(Duration::from_secs(3600))
        .max_bytes(MAX_BYTES)
        .build()
        .unwrap();
    let store = layer.store();
    let handle = layer.handle();
    let base = ALLOC.allocated();
    let mut svc = layer.layer(service_fn(|req: Request<()>| {
        let n = req.uri().query().map_or(0, str::len);
        let mut res = Response::new(Full::new(Bytes::from(vec![b'a'; 100 + (n * 131) % 3_000])));
        let h = res.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            header::ETAG,
            HeaderValue::from_str(&format!("\"{n}\"")).unwrap(),
        );
        h.insert(
            "x-request-id",
            HeaderValue::from_str(req.uri().path()).unwrap(),
        );
        ready(Ok::<_, Infallible>(res))
    }));
    let request = |i: u64| {
        Request::get(format!(
            "/api/items/{i}?page={}",
            "p".repeat((i % 50) as usize)
        ))
        .header(header::ACCEPT, "application/json")
        .body(())
        .unwrap()
    };
    let peak = flood(&mut svc, base, 100_000, request);
    let held = store.bytes();
    println!(
        "http mode: peak {peak} bytes allocated, store counts {held} of {MAX_BYTES}, {} entries",
        store.entry_count()
    );
    assert!(held <= MAX_BYTES);
    assert!(held > MAX_BYTES * 3 / 4, "the bound is used: {held}");
    drop(handle.invalidate_all());
    let after = held_since(base);
    assert!(after <= FIXED, "{after} bytes still held after clearing");
}
