//! Conformance cases for several limits, costs, shadow limits, peeks and live changes (#18),
//! written for any backend: the in-memory suite runs them here; a shared backend's suite includes
//! this file (`#[path = "../rate_limit/policy_cases.rs"]`) and runs them on its own store, on one
//! hand-moved clock, so both must give the same decisions to the nanosecond.
//!
//! State identity is (key, limit name), so one store answers every question: key 1 is decided
//! against the set {a, b}, keys 2 and 3 against {a} and {b} alone as the reference, and peeks of
//! key 1 with {a} or {b} alone read the state each limit holds for it.

#![allow(dead_code)] // each suite uses the cases it runs

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tower_rampart::clock::ManualClock;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Algorithm, Ask, Check, Decision, Limit, LimitSet, Quota, RateLimitBackend, RateLimitHandle,
    RateLimitLayer, RateLimitStore,
};

/// A store under test with the sets the cases ask: `ab` = {a, b}, `a`, `b` alone, and `ab_shadow`
/// = {a, b (shadow)}.
pub(crate) struct Subject {
    pub(crate) check: CheckFn,
    pub(crate) handle: RateLimitHandle<u8>,
    pub(crate) ab: Arc<LimitSet>,
    pub(crate) a: Arc<LimitSet>,
    pub(crate) b: Arc<LimitSet>,
    pub(crate) ab_shadow: Arc<LimitSet>,
}

pub(crate) type Pending = Pin<Box<dyn Future<Output = Decision> + Send>>;

/// The store's decision for a key and an ask.
pub(crate) type CheckFn = Box<dyn Fn(u8, &Ask<'_>) -> Pending + Send + Sync>;

/// The two limits of the cases: a short one and a long one, both burstable.
pub(crate) fn quotas(algorithm: Algorithm) -> (Quota, Quota) {
    match algorithm {
        Algorithm::Gcra => (Quota::per_second(4), Quota::per_minute(10)),
        _ => (Quota::per_second(4), Quota::per_minute(10)),
    }
}

/// Builds the subject on `backend` (a layer keyed by a `u8`, with tiers for the sets).
pub(crate) fn subject<B>(backend: B, algorithm: Algorithm) -> Subject
where
    B: RateLimitBackend<u8>,
{
    let (qa, qb) = quotas(algorithm);
    let (a, b) = (Limit::new("a", qa), Limit::new("b", qb));
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1000))
        .name("policy-cases")
        .algorithm(algorithm)
        .tier("ab", [a, b])
        .tier("a", [a])
        .tier("b", [b])
        .tier("ab_shadow", [a, b.shadow(true)])
        .key(key_fn(|k: &u8| Some(*k)))
        .backend(backend)
        .build()
        .expect("valid limits");
    let handle = layer.handle();
    let set = |n: &str| handle.tier_set(n).expect("tier exists");
    let (ab, a, b, ab_shadow) = (set("ab"), set("a"), set("b"), set("ab_shadow"));
    let check = Box::new(move |key: u8, ask: &Ask<'_>| -> Pending {
        match layer.store().check(&key, ask) {
            Check::Ready(r) => Box::pin(std::future::ready(r.expect("no backend error"))),
            Check::Pending(f) => Box::pin(async move { f.await.expect("no backend error") }),
        }
    });
    Subject {
        check,
        handle,
        ab,
        a,
        b,
        ab_shadow,
    }
}

impl Subject {
    pub(crate) async fn ask(&self, key: u8, set: &Arc<LimitSet>, cost: u32) -> Decision {
        (self.check)(key, &Ask::new(set).cost(cost)).await
    }

    pub(crate) async fn peek(&self, key: u8, set: &Arc<LimitSet>, cost: u32) -> Decision {
        (self.check)(key, &Ask::new(set).cost(cost).peek()).await
    }
}

