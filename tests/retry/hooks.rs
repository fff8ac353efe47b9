//! Hooks: every retry scheduled (attempt, delay, reason), budget refusals and give-ups reach
//! `.on_event` hooks; a panicking hook breaks neither the request nor the other hooks (#19).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Layer;
use tower_rampart::classify::Reason;
use tower_rampart::hooks::Event;
use tower_rampart::retry::policy::GiveUp;
use tower_rampart::retry::{Budget, RetryEvent, RetryLayer};

use crate::{MS, Scripted, call};

#[tokio::test(start_paused = true)]
async fn retries_budget_and_give_ups_reach_the_hooks_in_order() {
    let seen: Arc<Mutex<Vec<RetryEvent>>> = Arc::default();
    let log = Arc::clone(&seen);
    // 2 retries in the budget: the first request retries twice and gives up on attempts; the
    // second finds the budget spent.
    let layer = RetryLayer::builder()
        .name("payments")
        .max_attempts(3)
        .fixed_backoff(10 * MS)
        .budget(
            Budget::new(0.0)
                .min_per_second(1)
                .period(Duration::from_secs(2)),
        )
        .on_event(move |e: &RetryEvent| log.lock().unwrap().push(e.clone()))
        .build()
        .unwrap();
    let upstream = Scripted::failing();
    let mut svc = layer.layer(upstream.service());
    call(&mut svc, 1).await.unwrap_err();
    call(&mut svc, 2).await.unwrap_err();
    assert_eq!(upstream.calls(), 4);

    let seen = seen.lock().unwrap();
    let kinds: Vec<_> = seen.iter().map(|e| (e.layer_name(), e.kind())).collect();
    assert_eq!(
        kinds,
        [
            ("payments", "retry_scheduled"),
            ("payments", "retry_scheduled"),
            ("payments", "gave_up"),
            ("payments", "budget_exhausted"),
            ("payments", "gave_up"),
        ]
    );
    for (event, expected_attempt) in seen[..2].iter().zip([1, 2]) {
        let RetryEvent::RetryScheduled {
            attempt,
            delay,
            reason,
            ..
        } = event
        else {
            panic!("{event:?}");
        };
        assert_eq!(*attempt, expected_attempt);
        assert_eq!(*delay, 10 * MS);
        assert_eq!(*reason, Reason::Error);
    }
    let RetryEvent::GaveUp {
        attempts,
        why,
        cause,
        ..
    } = &seen[2]
    else {
        panic!("{:?}", seen[2]);
    };
    assert_eq!((*attempts, *why, *cause), (3, GiveUp::Attempts, "attempts"));
    let RetryEvent::BudgetExhausted {
        attempts, reason, ..
    } = &seen[3]
    else {
        panic!("{:?}", seen[3]);
    };
    assert_eq!((*attempts, *reason), (1, Reason::Error));
    let RetryEvent::GaveUp { why, cause, .. } = &seen[4] else {
        panic!("{:?}", seen[4]);
    };
    assert_eq!((*why, *cause), (GiveUp::Budget, "budget"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_hook_breaks_neither_the_request_nor_the_other_hooks() {
    let counted = Arc::new(Mutex::new(0));
    let count = Arc::clone(&counted);
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .fixed_backoff(10 * MS)
        .no_budget()
        .on_event(|_: &RetryEvent| panic!("a broken hook"))
        .on_event(move |_: &RetryEvent| *count.lock().unwrap() += 1)
        .build()
        .unwrap();
    // Fails twice, then answers: the retries go on past the panicking hook.
    let upstream = Scripted::new(|n| n < 2);
    let mut svc = layer.layer(upstream.service());
    assert_eq!(call(&mut svc, 7).await.unwrap(), 7);
    assert_eq!(upstream.calls(), 3);
    assert_eq!(*counted.lock().unwrap(), 2);
}
