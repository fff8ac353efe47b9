//! Policies (#18): several limits in one decision, costs, shadow limits and shadow mode, peeks,
//! tiers with a resolver, keys' own limits and live changes, and the application's own refusal
//! response; in memory (the shared cases are in `policy_cases.rs`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http::{Response, StatusCode, header};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::backend::MemoryBackend;
use tower_rampart::clock::ManualClock;
use tower_rampart::key::{HeaderKey, key_fn};
use tower_rampart::rate_limit::error::{CostTooHigh, RateLimited};
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Limit, MAX_LIMITS, Quota, RateLimitEvent, RateLimitLayer, RateLimitStore,
};
use tower_rampart::rejection::RejectionKind;

use crate::common::http::serve;
use crate::policy_cases::{self as cases, Subject};
use crate::support::Counting;

const ALGORITHMS: [Algorithm; 2] = [Algorithm::Gcra, Algorithm::SlidingWindow];

fn memory(algorithm: Algorithm) -> (Subject, ManualClock) {
    let clock = ManualClock::new();
    clock.set(5_000_000_000);
    let s = cases::subject(MemoryBackend::new().clock(clock.clone()), algorithm);
    (s, clock)
}

/// Runs an async case to completion (the in-memory store answers at once).
fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random arrivals (0-400 ms apart) and costs (0-6: some above the short limit's burst of 4).
    #[test]
    fn a_set_decides_as_its_strictest_limit_and_never_spends_partially(
        steps in prop::collection::vec((0u64..400, 0u32..7), 1..120)
    ) {
        for algorithm in ALGORITHMS {
            let (s, clock) = memory(algorithm);
            run(cases::multi_equals_strictest(&s, &clock, &steps));
        }
    }

    #[test]
    fn a_shadow_limit_decides_as_if_alone_and_never_refuses(
        steps in prop::collection::vec((0u64..400, 0u32..7), 1..120)
    ) {
        for algorithm in ALGORITHMS {
            let (s, clock) = memory(algorithm);
            run(cases::shadow_limit_observes(&s, &clock, &steps));
        }
    }
}

#[test]
fn costs_peeks_and_live_quota_changes() {
    for algorithm in ALGORITHMS {
        let (s, _) = memory(algorithm);
        run(cases::costs(&s, algorithm));
        let (s, _) = memory(algorithm);
        run(cases::peeks_spend_nothing(&s));
    }
    // GCRA's state is a time, and carries over to a new quota up to its tolerance.
    let (s, clock) = memory(Algorithm::Gcra);
    run(cases::quota_change_keeps_state(&s, &clock));
    // A sliding window's counts carry over to a new period.
    let (s, clock) = memory(Algorithm::SlidingWindow);
    run(cases::window_period_change_keeps_counts(&s, &clock));
}

/// A keyed service on `u32` requests, keyed by `req / 100`: as a test sends them.
async fn send<S>(svc: &mut S, req: u32) -> Result<u32, BoxError>
where
    S: Service<u32, Response = u32, Error = BoxError>,
{
    svc.ready().await?.call(req).await
}

