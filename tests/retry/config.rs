//! Invalid configuration is refused at build time, naming the setting and saying what to fix.

use std::time::Duration;

use tower_rampart::retry::{Backoff, Budget, Jitter, RetryLayer};

#[test]
fn every_bad_setting_is_named_in_the_error() {
    let b = RetryLayer::builder;
    let ms = Duration::from_millis;
    let cases = [
        (
            b().max_attempts(0).build().err(),
            "invalid max_attempts: must be from 1 (no retries) to 100 (got 0)",
        ),
        (
            b().max_attempts(101).build().err(),
            "invalid max_attempts: must be from 1 (no retries) to 100 (got 101)",
        ),
        (
            b().fixed_backoff(Duration::ZERO).build().err(),
            "invalid backoff: the initial delay must be longer than zero",
        ),
        (
            b().exponential_backoff(ms(100), f64::NAN, ms(1000))
                .build()
                .err(),
            "invalid backoff: the multiplier must be a finite number from 1 to 1000 (got NaN)",
        ),
        (
            b().exponential_backoff(ms(100), -2.0, ms(1000))
                .build()
                .err(),
            "invalid backoff: the multiplier must be a finite number from 1 to 1000 (got -2)",
        ),
        (
            b().exponential_backoff(ms(100), f64::INFINITY, ms(1000))
                .build()
                .err(),
            "invalid backoff: the multiplier must be a finite number from 1 to 1000 (got inf)",
        ),
        (
            b().exponential_backoff(ms(100), 2.0, ms(50)).build().err(),
            "invalid backoff: the maximum delay (50ms) must not be shorter than the initial delay (100ms)",
        ),
        (
            b().max_delay(Duration::from_secs(7200)).build().err(),
            "invalid backoff: the maximum delay must be at most 3600s (got 7200s)",
        ),
        (
            b().attempt_timeout(Duration::ZERO).build().err(),
            "invalid attempt_timeout: must be longer than zero",
        ),
        (
            b().deadline(Duration::ZERO).build().err(),
            "invalid deadline: must be longer than zero",
        ),
        (
            b().deadline(Duration::MAX).build().err(),
            "invalid deadline: must be at most 86400s (got 18446744073709551615.999999999s)",
        ),
        (
            b().budget(Budget::new(f64::NAN)).build().err(),
            "invalid budget: the percentage must be a number from 0 to 1000 (got NaN)",
        ),
        (
            b().budget(Budget::new(-5.0)).build().err(),
            "invalid budget: the percentage must be a number from 0 to 1000 (got -5)",
        ),
        (
            b().budget(Budget::new(5000.0)).build().err(),
            "invalid budget: the percentage must be a number from 0 to 1000 (got 5000)",
        ),
        (
            b().budget(Budget::new(10.0).period(Duration::ZERO))
                .build()
                .err(),
            "invalid budget: the period must be from 1s to 600s (got 0ns)",
        ),
        (
            b().budget(Budget::new(10.0).min_per_second(2_000_000))
                .build()
                .err(),
            "invalid budget: the minimum must be at most 1000000 retries per second (got 2000000)",
        ),
        (
            b().budget(Budget::new(0.0).min_per_second(0)).build().err(),
            "invalid budget: a budget of 0% with no minimum allows no retries at all; to turn retries off, set max_attempts(1)",
        ),
        (
            b().name("").build().err(),
            "invalid name: \"\" must be 1 to 64 characters of letters, digits and -_.:",
        ),
        (
            RetryLayer::custom(()).name("has space").build().err(),
            "invalid name: \"has space\" must be 1 to 64 characters of letters, digits and -_.:",
        ),
    ];
    for (err, expected) in cases {
        let err = err.expect("refused");
        assert_eq!(err.to_string(), expected);
    }
    let err = b().max_attempts(0).build().unwrap_err();
    assert_eq!(err.setting(), "max_attempts");
}