/// A multi-limit decision equals the strictest single limit's, and never spends partially: for
/// each `(advance_ms, cost)`, key 1 asks {a, b}; the reference keys 2 ({a}) and 3 ({b}) are
/// peeked first, must both admit exactly when the set admits, and spend only then. After each
/// step the states key 1 holds under `a` and `b` equal the references'.
pub(crate) async fn multi_equals_strictest(s: &Subject, clock: &ManualClock, steps: &[(u64, u32)]) {
    for (i, &(advance_ms, cost)) in steps.iter().enumerate() {
        clock.advance(std::time::Duration::from_millis(advance_ms));
        let ra = s.peek(2, &s.a, cost).await;
        let rb = s.peek(3, &s.b, cost).await;
        let d = s.ask(1, &s.ab, cost).await;
        let expect = ra.is_allowed() && rb.is_allowed();
        assert_eq!(
            d.is_allowed(),
            expect,
            "step {i}: {d:?} against {ra:?} and {rb:?}"
        );
        if expect {
            assert!(s.ask(2, &s.a, cost).await.is_allowed());
            assert!(s.ask(3, &s.b, cost).await.is_allowed());
            // The binding limit: the fewest remaining (ties: the first).
            let (want, w) = if rb.remaining() < ra.remaining() {
                (rb, 1)
            } else {
                (ra, 0)
            };
            assert_eq!(d.policy_index(), w, "step {i}");
            assert_eq!(d.remaining(), want.remaining(), "step {i}");
            assert_eq!(d.reset(), want.reset(), "step {i}");
        } else {
            // The binding limit: the refusing one with the longest wait (a cost above capacity
            // first).
            let refusing: Vec<(usize, Decision)> = [(0, ra), (1, rb)]
                .into_iter()
                .filter(|(_, r)| !r.is_allowed())
                .collect();
            let (w, want) = refusing
                .iter()
                .copied()
                .reduce(|x, y| {
                    let over = |d: &Decision| d.exceeds_capacity();
                    if over(&y.1) && !over(&x.1)
                        || over(&y.1) == over(&x.1) && y.1.retry_after() > x.1.retry_after()
                    {
                        y
                    } else {
                        x
                    }
                })
                .expect("a refusing limit");
            assert_eq!(d.policy_index(), w, "step {i}");
            assert_eq!(d.retry_after(), want.retry_after(), "step {i}");
            assert_eq!(d.exceeds_capacity(), want.exceeds_capacity(), "step {i}");
        }
        // Nothing spent partially: key 1's state under each name is the reference's.
        assert_eq!(
            s.peek(1, &s.a, 1).await,
            s.peek(2, &s.a, 1).await,
            "step {i}: a"
        );
        assert_eq!(
            s.peek(1, &s.b, 1).await,
            s.peek(3, &s.b, 1).await,
            "step {i}: b"
        );
    }
}

/// A shadow limit is decided as if alone: it spends when it admits itself, never refuses, and
/// says so in the decision; the enforced limit decides.
pub(crate) async fn shadow_limit_observes(s: &Subject, clock: &ManualClock, steps: &[(u64, u32)]) {
    for (i, &(advance_ms, cost)) in steps.iter().enumerate() {
        clock.advance(std::time::Duration::from_millis(advance_ms));
        let ra = s.peek(2, &s.a, cost).await;
        let rb = s.peek(3, &s.b, cost).await;
        let d = s.ask(1, &s.ab_shadow, cost).await;
        assert_eq!(d.is_allowed(), ra.is_allowed(), "step {i}");
        assert_eq!(d.shadow_refused(), !rb.is_allowed(), "step {i}");
        assert_eq!(
            d.shadow_refused_mask(),
            u8::from(!rb.is_allowed()) << 1,
            "step {i}"
        );
        if ra.is_allowed() {
            s.ask(2, &s.a, cost).await;
        }
        if rb.is_allowed() {
            s.ask(3, &s.b, cost).await;
        }
        assert_eq!(
            s.peek(1, &s.a, 1).await,
            s.peek(2, &s.a, 1).await,
            "step {i}: a"
        );
        assert_eq!(
            s.peek(1, &s.b, 1).await,
            s.peek(3, &s.b, 1).await,
            "step {i}: b"
        );
    }
}

/// Costs: `n` units spend `n`; zero spends nothing; more than the burst is refused with no
/// retry time, and spends nothing either.
pub(crate) async fn costs(s: &Subject, algorithm: Algorithm) {
    let (qa, _) = quotas(algorithm);
    let burst = qa.burst_size();
    let d = s.ask(10, &s.a, 3).await;
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), burst - 3);
    let zero = s.ask(10, &s.a, 0).await;
    assert!(zero.is_allowed());
    assert_eq!(zero.remaining(), burst - 3, "a cost of zero spends nothing");
    let over = s.ask(10, &s.a, burst + 1).await;
    assert!(!over.is_allowed());
    assert!(over.exceeds_capacity());
    assert_eq!(over.retry_after(), std::time::Duration::ZERO);
    assert_eq!(
        s.peek(10, &s.a, 1).await.remaining(),
        burst - 4,
        "refusals spend nothing"
    );
    // More than what is left, within the burst: an ordinary refusal with a wait.
    let d = s.ask(10, &s.a, burst - 2).await;
    assert!(!d.is_allowed());
    assert!(!d.exceeds_capacity());
    assert!(d.retry_after() > std::time::Duration::ZERO);
    // In a set, one limit's capacity is enough to refuse it.
    let d = s.ask(11, &s.ab, burst + 1).await;
    assert!(d.exceeds_capacity());
    assert_eq!(d.policy_index(), 0);
}