#[tokio::test(start_paused = true)]
async fn shadow_mode_admits_everything_and_counts_exactly_the_refusals_real_mode_makes() {
    for algorithm in ALGORITHMS {
        let limits = [
            Limit::new("second", Quota::per_second(3)),
            Limit::new("minute", Quota::per_minute(20)),
        ];
        let build = |shadow: bool, events: Arc<Mutex<Vec<RateLimitEvent>>>| {
            RateLimitLayer::builder()
                .limits(limits)
                .algorithm(algorithm)
                .shadow(shadow)
                .cost(|req: &u32| req % 3)
                .key(key_fn(|req: &u32| Some(req / 100)))
                .on_event(move |e| events.lock().unwrap().push(e.clone()))
                .build()
                .unwrap()
        };
        let (real_events, shadow_events) = Default::default();
        let real = build(false, Arc::clone(&real_events));
        let shadow = build(true, Arc::clone(&shadow_events));
        let (real_inner, shadow_inner) = (Counting::default(), Counting::default());
        let mut real_svc = real.layer(real_inner.clone());
        let mut shadow_svc = shadow.layer(shadow_inner.clone());
        let mut refused = 0;
        // The same sequence at the same paused instants: three keys, costs 0-2, 130 ms apart.
        for i in 0..300u32 {
            let req = (i % 3) * 100 + (i * 7) % 3;
            let r = send(&mut real_svc, req).await;
            refused += usize::from(r.is_err());
            assert_eq!(
                send(&mut shadow_svc, req).await.unwrap(),
                req,
                "shadow admits"
            );
            tokio::time::advance(Duration::from_millis(130)).await;
        }
        assert!(refused > 30, "the sequence must hit the limits ({refused})");
        assert_eq!(shadow_inner.calls(), 300);
        assert_eq!(real_inner.calls(), 300 - refused);
        let real_refusals = real_events
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, RateLimitEvent::Refused { .. }))
            .count();
        let shadowed: Vec<_> = shadow_events.lock().unwrap().clone();
        assert_eq!(real_refusals, refused);
        assert_eq!(
            shadowed.len(),
            refused,
            "{algorithm:?}: one shadow event per real refusal"
        );
        assert!(
            shadowed
                .iter()
                .all(|e| matches!(e, RateLimitEvent::ShadowRefused { .. }))
        );
        // The same states: both layers would now answer every key alike.
        for key in 0..3 {
            assert_eq!(
                real.handle().peek(&key).await.unwrap(),
                shadow.handle().peek(&key).await.unwrap()
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_shadow_limit_counts_its_refusals_and_the_enforced_one_decides() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&events);
    let layer = RateLimitLayer::builder()
        .limits([
            Limit::new("enforced", Quota::per_minute(10)),
            Limit::new("candidate", Quota::per_minute(4)).shadow(true),
        ])
        .on_event(move |e| seen.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    let outcomes: Vec<bool> = {
        let mut v = Vec::new();
        for _ in 0..12 {
            v.push(send(&mut svc, 1).await.is_ok());
        }
        v
    };
    assert_eq!(outcomes.iter().filter(|ok| **ok).count(), 10);
    let events = events.lock().unwrap();
    let shadow: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            RateLimitEvent::ShadowRefused { policy, .. } => Some(*policy),
            _ => None,
        })
        .collect();
    // Requests 5 to 12 would have been refused by the candidate (it admits 4 and spends only
    // what it admits).
    assert_eq!(shadow, ["candidate"; 8]);
}

#[tokio::test(start_paused = true)]
async fn tiers_resolve_from_the_key_and_anything_else_gets_the_default() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(2))
        .name("api")
        .tier("pro", [Limit::new("pro-minute", Quota::per_minute(5))])
        .key(key_fn(|req: &u32| Some(req / 100)))
        .tier_of(|key: &u32| match key {
            1 => Some("pro"),
            2 => Some("platinum"), // a tier the layer does not have
            _ => None,
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    async fn admitted<S>(svc: &mut S, key: u32) -> usize
    where
        S: Service<u32, Response = u32, Error = BoxError>,
    {
        let mut n = 0;
        for _ in 0..8 {
            n += usize::from(send(svc, key * 100).await.is_ok());
        }
        n
    }
    assert_eq!(admitted(&mut svc, 1).await, 5, "pro");
    assert_eq!(
        admitted(&mut svc, 2).await,
        2,
        "unknown tier: the default, never unlimited"
    );
    assert_eq!(admitted(&mut svc, 3).await, 2, "no tier: the default");
    let handle = layer.handle();
    assert_eq!(handle.limits_of(&1)[0].name(), "pro-minute");
    assert_eq!(handle.limits_of(&2)[0].name(), "api");
    assert_eq!(handle.tiers().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn live_changes_reach_the_next_request_and_a_key_keeps_its_state() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(2))
        .tier("free", [Limit::new("minute", Quota::per_minute(3))])
        .key(key_fn(|req: &u32| Some(*req)))
        .tier_of(|key: &u32| (*key >= 10).then_some("free"))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(Counting::default());
    for _ in 0..3 {
        send(&mut svc, 10).await.unwrap();
    }
    assert!(send(&mut svc, 10).await.is_err());
    // The free tier doubles: key 10 keeps its state, 60 s of arrivals ahead, and at 10 s a
    // request under the new quota waits 10 s for the next.
    handle
        .set_tier("free", [Limit::new("minute", Quota::per_minute(6))])
        .unwrap();
    let e = send(&mut svc, 10).await.unwrap_err();
    let limited = e.downcast_ref::<RateLimited>().unwrap();
    assert_eq!(limited.limit(), 6);
    assert_eq!(limited.retry_after(), Duration::from_secs(10));
    tokio::time::advance(Duration::from_secs(10)).await;
    send(&mut svc, 10).await.unwrap();
    // A key of its own, then back to its tier.
    handle
        .set_key(&11, [Limit::new("vip", Quota::per_minute(100))])
        .unwrap();
    for _ in 0..50 {
        send(&mut svc, 11).await.unwrap();
    }
    assert_eq!(handle.peek(&11).await.unwrap().remaining(), 49);
    handle.clear_key(&11);
    assert_eq!(handle.peek(&11).await.unwrap().limit(), 6);
    // The default, live too.
    handle
        .set_default([Limit::new("default", Quota::per_minute(1))])
        .unwrap();
    send(&mut svc, 1).await.unwrap();
    assert!(send(&mut svc, 1).await.is_err());
    // Changes are checked as the builder checks them.
    let e = handle
        .set_tier("free", [Limit::new("minute", Quota::per_minute(0))])
        .unwrap_err();
    assert!(e.to_string().contains("at least 1 request"), "{e}");
    assert_eq!(
        handle.tier_set("free").unwrap().limits()[0].quota().limit(),
        6
    );
}

#[tokio::test(start_paused = true)]
async fn a_cost_above_the_burst_is_refused_with_its_own_reason() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(100).burst(10))
        .cost(|req: &u32| *req)
        .build()
        .unwrap();
    let mut svc = layer.layer(Counting::default());
    assert_eq!(send(&mut svc, 10).await.unwrap(), 10);
    let e = send(&mut svc, 11).await.unwrap_err();
    let too_high = e.downcast_ref::<CostTooHigh>().expect("cost too high");
    assert_eq!((too_high.cost(), too_high.capacity()), (11, 10));
    assert_eq!(
        e.to_string(),
        "request cost 11 exceeds the rate limit's capacity of 10 at once"
    );
    // Over quota (within the burst) is the usual refusal, with a wait.
    let e = send(&mut svc, 1).await.unwrap_err();
    assert!(e.downcast_ref::<RateLimited>().unwrap().retry_after() > Duration::ZERO);
    assert_eq!(send(&mut svc, 0).await.unwrap(), 0, "a cost of zero passes");
}

