//! Every builder error a configuration file can reach comes out of `into_builder().build()` as
//! the same `ConfigError` (same setting, same words) as from the builder set in code: there is one
//! validation, the builder's.

use std::time::Duration;

use serde_json::{Value, json};
use tower_rampart::ConfigError;
use tower_rampart::backend::RedisBackend;
use tower_rampart::cache::{CacheConfig, CacheLayer};
use tower_rampart::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Algorithm, Limit, MAX_LIMITS, MAX_PERIOD, Quota, RateLimitConfig, RateLimitLayer,
};
use tower_rampart::retry::{Backoff, Budget, RetryConfig, RetryLayer};

fn read<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// Asserts that the config error and the code error are equal, and returns it.
fn same(from_config: Result<(), ConfigError>, from_code: Result<(), ConfigError>) -> ConfigError {
    let config = from_config.expect_err("the configuration must be refused");
    let code = from_code.expect_err("the builder must refuse the same setting");
    assert_eq!(config, code);
    assert!(config.to_string().starts_with("invalid "), "{config}");
    assert!(!config.reason().starts_with(char::is_uppercase), "{config}");
    config
}

#[test]
fn rate_limit_errors_are_the_builders() {
    let rl = |v: Value| read::<RateLimitConfig>(v).into_builder().build().map(drop);
    let code = |q: Quota, a: Algorithm| {
        RateLimitLayer::builder()
            .quota(q)
            .algorithm(a)
            .build()
            .map(drop)
    };
    let gcra = Algorithm::Gcra;
    let cases = [
        (
            rl(json!({"quota": {"limit": 0, "period": "1m"}})),
            code(Quota::per_minute(0), gcra),
            "at least 1 request",
        ),
        (
            rl(json!({"quota": {"limit": 5, "period": "0"}})),
            code(Quota::with_period(5, Duration::ZERO), gcra),
            "longer than zero",
        ),
        (
            rl(json!({"quota": {"limit": 5, "period": "400d"}})),
            code(
                Quota::with_period(5, Duration::from_secs(400 * 86_400)),
                gcra,
            ),
            "at most 366 days",
        ),
        (
            rl(json!({"quota": {"limit": u32::MAX, "period": "10ns"}})),
            code(Quota::with_period(u32::MAX, Duration::from_nanos(10)), gcra),
            "more than one per nanosecond",
        ),
        (
            rl(json!({"quota": {"limit": 1, "period": "1s", "burst": 0}})),
            code(Quota::per_second(1).burst(0), gcra),
            "burst must be at least 1",
        ),
        (
            rl(json!({"quota": {"limit": 1, "period": "366d", "burst": u32::MAX}})),
            code(Quota::with_period(1, MAX_PERIOD).burst(u32::MAX), gcra),
            "lower the burst",
        ),
        (
            rl(
                json!({"quota": {"limit": 5, "period": "1s", "burst": 2}, "algorithm": "sliding_window"}),
            ),
            code(Quota::per_second(5).burst(2), Algorithm::SlidingWindow),
            "GCRA algorithm only",
        ),
        (
            rl(json!({"quota": {"limit": 5, "period": "1s"}, "name": "api v1"})),
            RateLimitLayer::builder()
                .quota(Quota::per_second(5))
                .name("api v1")
                .build()
                .map(drop),
            "must be 1 to 64 characters",
        ),
    ];
    for (config, code, needle) in cases {
        let e = same(config, code);
        assert!(e.to_string().contains(needle), "{e} should say {needle}");
    }
}