/// Peeks spend nothing, whatever they ask.
pub(crate) async fn peeks_spend_nothing(s: &Subject) {
    let first = s.peek(20, &s.ab, 1).await;
    for cost in [1, 2, 3, 100] {
        for _ in 0..5 {
            s.peek(20, &s.ab, cost).await;
            s.peek(20, &s.ab_shadow, cost).await;
        }
    }
    assert_eq!(s.peek(20, &s.ab, 1).await, first);
    let spent = s.ask(20, &s.ab, 1).await;
    assert_eq!(spent, first, "a peek tells what the request would get");
}

/// Gives `key` the limits `before` (10 an hour, binding), spends its 10 (a refusal after them
/// waits for most of the hour: its arrival time is an hour ahead), then gives it `after`; returns
/// the set now in force.
async fn spent_then_raised<const N: usize>(
    s: &Subject,
    key: u8,
    before: [Limit; N],
    after: [Limit; N],
) -> Arc<LimitSet> {
    s.handle.set_key(&key, before).expect("valid");
    let set = s.handle.resolved(&key);
    for _ in 0..10 {
        assert!(s.ask(key, &set, 1).await.is_allowed());
    }
    let d = s.ask(key, &set, 1).await;
    assert!(d.retry_after() > Duration::from_secs(300), "{d:?}");
    s.handle.set_key(&key, after).expect("valid");
    s.handle.resolved(&key)
}

