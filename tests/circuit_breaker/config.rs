//! Invalid configuration is refused at build time, naming the setting.

use std::time::Duration;

use tower_rampart::circuit_breaker::CircuitBreakerLayer;

#[test]
fn every_bad_setting_is_named_in_the_error() {
    let b = CircuitBreakerLayer::builder;
    let cases = [
        (
            b().failure_rate(0.0).build().err(),
            "invalid failure_rate: must be greater than 0 and at most 1 (got 0)",
        ),
        (
            b().failure_rate(1.5).build().err(),
            "invalid failure_rate: must be greater than 0 and at most 1 (got 1.5)",
        ),
        (
            b().failure_rate(f64::NAN).build().err(),
            "invalid failure_rate: must be greater than 0 and at most 1 (got NaN)",
        ),
        (
            b().window(0).build().err(),
            "invalid window: must be from 1 to 1000000 calls (got 0)",
        ),
        (
            b().window(10).minimum_calls(11).build().err(),
            "invalid minimum_calls: must be from 1 to the window size, 10 (got 11)",
        ),
        (
            b().minimum_calls(0).build().err(),
            "invalid minimum_calls: must be from 1 to the window size, 100 (got 0)",
        ),
        (
            b().consecutive_failures(0).build().err(),
            "invalid consecutive_failures: must be at least 1 (got 0)",
        ),
        (
            b().wait_duration(Duration::ZERO).build().err(),
            "invalid wait_duration: must be longer than zero",
        ),
        (
            b().exponential_wait(Duration::from_secs(1), f64::NAN, Duration::from_secs(5))
                .build()
                .err(),
            "invalid exponential_wait: the multiplier must be a finite number of at least 1 (got NaN)",
        ),
        (
            b().exponential_wait(Duration::from_secs(1), 0.5, Duration::from_secs(5))
                .build()
                .err(),
            "invalid exponential_wait: the multiplier must be a finite number of at least 1 (got 0.5)",
        ),
        (
            b().exponential_wait(Duration::from_secs(10), 2.0, Duration::from_secs(5))
                .build()
                .err(),
            "invalid exponential_wait: the maximum (5s) must not be shorter than the initial wait (10s)",
        ),
        (
            b().half_open_probes(0).build().err(),
            "invalid half_open_probes: must be from 1 to 8191 (got 0)",
        ),
        (
            b().name("no spaces").build().err(),
            "invalid name: \"no spaces\" must be 1 to 64 characters of letters, digits and -_.:",
        ),
    ];
    for (err, want) in cases {
        assert_eq!(err.expect("refused").to_string(), want);
    }
    // A window smaller than the default minimum of 20 lowers the minimum with it.
    assert!(b().window(5).build().is_ok());
}
