//! Whole-layer configuration from files (#19): the four config types read JSON and TOML files,
//! round-trip, fill defaults from the builders, refuse typos, and reach every builder error with
//! the same `ConfigError` as the builder set in code. The rate limiter's policies (#18): see
//! `policies.rs`.

mod errors;
mod policies;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::BoxError;
use tower_rampart::cache::{CacheConfig, FillLockConfig};
use tower_rampart::circuit_breaker::{
    CircuitBreakerConfig, SlowCallsConfig, WaitConfig, WindowConfig,
};
use tower_rampart::key::PeerIp;
use tower_rampart::rate_limit::{
    Algorithm, MissingKey, Quota, RateLimitConfig, error::RateLimited,
};
use tower_rampart::retry::{Backoff, Budget, BudgetConfig, Jitter, RetryConfig};

/// An application's settings file, with a section per layer.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AppConfig {
    rate_limit: RateLimitConfig,
    circuit_breaker: CircuitBreakerConfig,
    retry: RetryConfig,
    cache: CacheConfig,
}

/// What `app.toml` and `app.json` say, written in code.
fn expected() -> AppConfig {
    let secs = Duration::from_secs;
    let ms = Duration::from_millis;

    let mut rate_limit = RateLimitConfig::new(Quota::per_minute(100).burst(20));
    rate_limit.name = Some("api".into());
    rate_limit.algorithm = Some(Algorithm::Gcra);
    rate_limit.on_missing_key = Some(MissingKey::Reject);
    rate_limit.legacy_headers = Some(true);

    let mut circuit_breaker = CircuitBreakerConfig::default();
    circuit_breaker.name = Some("payments".into());
    circuit_breaker.failure_rate = Some(0.25);
    circuit_breaker.window = Some(WindowConfig::Time {
        span: secs(60),
        buckets: 12,
    });
    circuit_breaker.minimum_calls = Some(10);
    circuit_breaker.slow_calls = Some(SlowCallsConfig::new(secs(2), 0.5));
    circuit_breaker.wait = Some(WaitConfig::Exponential {
        initial: secs(5),
        multiplier: 2.0,
        max: secs(120),
    });
    circuit_breaker.half_open_probes = Some(3);

    let mut retry = RetryConfig::default();
    retry.name = Some("payments".into());
    retry.max_attempts = Some(4);
    retry.backoff = Some(Backoff::exponential(ms(50), 3.0, secs(2)).jitter(Jitter::Equal));
    retry.attempt_timeout = Some(ms(1500));
    retry.deadline = Some(secs(10));
    retry.budget = Some(BudgetConfig::Budget(Budget::new(10.0)));

    let mut cache = CacheConfig::new(secs(30));
    cache.name = Some("summaries".into());
    cache.stale_while_revalidate = Some(secs(60));
    cache.max_bytes = Some(16 * 1024 * 1024);

    AppConfig {
        rate_limit,
        circuit_breaker,
        retry,
        cache,
    }
}

fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/config")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Builds every layer of `app` the way an application would, adding in code what is code.
fn build_all(app: AppConfig) {
    let limiter = app
        .rate_limit
        .into_builder()
        .key(PeerIp::new())
        .http()
        .build()
        .unwrap();
    let breaker = app.circuit_breaker.into_builder().http().build().unwrap();
    let retry = app.retry.into_builder().http().build().unwrap();
    let cache = app.cache.into_builder().http().build().unwrap();

    assert_eq!(breaker.handle().name(), "payments");
    assert_eq!(retry.name(), "payments");
    assert_eq!(retry.policy().max_attempts(), 4);
    assert_eq!(retry.budget().unwrap().config().percent(), 10.0);
    let _ = (limiter, cache);
}

#[test]
fn a_toml_file_configures_every_layer() {
    let app: AppConfig = toml::from_str(&fixture("app.toml")).unwrap();
    assert_eq!(app, expected());
    build_all(app);
}