#[test]
fn sensible_settings_are_accepted() {
    let layer = RetryLayer::builder()
        .max_attempts(1)
        .backoff(
            Backoff::exponential(Duration::from_millis(50), 1.5, Duration::from_secs(30))
                .jitter(Jitter::Decorrelated),
        )
        .attempt_timeout(Duration::from_secs(2))
        .deadline(Duration::from_secs(10))
        .budget(
            Budget::new(12.5)
                .min_per_second(0)
                .period(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    assert_eq!(layer.policy().max_attempts(), 1);
    assert_eq!(layer.budget().unwrap().config().percent(), 12.5);
}

#[test]
fn configuration_types_deserialize() {
    let backoff: Backoff = serde_json::from_value(serde_json::json!({
        "initial": "100ms",
        "multiplier": 2.0,
        "max": "5s",
        "jitter": "decorrelated",
    }))
    .unwrap();
    assert_eq!(
        backoff,
        Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))
            .jitter(Jitter::Decorrelated)
    );
    let budget: Budget = serde_json::from_value(serde_json::json!({
        "percent": 12.5, "min_per_second": 3, "period": "10s",
    }))
    .unwrap();
    assert_eq!(budget, Budget::new(12.5).min_per_second(3));
    // Every field is optional: the defaults fill the rest.
    let budget: Budget = serde_json::from_value(serde_json::json!({ "percent": 5.0 })).unwrap();
    assert_eq!(budget, Budget::new(5.0));
    let backoff: Backoff = serde_json::from_value(serde_json::json!({ "max": "1s" })).unwrap();
    assert_eq!(
        backoff,
        Backoff::default().with_max_delay(Duration::from_secs(1))
    );
    // The old {"secs", "nanos"} form is refused with what to write instead.
    let e = serde_json::from_value::<Budget>(serde_json::json!({
        "period": {"secs": 10, "nanos": 0},
    }))
    .unwrap_err()
    .to_string();
    assert!(e.contains(r#"write a duration such as "100ms""#), "{e}");
}

/// Regression (#5 review): `fixed_backoff` and `exponential_backoff` once replaced the jitter and
/// the maximum delay set before them, so the result depended on the order of the setters.
#[test]
fn jitter_and_max_delay_hold_whatever_the_order_of_the_setters() {
    use std::time::Duration as D;
    let ms = D::from_millis;
    let built = |b: tower_rampart::retry::RetryBuilder| *b.build().unwrap().policy().backoff();
    let before = built(
        RetryLayer::builder()
            .jitter(Jitter::Equal)
            .max_delay(D::from_secs(10))
            .fixed_backoff(ms(200)),
    );
    let after = built(
        RetryLayer::builder()
            .fixed_backoff(ms(200))
            .jitter(Jitter::Equal)
            .max_delay(D::from_secs(10)),
    );
    let expected = Backoff::fixed(ms(200))
        .jitter(Jitter::Equal)
        .with_max_delay(D::from_secs(10));
    assert_eq!(before, expected);
    assert_eq!(after, expected);

    // The same for an exponential schedule: the explicit maximum wins over the schedule's cap.
    let before = built(
        RetryLayer::builder()
            .jitter(Jitter::Decorrelated)
            .max_delay(D::from_secs(30))
            .exponential_backoff(ms(50), 3.0, D::from_secs(2)),
    );
    let after = built(
        RetryLayer::builder()
            .exponential_backoff(ms(50), 3.0, D::from_secs(2))
            .max_delay(D::from_secs(30))
            .jitter(Jitter::Decorrelated),
    );
    let expected = Backoff::exponential(ms(50), 3.0, D::from_secs(30)).jitter(Jitter::Decorrelated);
    assert_eq!(before, expected);
    assert_eq!(after, expected);

    // Without overrides each schedule keeps its own: fixed has no jitter and caps at its delay,
    // exponential has full jitter.
    assert_eq!(
        built(RetryLayer::builder().fixed_backoff(ms(200))),
        Backoff::fixed(ms(200))
    );
    assert_eq!(
        built(RetryLayer::builder().exponential_backoff(ms(50), 2.0, D::from_secs(1))),
        Backoff::exponential(ms(50), 2.0, D::from_secs(1))
    );
    // A whole `Backoff` given later does not drop the overrides either.
    assert_eq!(
        built(
            RetryLayer::builder()
                .jitter(Jitter::None)
                .backoff(Backoff::exponential(ms(10), 2.0, D::from_secs(1)))
        ),
        Backoff::exponential(ms(10), 2.0, D::from_secs(1)).jitter(Jitter::None)
    );
}