#[test]
fn sets_that_cannot_work_are_refused_with_a_reason() {
    let limit = |n: &'static str| Limit::new(n, Quota::per_second(1));
    let cases: Vec<(Result<(), tower_rampart::ConfigError>, &str)> = vec![
        (
            RateLimitLayer::builder().limits([]).build().map(drop),
            "invalid limits: a limit set needs at least one limit",
        ),
        (
            RateLimitLayer::builder()
                .limits([limit("a"), limit("a")])
                .build()
                .map(drop),
            "invalid limits: two limits are named \"a\"; names must differ",
        ),
        (
            RateLimitLayer::builder()
                .limits((0..=MAX_LIMITS).map(|i| Limit::new(format!("l{i}"), Quota::per_second(1))))
                .build()
                .map(drop),
            "invalid limits: a decision checks at most 8 limits (got 9)",
        ),
        (
            RateLimitLayer::builder()
                .quota(Quota::per_second(1))
                .limits([limit("a")])
                .build()
                .map(drop),
            "invalid limits: both .quota(..) and .limits(..) were set; the default set is one or the other (put the quota in the list as a Limit)",
        ),
        (
            RateLimitLayer::builder()
                .quota(Quota::per_second(1))
                .tier("pro", [Limit::new("x y", Quota::per_second(1))])
                .build()
                .map(drop),
            "invalid tier: tier \"pro\": limit \"x y\": ",
        ),
        (
            RateLimitLayer::builder()
                .quota(Quota::per_second(1))
                .tier_of(|_: &()| Some("pro"))
                .key(key_fn(|n: &u32| Some(*n)))
                .build()
                .map(drop),
            "invalid tier_of: the resolver was given for another key type; call .key(..) before .tier_of(..)",
        ),
    ];
    for (got, want) in cases {
        let got = got.unwrap_err().to_string();
        assert!(got.starts_with(want), "{got}\n  wanted {want}");
    }
}

