//! Invalid configuration is refused when the layer is built, with a message that says what to fix.

use std::time::Duration;

use tower_rampart::backend::MemoryBackend;
use tower_rampart::key::{ClientIp, HeaderKey, PeerIp};
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

fn build_err(b: impl FnOnce() -> Result<(), tower_rampart::ConfigError>) -> String {
    b().unwrap_err().to_string()
}

#[test]
fn every_bad_setting_is_named_in_the_error() {
    let cases: Vec<(String, &str)> = vec![
        (
            build_err(|| RateLimitLayer::builder().build().map(drop)),
            "invalid quota: no quota was set; call .quota(Quota::per_minute(n)) or .limits([...])",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_minute(0))
                    .build()
                    .map(drop)
            }),
            "invalid quota: the limit must be at least 1 request per period (got 0); to refuse everything, do not route to the service",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(1))
                    .wait_up_to(Duration::MAX)
                    .build()
                    .map(drop)
            }),
            "invalid wait_up_to: must be at most a day (got 18446744073709551615.999999999s); a caller waiting longer for quota is better refused",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::with_period(3, Duration::ZERO))
                    .build()
                    .map(drop)
            }),
            "invalid quota: the period must be longer than zero",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3).burst(0))
                    .build()
                    .map(drop)
            }),
            "invalid quota: the burst must be at least 1 (got 0)",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3).burst(5))
                    .algorithm(Algorithm::SlidingWindow)
                    .build()
                    .map(drop)
            }),
            "invalid quota: a burst applies to the GCRA algorithm only; the sliding window admits `limit` requests per window, so drop `.burst(..)` or use Algorithm::Gcra",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3))
                    .backend(MemoryBackend::new().max_keys(0))
                    .build()
                    .map(drop)
            }),
            "invalid max_keys: the in-memory backend must be allowed at least 1 key (got 0)",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3))
                    .name("a b")
                    .build()
                    .map(drop)
            }),
            "invalid name: \"a b\" must be 1 to 64 characters of letters, digits and -_.:",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3))
                    .key(ClientIp::new().trusted_proxies(["10.0.0.0/8", "bogus"]))
                    .build()
                    .map(drop)
            }),
            "invalid trusted_proxies: \"bogus\" is neither a CIDR like \"10.0.0.0/8\" nor an IP address",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3))
                    .key(PeerIp::new().ipv6_prefix(200))
                    .build()
                    .map(drop)
            }),
            "invalid ipv6_prefix: must be between 1 and 128 bits (got 200); 64 groups each customer's /64",
        ),
        (
            build_err(|| {
                RateLimitLayer::builder()
                    .quota(Quota::per_second(3))
                    .key(HeaderKey::new("x api key"))
                    .build()
                    .map(drop)
            }),
            "invalid header: \"x api key\" is not a valid header name",
        ),
    ];
    for (got, want) in cases {
        assert_eq!(got, want);
    }
}

#[test]
#[should_panic(expected = "RateLimitLayer::per_ip: invalid quota: the limit must be at least 1")]
fn shortcut_constructors_panic_with_the_same_message() {
    let _ = RateLimitLayer::per_ip(Quota::per_minute(0));
}