#[test]
fn a_json_file_configures_every_layer() {
    let app: AppConfig = serde_json::from_str(&fixture("app.json")).unwrap();
    assert_eq!(app, expected());
    build_all(app);
}

#[test]
fn configurations_round_trip_through_json_and_toml() {
    let mut app = expected();
    // Every optional field set, so every field is written and read back.
    app.rate_limit.wait_up_to = Some(Duration::from_millis(250));
    app.rate_limit.headers_on_success = Some(false);
    app.circuit_breaker.consecutive_failures = Some(5);
    app.circuit_breaker.max_circuits = Some(500);
    app.circuit_breaker.sync_interval = Some(Duration::from_millis(100));
    app.retry.max_delay = Some(Duration::from_secs(3));
    app.retry.jitter = Some(Jitter::Decorrelated);
    app.retry.retry_timeouts = Some(false);
    app.cache.stale_if_error = Some(Duration::from_secs(300));
    app.cache.max_background_refreshes = Some(8);
    app.cache.fill_lock = Some(FillLockConfig::new(
        Duration::from_secs(10),
        Duration::from_secs(5),
    ));

    let json = serde_json::to_string_pretty(&app).unwrap();
    assert_eq!(serde_json::from_str::<AppConfig>(&json).unwrap(), app);
    let toml = toml::to_string(&app).unwrap();
    assert_eq!(toml::from_str::<AppConfig>(&toml).unwrap(), app);

    // Durations are written as people write them.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["rate_limit"]["quota"]["period"], "1m");
    assert_eq!(v["rate_limit"]["wait_up_to"], "250ms");
    assert_eq!(v["retry"]["attempt_timeout"], "1s 500ms");
    assert_eq!(v["circuit_breaker"]["wait"]["max"], "2m");
    assert_eq!(v["cache"]["stale_if_error"], "5m");
    assert!(toml.contains(r#"deadline = "10s""#), "{toml}");

    // The other shapes of the enums round-trip too.
    let mut cb = CircuitBreakerConfig::default();
    cb.window = Some(WindowConfig::Count { calls: 50 });
    cb.wait = Some(WaitConfig::Fixed(Duration::from_secs(30)));
    let json = serde_json::to_string(&cb).unwrap();
    assert_eq!(json, r#"{"window":{"calls":50},"wait":"30s"}"#);
    assert_eq!(
        serde_json::from_str::<CircuitBreakerConfig>(&json).unwrap(),
        cb
    );
    let mut retry = RetryConfig::default();
    retry.budget = Some(BudgetConfig::Off);
    let json = serde_json::to_string(&retry).unwrap();
    assert_eq!(json, r#"{"budget":"off"}"#);
    assert_eq!(serde_json::from_str::<RetryConfig>(&json).unwrap(), retry);
    assert!(retry.into_builder().build().unwrap().budget().is_none());
}

#[test]
fn fields_left_out_keep_the_builders_defaults() {
    let cb: CircuitBreakerConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(cb, CircuitBreakerConfig::default());
    let retry: RetryConfig = toml::from_str("").unwrap();
    assert_eq!(retry, RetryConfig::default());
    let rl: RateLimitConfig = toml::from_str(r#"quota = { limit = 5, period = "1s" }"#).unwrap();
    assert_eq!(rl, RateLimitConfig::new(Quota::per_second(5)));
    let cache: CacheConfig = toml::from_str(r#"ttl = "1m""#).unwrap();
    assert_eq!(cache, CacheConfig::new(Duration::from_secs(60)));

    // Nothing set: the same layer as the builder with nothing set.
    let from_config = retry.into_builder().build().unwrap();
    let from_code = tower_rampart::retry::RetryLayer::builder().build().unwrap();
    assert_eq!(from_config.policy().backoff(), from_code.policy().backoff());
    assert_eq!(
        from_config.policy().max_attempts(),
        from_code.policy().max_attempts()
    );
    assert_eq!(
        from_config.budget().unwrap().config(),
        from_code.budget().unwrap().config()
    );
    assert_eq!(from_config.name(), "default");
    let breaker = cb.into_builder().build().unwrap();
    assert_eq!(breaker.handle().name(), "default");
    cache.into_builder().http().build().unwrap();
}

/// A limiter read from configuration limits what its file says.
#[tokio::test(start_paused = true)]
async fn a_limiter_from_a_file_enforces_its_quota() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        quota = { limit = 2, period = "1m" }
        algorithm = "sliding_window"
        "#,
    )
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(config.into_builder().build().unwrap())
        .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    for n in 0..2 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    let err = svc.ready().await.unwrap().call(2).await.unwrap_err();
    let limited = err.downcast_ref::<RateLimited>().expect("a refusal");
    assert_eq!(limited.limit(), 2);
}

#[test]
fn typos_are_refused_naming_the_field() {
    let cases: [(&str, Result<(), String>); 9] = [
        (
            "max_attempt",
            toml::from_str::<RetryConfig>("max_attempt = 3")
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        (
            "intial",
            toml::from_str::<RetryConfig>(r#"backoff = { intial = "1s" }"#)
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        (
            "percnt",
            toml::from_str::<RetryConfig>("budget = { percnt = 5.0 }")
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        (
            "failure_rte",
            serde_json::from_str::<CircuitBreakerConfig>(r#"{"failure_rte":0.5}"#)
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        (
            "treshold",
            serde_json::from_str::<CircuitBreakerConfig>(
                r#"{"slow_calls":{"treshold":"1s","rate":0.5}}"#,
            )
            .map(drop)
            .map_err(|e| e.to_string()),
        ),
        (
            "brust",
            toml::from_str::<RateLimitConfig>(r#"quota = { limit = 1, period = "1s", brust = 2 }"#)
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        (
            "legacy_header",
            toml::from_str::<RateLimitConfig>(
                "quota = { limit = 1, period = \"1s\" }\nlegacy_header = true",
            )
            .map(drop)
            .map_err(|e| e.to_string()),
        ),
        (
            "stale_while_revalidating",
            toml::from_str::<CacheConfig>("ttl = \"1s\"\nstale_while_revalidating = \"1s\"")
                .map(drop)
                .map_err(|e| e.to_string()),
        ),
        (
            "hld",
            toml::from_str::<CacheConfig>(
                "ttl = \"1s\"\nfill_lock = { hld = \"1s\", wait = \"1s\" }",
            )
            .map(drop)
            .map_err(|e| e.to_string()),
        ),
    ];
    for (typo, result) in cases {
        let e = result.expect_err(typo);
        assert!(
            e.contains(&format!("unknown field `{typo}`")),
            "{typo}: {e}"
        );
    }

    // The enums that take one of two shapes say which shapes they take.
    let e = serde_json::from_str::<CircuitBreakerConfig>(r#"{"window":{"calls":10,"span":"1s"}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("a window of `{ calls = 100 }` or"), "{e}");
    let e = serde_json::from_str::<CircuitBreakerConfig>(r#"{"wait":true}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains(r#"a wait of "30s" or"#), "{e}");
    let e = serde_json::from_str::<CircuitBreakerConfig>(r#"{"wait":"soon"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains(r#"invalid duration "soon""#), "{e}");
    let e = toml::from_str::<CircuitBreakerConfig>(
        r#"wait = { initial = "1s", multiplier = 2.0, maximum = "1m" }"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `maximum`"), "{e}");
    let e = serde_json::from_str::<RetryConfig>(r#"{"budget":"none"}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains(r#"or "off""#), "{e}");

    // A required field left out is named too.
    let e = toml::from_str::<CacheConfig>("max_bytes = 1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `ttl`"), "{e}");
    // The rate limiter's `quota` or `limits` is required by its builder (see errors.rs).
}