/// A limit's quota changed through the handle keeps its state (GCRA: the theoretical arrival
/// time carries over, so a key that spent its burst stays spent under a larger quota until time
/// catches up), up to the new quota's tolerance: a key that spent 10 an hour and is raised to 10
/// a second waited for the rest of the hour (its arrival time an hour ahead); it now counts as
/// spent in full under the new quota and waits one of its intervals.
pub(crate) async fn quota_change_keeps_state(s: &Subject, clock: &ManualClock) {
    let minute = |n| Limit::new("live", Quota::per_minute(n));
    s.handle.set_key(&30, [minute(10)]).expect("valid");
    let set = s.handle.resolved(&30);
    for _ in 0..10 {
        assert!(s.ask(30, &set, 1).await.is_allowed());
    }
    assert!(!s.ask(30, &set, 1).await.is_allowed());
    // Twice the quota: the state (60 s of arrivals) is kept; at 3 s a unit, none is free yet.
    s.handle.set_key(&30, [minute(20)]).expect("valid");
    let set = s.handle.resolved(&30);
    let d = s.ask(30, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    assert_eq!(d.limit(), 20);
    clock.advance(d.retry_after());
    assert!(s.ask(30, &set, 1).await.is_allowed());
    // 10 an hour spent (the arrival time an hour ahead), then raised to 10 a second.
    let hourly = |name| Limit::new(name, Quota::per_hour(10));
    let secondly = |name| Limit::new(name, Quota::per_second(10));
    let set = spent_then_raised(s, 32, [hourly("live")], [secondly("live")]).await;
    let d = s.ask(32, &set, 1).await;
    assert!(!d.is_allowed(), "spent in full under the new quota: {d:?}");
    assert_eq!(d.retry_after(), Duration::from_millis(100), "one interval");
    assert_eq!(
        d.reset(),
        Duration::from_secs(1),
        "the whole burst, no more"
    );
    clock.advance(d.retry_after());
    let d = s.ask(32, &set, 1).await;
    assert!(d.is_allowed(), "{d:?}");
    assert_eq!(d.remaining(), 0);
    // The same in a set of two limits, refused whole (nothing spent, the rebase written all the
    // same).
    let day = || {
        Limit::new(
            "day",
            Quota::with_period(1_000, Duration::from_secs(86_400)),
        )
    };
    let set = spent_then_raised(s, 33, [hourly("live"), day()], [secondly("live"), day()]).await;
    let d = s.ask(33, &set, 1).await;
    assert_eq!(
        (d.is_allowed(), d.retry_after()),
        (false, Duration::from_millis(100)),
        "{d:?}"
    );
    clock.advance(d.retry_after());
    let d = s.ask(33, &set, 1).await;
    assert!(d.is_allowed(), "{d:?}");
    // A cost of 0 (admitted, nothing spent) rebases too: 100 ms on, a unit is free.
    let set = spent_then_raised(s, 35, [hourly("live"), day()], [secondly("live"), day()]).await;
    assert!(s.ask(35, &set, 0).await.is_allowed());
    clock.advance(Duration::from_millis(100));
    let d = s.ask(35, &set, 1).await;
    assert!(d.is_allowed(), "rebased by the cost of 0: {d:?}");
    // With a shadow limit in the set (decided limit by limit), both enforced limits spent under
    // their earlier quotas: each is rebased, the one decided after the first refusal too.
    let watch = || Limit::new("watch", Quota::per_minute(1_000)).shadow(true);
    let set = spent_then_raised(
        s,
        34,
        [hourly("one"), hourly("two"), watch()],
        [secondly("one"), secondly("two"), watch()],
    )
    .await;
    let d = s.ask(34, &set, 1).await;
    assert_eq!(
        (d.is_allowed(), d.retry_after()),
        (false, Duration::from_millis(100)),
        "{d:?}"
    );
    clock.advance(d.retry_after());
    let d = s.ask(34, &set, 1).await;
    assert!(
        d.is_allowed(),
        "both limits drained from their rebased states: {d:?}"
    );
    // Another name is another state.
    s.handle
        .set_key(&30, [Limit::new("other", Quota::per_minute(20))])
        .expect("valid");
    assert_eq!(s.peek(30, &s.handle.resolved(&30), 1).await.remaining(), 19);
}

/// A sliding-window limit whose period is changed through the handle keeps its counts: each goes
/// to the window of the new period holding the latest instant it can have been made at (memory
/// and Redis alike; a fresh state would admit the whole limit again).
pub(crate) async fn window_period_change_keeps_counts(s: &Subject, clock: &ManualClock) {
    const MINUTE: u64 = 60_000_000_000;
    let live = |minutes: u64| {
        Limit::new(
            "live-window",
            Quota::with_period(10, std::time::Duration::from_nanos(minutes * MINUTE)),
        )
    };
    let resolved = |key: u8, minutes: u64| {
        s.handle.set_key(&key, [live(minutes)]).expect("valid");
        s.handle.resolved(&key)
    };
    let advance = |nanos: u64| clock.advance(std::time::Duration::from_nanos(nanos));
    // From the start of a ten-minute window.
    let into = tower_rampart::clock::Clock::now(clock) % (10 * MINUTE);
    if into > 0 {
        advance(10 * MINUTE - into);
    }
    // Key 31: 6 of 10 a minute spent; twice the period, the 6 still count.
    let set = resolved(31, 1);
    for _ in 0..6 {
        assert!(s.ask(31, &set, 1).await.is_allowed());
    }
    let set = resolved(31, 2);
    for i in 0..4 {
        assert!(s.ask(31, &set, 1).await.is_allowed(), "{i}");
    }
    let d = s.ask(31, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    // One minute again: the 10 may have been made as late as now, so 90 s on they count in this
    // minute (a peek), and at 150 s in the minute before, half slid out: 5 fit.
    let set = resolved(31, 1);
    advance(90_000_000_000);
    let d = s.peek(31, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    advance(60_000_000_000);
    for i in 0..5 {
        assert!(s.ask(31, &set, 1).await.is_allowed(), "{i}");
    }
    let d = s.ask(31, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    // Key 32: 10 of 10 per ten minutes spent late in the window, then one minute: they were made
    // within this minute as far as the state can tell, and still count.
    let set = resolved(32, 10);
    advance(10 * MINUTE - into_window(clock, 10 * MINUTE) - 10_000_000_000);
    for _ in 0..10 {
        assert!(s.ask(32, &set, 1).await.is_allowed());
    }
    advance(5_000_000_000);
    let set = resolved(32, 1);
    let d = s.ask(32, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    // Key 33: 10 of 10 per ten minutes spent at a window's start, then one minute. A refusal 10 s
    // on keeps the counts in that minute (memory keeps every decision's window; Redis writes the
    // moved counts back even on a refusal), so a minute later they are the minute before's: 50 of
    // its 60 s still weigh, 8.33 of 10, and one request fits.
    advance(10 * MINUTE - into_window(clock, 10 * MINUTE));
    let set = resolved(33, 10);
    for _ in 0..10 {
        assert!(s.ask(33, &set, 1).await.is_allowed());
    }
    let set = resolved(33, 1);
    advance(10_000_000_000);
    let d = s.ask(33, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
    advance(MINUTE);
    assert!(s.ask(33, &set, 1).await.is_allowed());
    let d = s.ask(33, &set, 1).await;
    assert!(!d.is_allowed(), "{d:?}");
}

/// How far `clock` is into its current window of `period` nanoseconds.
fn into_window(clock: &ManualClock, period: u64) -> u64 {
    tower_rampart::clock::Clock::now(clock) % period
}