/// `POST /ingest` with `X-API-Key` and a body of `n` events costing `n`; free keys 5 events per
/// minute, pro keys 20, an hourly cap of 30 for everyone; refusals in the app's own shape.
fn ingest_app(shadow: bool) -> Router {
    let limit = RateLimitLayer::builder()
        .limits([
            Limit::new("minute", Quota::per_minute(5)),
            Limit::new("hour", Quota::per_hour(30)),
        ])
        .tier(
            "pro",
            [
                Limit::new("minute", Quota::per_minute(20)),
                Limit::new("hour", Quota::per_hour(30)),
            ],
        )
        .shadow(shadow)
        .key(HeaderKey::new("x-api-key"))
        .tier_of(|key: &http::HeaderValue| (key == "pro-1").then_some("pro"))
        .cost(|req: &http::Request<Body>| {
            req.headers()
                .get("x-events")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        })
        .http()
        .respond_with(|refusal, parts| {
            let limited = refusal.downcast_ref::<RateLimited>();
            let body = serde_json::json!({
                "status": "error",
                "message": refusal.to_string(),
                "path": parts.uri.path(),
                "policy": limited.map(RateLimited::policy),
                "retry_after": refusal.retry_after().map(|d| d.as_millis().div_ceil(1000)),
            });
            let mut res = Response::builder()
                .status(match refusal.kind() {
                    RejectionKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
                    kind => kind.status(),
                })
                .header(header::CONTENT_TYPE, "application/problem+json");
            if let Some(limited) = limited {
                res = res.header("x-limit", limited.limit());
            }
            res.body(Body::from(body.to_string())).unwrap()
        })
        .build()
        .unwrap();
    Router::new()
        .route("/ingest", post(|| async { "ok" }))
        .layer(limit)
}