/// The policies (#18): `quota` or `limits`, the limits and the tiers.
#[test]
fn rate_limit_policy_errors_are_the_builders() {
    let rl = |v: Value| read::<RateLimitConfig>(v).into_builder().build().map(drop);
    let b = RateLimitLayer::builder;
    let minute = |name: &'static str, n: u32| Limit::new(name, Quota::per_minute(n));
    let limit = |name: &str, n: u32| json!({"name": name, "limit": n, "period": "1m"});
    let nine: Vec<Value> = (0..=MAX_LIMITS)
        .map(|i| limit(&format!("l{i}"), 10))
        .collect();
    let cases = [
        (
            rl(json!({})),
            b().build().map(drop),
            "quota",
            "no quota was set",
        ),
        (
            rl(json!({"quota": {"limit": 5, "period": "1m"}, "limits": [limit("minute", 5)]})),
            b().quota(Quota::per_minute(5))
                .limits([minute("minute", 5)])
                .build()
                .map(drop),
            "limits",
            "both .quota(..) and .limits(..) were set",
        ),
        (
            rl(json!({"limits": []})),
            b().limits(Vec::new()).build().map(drop),
            "limits",
            "at least one limit",
        ),
        (
            rl(json!({ "limits": nine })),
            b().limits(
                (0..=MAX_LIMITS).map(|i| Limit::new(format!("l{i}"), Quota::per_minute(10))),
            )
            .build()
            .map(drop),
            "limits",
            "at most 8 limits (got 9)",
        ),
        (
            rl(json!({"limits": [limit("minute", 5), limit("minute", 50)]})),
            b().limits([minute("minute", 5), minute("minute", 50)])
                .build()
                .map(drop),
            "limits",
            "names must differ",
        ),
        (
            rl(json!({"limits": [limit("per minute", 5)]})),
            b().limits([minute("per minute", 5)]).build().map(drop),
            "limits",
            r#"limit "per minute": "#,
        ),
        (
            rl(json!({"limits": [limit("minute", 5), limit("hour", 0)]})),
            b().limits([minute("minute", 5), minute("hour", 0)])
                .build()
                .map(drop),
            "limits",
            r#"limit "hour": the limit must be at least 1"#,
        ),
        (
            rl(json!({
                "limits": [{"name": "second", "limit": 5, "period": "1s", "burst": 2}],
                "algorithm": "sliding_window",
            })),
            b().limits([Limit::new("second", Quota::per_second(5).burst(2))])
                .algorithm(Algorithm::SlidingWindow)
                .build()
                .map(drop),
            "limits",
            "GCRA algorithm only",
        ),
        (
            rl(
                json!({"quota": {"limit": 5, "period": "1m"}, "tiers": {"pro plan": [limit("minute", 50)]}}),
            ),
            b().quota(Quota::per_minute(5))
                .tier("pro plan", [minute("minute", 50)])
                .build()
                .map(drop),
            "tier",
            r#"tier "pro plan": "#,
        ),
        (
            rl(json!({"quota": {"limit": 5, "period": "1m"}, "tiers": {"pro": []}})),
            b().quota(Quota::per_minute(5))
                .tier("pro", Vec::new())
                .build()
                .map(drop),
            "tier",
            r#"tier "pro": a limit set needs at least one limit"#,
        ),
        (
            rl(json!({
                "quota": {"limit": 5, "period": "1m"},
                "tiers": {"pro": [{"name": "minute", "limit": 5, "period": "0"}]},
            })),
            b().quota(Quota::per_minute(5))
                .tier(
                    "pro",
                    [Limit::new("minute", Quota::with_period(5, Duration::ZERO))],
                )
                .build()
                .map(drop),
            "tier",
            "longer than zero",
        ),
    ];
    for (config, code, setting, needle) in cases {
        let e = same(config, code);
        assert_eq!(e.setting(), setting, "{e}");
        assert!(e.to_string().contains(needle), "{e} should say {needle}");
    }
}

