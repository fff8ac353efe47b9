//! A limiter's policies from a file (#18): several limits, tiers and shadow mode read from JSON
//! and TOML, written back, and enforced per tier; the resolver from a key to its tier stays code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
use tower_rampart::BoxError;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{
    Limit, Quota, RateLimitConfig, RateLimitEvent, error::RateLimited,
};

use super::fixture;

const DAY: Duration = Duration::from_secs(86_400);

/// What `policies.toml` and `policies.json` say, written in code.
fn expected() -> RateLimitConfig {
    let mut config = RateLimitConfig::with_limits([
        Limit::new("minute", Quota::per_minute(10)),
        Limit::new("day", Quota::with_period(1000, DAY)).shadow(true),
    ]);
    config.name = Some("events".into());
    config.shadow = Some(false);
    config.tiers = BTreeMap::from([
        (
            "pro".to_owned(),
            vec![
                Limit::new("minute", Quota::per_minute(1000).burst(100)),
                Limit::new("day", Quota::with_period(100_000, DAY)),
            ],
        ),
        (
            "team".to_owned(),
            vec![Limit::new("minute", Quota::per_minute(100))],
        ),
    ]);
    config
}

#[test]
fn toml_and_json_files_configure_limits_and_tiers() {
    for (file, config) in [
        (
            "policies.toml",
            toml::from_str::<RateLimitConfig>(&fixture("policies.toml")).unwrap(),
        ),
        (
            "policies.json",
            serde_json::from_str::<RateLimitConfig>(&fixture("policies.json")).unwrap(),
        ),
    ] {
        assert_eq!(config, expected(), "{file}");
        let layer = config
            .into_builder()
            .key(key_fn(|r: &(u64, &'static str)| Some(*r)))
            .tier_of(|&(_, plan): &(u64, &'static str)| Some(plan))
            .build()
            .unwrap();
        let handle = layer.handle();
        assert_eq!(Some(handle.default_limits()), expected().limits, "{file}");
        let expected = expected();
        let want: Vec<(&str, Vec<Limit>)> = expected
            .tiers
            .iter()
            .map(|(name, limits)| (name.as_str(), limits.clone()))
            .collect();
        assert_eq!(handle.tiers(), want, "{file}");
    }
}

#[test]
fn policies_round_trip_through_json_and_toml() {
    let mut config = expected();
    config.shadow = Some(true);
    // A burst set to the limit is still a burst that was set: written and read back.
    config.limits = Some(vec![
        Limit::new("second", Quota::per_second(5).burst(5)),
        Limit::new("day", Quota::with_period(1000, DAY)).shadow(true),
    ]);

    let json = serde_json::to_string_pretty(&config).unwrap();
    assert_eq!(
        serde_json::from_str::<RateLimitConfig>(&json).unwrap(),
        config
    );
    let toml = toml::to_string(&config).unwrap();
    assert_eq!(toml::from_str::<RateLimitConfig>(&toml).unwrap(), config);

    // Written as people write them: durations as strings, optional fields left out when unset.
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        v["limits"],
        serde_json::json!([
            { "name": "second", "limit": 5, "period": "1s", "burst": 5 },
            { "name": "day", "limit": 1000, "period": "1day", "shadow": true },
        ])
    );
    assert_eq!(
        v["tiers"]["team"],
        serde_json::json!([{ "name": "minute", "limit": 100, "period": "1m" }])
    );
    assert_eq!(v["shadow"], true);
    assert!(v.get("quota").is_none(), "{json}");

    // A quota-only configuration writes no policy fields at all.
    let plain = RateLimitConfig::new(Quota::per_second(5));
    assert_eq!(
        serde_json::to_string(&plain).unwrap(),
        r#"{"quota":{"limit":5,"period":"1s"}}"#
    );
}

/// A request of `user` on `plan`, and the answer it gets.
async fn call<S>(svc: &mut S, user: u64, plan: &'static str) -> Result<u64, BoxError>
where
    S: Service<(u64, &'static str), Response = u64, Error = BoxError>,
{
    svc.ready().await?.call((user, plan)).await
}

fn refusal(result: Result<u64, BoxError>) -> (&'static str, u32) {
    let err = result.expect_err("a refusal");
    let limited = err.downcast_ref::<RateLimited>().expect("RateLimited");
    (limited.policy(), limited.limit())
}

/// A limiter with two tiers from a TOML file limits each key at its tier's quotas; keys with no
/// tier, or a tier the file does not have, get the default quota.
#[tokio::test(start_paused = true)]
async fn a_toml_limiter_with_two_tiers_enforces_each_tiers_quotas() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        quota = { limit = 2, period = "1m" }

        [tiers]
        team = [{ name = "minute", limit = 3, period = "1m" }]
        pro = [
            { name = "minute", limit = 5, period = "1m" },
            { name = "hour", limit = 6, period = "1h" },
        ]
        "#,
    )
    .unwrap();
    let mut svc = ServiceBuilder::new()
        .layer(
            config
                .into_builder()
                .key(key_fn(|r: &(u64, &'static str)| Some(*r)))
                .tier_of(|&(_, plan): &(u64, &'static str)| (plan != "free").then_some(plan))
                .build()
                .unwrap(),
        )
        .service(service_fn(|(user, _): (u64, &'static str)| async move {
            Ok::<_, BoxError>(user)
        }));

    // Each key spends its own tier's quota, then is refused by the limit that binds.
    for (user, plan, admitted, refused_by) in [
        (1, "free", 2, ("default", 2)),
        (2, "team", 3, ("minute", 3)),
        (3, "pro", 5, ("minute", 5)),
        // A tier the file does not have: the default quota, never unlimited.
        (4, "gold", 2, ("default", 2)),
    ] {
        for _ in 0..admitted {
            assert_eq!(call(&mut svc, user, plan).await.unwrap(), user, "{plan}");
        }
        assert_eq!(
            refusal(call(&mut svc, user, plan).await),
            refused_by,
            "{plan}"
        );
    }

    // A minute later every minute limit has refilled; the pro key's hour limit (6) now binds
    // after one more request.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(call(&mut svc, 3, "pro").await.unwrap(), 3);
    assert_eq!(refusal(call(&mut svc, 3, "pro").await), ("hour", 6));
    for _ in 0..3 {
        assert_eq!(call(&mut svc, 2, "team").await.unwrap(), 2);
    }
    assert_eq!(refusal(call(&mut svc, 2, "team").await), ("minute", 3));
    for _ in 0..2 {
        assert_eq!(call(&mut svc, 1, "free").await.unwrap(), 1);
    }
    assert_eq!(refusal(call(&mut svc, 1, "free").await), ("default", 2));
}

/// `shadow = true` in the file: every request is admitted, and the would-be refusals are
/// reported.
#[tokio::test(start_paused = true)]
async fn a_shadow_limiter_from_a_file_admits_and_reports() {
    let config: RateLimitConfig = toml::from_str(
        r#"
        shadow = true
        limits = [{ name = "minute", limit = 2, period = "1m" }]
        "#,
    )
    .unwrap();
    let shadow_refused = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&shadow_refused);
    let mut svc = ServiceBuilder::new()
        .layer(
            config
                .into_builder()
                .on_event(move |e| {
                    if let RateLimitEvent::ShadowRefused { policy, .. } = e {
                        assert_eq!(*policy, "minute");
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .build()
                .unwrap(),
        )
        .service(service_fn(|n: u32| async move { Ok::<_, BoxError>(n) }));
    for n in 0..5 {
        assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
    }
    assert_eq!(shadow_refused.load(Ordering::Relaxed), 3);
}

#[test]
fn typos_in_limits_and_tiers_are_refused_naming_the_field() {
    let cases = [
        (
            "brust",
            r#"limits = [{ name = "m", limit = 1, period = "1s", brust = 2 }]"#,
        ),
        (
            "shadw",
            r#"limits = [{ name = "m", limit = 1, period = "1s", shadw = true }]"#,
        ),
        (
            "perod",
            r#"tiers = { pro = [{ name = "m", limit = 1, perod = "1s" }] }"#,
        ),
        (
            "tier",
            "quota = { limit = 1, period = \"1s\" }\ntier = { pro = [] }",
        ),
        (
            "shadow_mode",
            "quota = { limit = 1, period = \"1s\" }\nshadow_mode = true",
        ),
    ];
    for (typo, text) in cases {
        let e = toml::from_str::<RateLimitConfig>(text)
            .expect_err(typo)
            .to_string();
        assert!(
            e.contains(&format!("unknown field `{typo}`")),
            "{typo}: {e}"
        );
    }
    // A limit without a name, or with a duration that is not one.
    let e = serde_json::from_str::<RateLimitConfig>(r#"{"limits":[{"limit":1,"period":"1s"}]}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing field `name`"), "{e}");
    let e = serde_json::from_str::<RateLimitConfig>(
        r#"{"limits":[{"name":"m","limit":1,"period":"soon"}]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(r#"invalid duration "soon""#), "{e}");
}