#[tokio::test]
async fn over_http_tiers_costs_several_limits_and_the_apps_own_refusal() {
    let served = serve(ingest_app(false), false).await;
    let r = served
        .send(
            "POST",
            "/ingest",
            &[("x-api-key", "free-1"), ("x-events", "3")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.headers["ratelimit-policy"],
        r#""minute";q=5;w=60, "hour";q=30;w=3600"#
    );
    assert_eq!(r.headers["ratelimit"], r#""minute";r=2;t=36"#);
    let r = served
        .send(
            "POST",
            "/ingest",
            &[("x-api-key", "free-1"), ("x-events", "3")],
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert_eq!(r.headers["x-limit"], "5");
    let body = r.json();
    assert_eq!(body["path"], "/ingest");
    assert_eq!(body["policy"], "minute");
    assert_eq!(body["message"], "rate limit exceeded");
    assert_eq!(body["retry_after"], 12);
    // A cost no limit could admit: the app's response again, 413.
    let r = served
        .send(
            "POST",
            "/ingest",
            &[("x-api-key", "pro-1"), ("x-events", "31")],
        )
        .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.json()["message"],
        "request cost 31 exceeds the rate limit's capacity of 20 at once"
    );
    assert!(r.headers.get("retry-after").is_none());
    // Pro: 20 events a minute (the 413 spent nothing), then the minute binds.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = served
            .send(
                "POST",
                "/ingest",
                &[("x-api-key", "pro-1"), ("x-events", "5")],
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [StatusCode::OK; 4]);
    let r = served
        .send(
            "POST",
            "/ingest",
            &[("x-api-key", "pro-1"), ("x-events", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.json()["policy"], "minute");
    // A request with no key: the app's response, 500 (a deployment mistake).
    let r = served.send("POST", "/ingest", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.json()["message"], "rate limit key missing");
}

#[tokio::test]
async fn over_http_shadow_mode_admits_everything() {
    let served = serve(ingest_app(true), false).await;
    for _ in 0..8 {
        let r = served
            .send(
                "POST",
                "/ingest",
                &[("x-api-key", "free-2"), ("x-events", "1")],
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = served
        .send(
            "POST",
            "/ingest",
            &[("x-api-key", "free-2"), ("x-events", "1")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["ratelimit"], r#""minute";r=0;t=60"#);
}

/// Threads deciding one key at once, half with the set {a, b}, half with {a} alone (a key whose
/// tier is changing): every spend is whole, and the counts add up exactly.
#[test]
fn concurrent_sets_and_single_limits_on_one_key_spend_exactly() {
    for algorithm in ALGORITHMS {
        let clock = ManualClock::new();
        clock.set(1_000_000_000);
        let layer = RateLimitLayer::builder()
            .quota(Quota::per_second(1))
            .algorithm(algorithm)
            .tier(
                "ab",
                [
                    Limit::new("a", Quota::per_minute(400)),
                    Limit::new("b", Quota::per_minute(150)),
                ],
            )
            .tier("a", [Limit::new("a", Quota::per_minute(400))])
            .key(key_fn(|k: &u8| Some(*k)))
            .backend(MemoryBackend::new().clock(clock.clone()))
            .build()
            .unwrap();
        let handle = layer.handle();
        let (ab, a) = (
            handle.tier_set("ab").unwrap(),
            handle.tier_set("a").unwrap(),
        );
        let b = {
            handle
                .set_tier("b", [Limit::new("b", Quota::per_minute(150))])
                .unwrap();
            handle.tier_set("b").unwrap()
        };
        let (multi, single) = (AtomicU32::new(0), AtomicU32::new(0));
        std::thread::scope(|scope| {
            for t in 0..4 {
                let (layer, ab, a) = (&layer, &ab, &a);
                let (multi, single) = (&multi, &single);
                scope.spawn(move || {
                    for _ in 0..300 {
                        let (set, count) = if t % 2 == 0 { (ab, multi) } else { (a, single) };
                        let d = match layer.store().check(&7, &Ask::new(set)) {
                            Check::Ready(r) => r.unwrap(),
                            Check::Pending(_) => unreachable!("memory answers at once"),
                        };
                        count.fetch_add(u32::from(d.is_allowed()), Ordering::Relaxed);
                    }
                });
            }
        });
        let (multi, single) = (multi.into_inner(), single.into_inner());
        // (The sets may all come after the single limit has spent a: how the threads are
        // scheduled decides how many of them get in.)
        assert!(multi <= 150, "{algorithm:?}: {multi}");
        let peek = |set| match layer.store().check(&7, &Ask::new(set).peek()) {
            Check::Ready(r) => r.unwrap(),
            Check::Pending(_) => unreachable!(),
        };
        // A set refused by b takes back its spend on a; a single-limit decision racing with it
        // may be refused in between (never admitted beyond the limit), so a can end with a unit
        // or two left. Every unit is accounted for: admitted, or still there.
        let a_left = match peek(&a) {
            d if d.is_allowed() => d.remaining() + 1,
            _ => 0,
        };
        assert_eq!(
            multi + single + a_left,
            400,
            "{algorithm:?}: a spent exactly what was admitted ({multi} + {single}, {a_left} left)"
        );
        assert!(a_left <= 8, "{algorithm:?}: {a_left} units left unspent");
        // b spent exactly what the set admitted: never a part of a refused set.
        let b_left = peek(&b);
        if multi == 150 {
            assert!(!b_left.is_allowed());
        } else {
            assert_eq!(b_left.remaining(), 149 - multi, "{algorithm:?}");
        }
    }
}

/// Keys' own limits: as many as the cap allows (each added in place, so loading them all is
/// linear), one more refused with the reason, a tier change made afterwards keeps them, and a
/// key taken off frees its place.
#[tokio::test]
async fn keys_own_limits_fill_to_the_cap_and_survive_tier_changes() {
    use tower_rampart::rate_limit::MAX_KEYS_WITH_OWN_LIMITS;
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .tier("free", [Limit::new("minute", Quota::per_minute(2))])
        .key(key_fn(|k: &u32| Some(*k)))
        .build()
        .unwrap();
    let handle = layer.handle();
    let own = [Limit::new("own", Quota::per_minute(30))];
    let cap = u32::try_from(MAX_KEYS_WITH_OWN_LIMITS).unwrap();
    for k in 0..cap {
        handle.set_key(&k, own).unwrap();
    }
    let e = handle.set_key(&cap, own).unwrap_err();
    assert_eq!(e.setting(), "key_limits");
    assert!(e.reason().contains("use tiers"), "{e}");
    // Replacing a key's limits at the cap is not a new key.
    handle
        .set_key(&7, [Limit::new("own", Quota::per_minute(40))])
        .unwrap();
    // A tier change after the keys' limits keeps them.
    handle
        .set_tier("free", [Limit::new("minute", Quota::per_minute(3))])
        .unwrap();
    assert_eq!(handle.peek(&7).await.unwrap().limit(), 40);
    assert_eq!(handle.peek(&8).await.unwrap().limit(), 30);
    assert_eq!(handle.peek(&cap).await.unwrap().limit(), 1);
    handle.clear_key(&8);
    assert_eq!(handle.peek(&8).await.unwrap().limit(), 1);
    handle.set_key(&cap, own).unwrap();
    assert_eq!(handle.peek(&cap).await.unwrap().limit(), 30);
}