#[test]
fn circuit_breaker_errors_are_the_builders() {
    let cb = |v: Value| {
        read::<CircuitBreakerConfig>(v)
            .into_builder()
            .build()
            .map(drop)
    };
    let b = CircuitBreakerLayer::builder;
    let s = Duration::from_secs;
    let cases = [
        (
            cb(json!({"failure_rate": 1.5})),
            b().failure_rate(1.5).build().map(drop),
            "failure_rate",
        ),
        (
            cb(json!({"slow_calls": {"threshold": "1s", "rate": 0.0}})),
            b().slow_calls(s(1), 0.0).build().map(drop),
            "slow_calls",
        ),
        (
            cb(json!({"slow_calls": {"threshold": "0", "rate": 0.5}})),
            b().slow_calls(Duration::ZERO, 0.5).build().map(drop),
            "slow_calls",
        ),
        (
            cb(json!({"window": {"calls": 0}})),
            b().window(0).build().map(drop),
            "window",
        ),
        (
            cb(json!({"window": {"span": "1m", "buckets": 0}})),
            b().time_window(s(60), 0).build().map(drop),
            "time_window",
        ),
        (
            cb(json!({"window": {"span": "5ns", "buckets": 10}})),
            b().time_window(Duration::from_nanos(5), 10)
                .build()
                .map(drop),
            "time_window",
        ),
        (
            cb(json!({"window": {"calls": 10}, "minimum_calls": 11})),
            b().window(10).minimum_calls(11).build().map(drop),
            "minimum_calls",
        ),
        (
            cb(json!({"consecutive_failures": 0})),
            b().consecutive_failures(0).build().map(drop),
            "consecutive_failures",
        ),
        (
            cb(json!({"wait": "0"})),
            b().wait_duration(Duration::ZERO).build().map(drop),
            "wait_duration",
        ),
        (
            cb(json!({"wait": {"initial": "1s", "multiplier": 0.5, "max": "1m"}})),
            b().exponential_wait(s(1), 0.5, s(60)).build().map(drop),
            "exponential_wait",
        ),
        (
            cb(json!({"wait": {"initial": "1m", "multiplier": 2.0, "max": "1s"}})),
            b().exponential_wait(s(60), 2.0, s(1)).build().map(drop),
            "exponential_wait",
        ),
        (
            cb(json!({"half_open_probes": 0})),
            b().half_open_probes(0).build().map(drop),
            "half_open_probes",
        ),
        (
            cb(json!({"name": ""})),
            b().name("").build().map(drop),
            "name",
        ),
    ];
    for (config, code, setting) in cases {
        let e = same(config, code);
        assert_eq!(e.setting(), setting, "{e}");
    }

    // Per-key circuits: the cap on how many.
    let key = || key_fn(|n: &u32| Some(*n));
    let e = same(
        read::<CircuitBreakerConfig>(json!({"max_circuits": 0}))
            .into_builder()
            .key(key())
            .build()
            .map(drop),
        b().max_circuits(0).key(key()).build().map(drop),
    );
    assert_eq!(e.setting(), "max_circuits");
}

/// The shared circuit's settings, checked when a backend is added in code.
#[tokio::test]
async fn shared_circuit_errors_are_the_builders() {
    // Never connected to: build refuses the settings before any call.
    let backend = || RedisBackend::connect_lazy("redis://127.0.0.1:1/").unwrap();
    let b = CircuitBreakerLayer::builder;
    let e = same(
        read::<CircuitBreakerConfig>(json!({"sync_interval": "2h"}))
            .into_builder()
            .backend(backend())
            .build()
            .map(drop),
        b().sync_interval(Duration::from_secs(7200))
            .backend(backend())
            .build()
            .map(drop),
    );
    assert_eq!(e.setting(), "sync_interval");
    let e = same(
        read::<CircuitBreakerConfig>(
            json!({"sync_interval": "1s", "window": {"span": "1s", "buckets": 10}}),
        )
        .into_builder()
        .backend(backend())
        .build()
        .map(drop),
        b().sync_interval(Duration::from_secs(1))
            .time_window(Duration::from_secs(1), 10)
            .backend(backend())
            .build()
            .map(drop),
    );
    assert_eq!(e.setting(), "time_window");
}

#[test]
fn retry_errors_are_the_builders() {
    let r = |v: Value| read::<RetryConfig>(v).into_builder().build().map(drop);
    let b = RetryLayer::builder;
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let cases = [
        (
            r(json!({"max_attempts": 0})),
            b().max_attempts(0).build().map(drop),
            "max_attempts",
        ),
        (
            r(json!({"max_attempts": 101})),
            b().max_attempts(101).build().map(drop),
            "max_attempts",
        ),
        (
            r(json!({"backoff": {"initial": "0"}})),
            b().backoff(Backoff::exponential(Duration::ZERO, 2.0, s(5)))
                .build()
                .map(drop),
            "backoff",
        ),
        (
            r(json!({"backoff": {"multiplier": 0.5}})),
            b().exponential_backoff(ms(100), 0.5, s(5))
                .build()
                .map(drop),
            "backoff",
        ),
        (
            r(json!({"backoff": {"initial": "10s"}})),
            b().exponential_backoff(s(10), 2.0, s(5)).build().map(drop),
            "backoff",
        ),
        (
            r(json!({"max_delay": "2h"})),
            b().max_delay(s(7200)).build().map(drop),
            "backoff",
        ),
        (
            r(json!({"attempt_timeout": "0"})),
            b().attempt_timeout(Duration::ZERO).build().map(drop),
            "attempt_timeout",
        ),
        (
            r(json!({"deadline": "2d"})),
            b().deadline(s(2 * 86_400)).build().map(drop),
            "deadline",
        ),
        (
            r(json!({"budget": {"percent": 5000.0}})),
            b().budget(Budget::new(5000.0)).build().map(drop),
            "budget",
        ),
        (
            r(json!({"budget": {"period": "20m"}})),
            b().budget(Budget::default().period(s(1200)))
                .build()
                .map(drop),
            "budget",
        ),
        (
            r(json!({"budget": {"min_per_second": 2_000_000}})),
            b().budget(Budget::default().min_per_second(2_000_000))
                .build()
                .map(drop),
            "budget",
        ),
        (
            r(json!({"budget": {"percent": 0.0, "min_per_second": 0}})),
            b().budget(Budget::new(0.0).min_per_second(0))
                .build()
                .map(drop),
            "budget",
        ),
        (
            r(json!({"name": "payments api"})),
            b().name("payments api").build().map(drop),
            "name",
        ),
    ];
    for (config, code, setting) in cases {
        let e = same(config, code);
        assert_eq!(e.setting(), setting, "{e}");
    }
}

#[test]
fn cache_errors_are_the_builders() {
    let c = |v: Value| {
        read::<CacheConfig>(v)
            .into_builder()
            .http()
            .build()
            .map(drop)
    };
    let b = || CacheLayer::builder().http().ttl(Duration::from_secs(1));
    let cases = [
        (
            c(json!({"ttl": "0"})),
            b().ttl(Duration::ZERO).build().map(drop),
            "ttl",
        ),
        (
            c(json!({"ttl": "1s", "max_bytes": 0})),
            b().max_bytes(0).build().map(drop),
            "max_bytes",
        ),
        (
            c(json!({"ttl": "1s", "max_background_refreshes": 0})),
            b().max_background_refreshes(0).build().map(drop),
            "max_background_refreshes",
        ),
        (
            c(json!({"ttl": "1s", "fill_lock": {"hold": "0", "wait": "1s"}})),
            b().fill_lock(Duration::ZERO, Duration::from_secs(1))
                .build()
                .map(drop),
            "fill_lock",
        ),
        (
            c(json!({"ttl": "1s", "name": "a/b"})),
            b().name("a/b").build().map(drop),
            "name",
        ),
    ];
    for (config, code, setting) in cases {
        let e = same(config, code);
        assert_eq!(e.setting(), setting, "{e}");
    }
}
