//! Connecting: URLs (TCP and unix socket), a server that is not there, and settings that cannot
//! work, each with a clear error.

use std::time::Duration;

use tower_rampart::backend::RedisBackend;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

use crate::common::redis::RedisServer;
use crate::support::{decide, unique_prefix};

#[tokio::test]
async fn a_unix_socket_url_works() {
    let dir = std::env::temp_dir().join(format!("rampart-sock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let socket = dir.join("redis.sock");
    let Some(server) = RedisServer::start_with(&["--unixsocket", socket.to_str().unwrap()]) else {
        return;
    };
    let backend = RedisBackend::connect(&format!("redis+unix://{}", socket.display()))
        .await
        .expect("connect through the unix socket")
        .prefix(unique_prefix("unix"));
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(1))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .unwrap();
    assert!(decide(layer.store(), &1).await.unwrap().is_allowed());
    assert!(!decide(layer.store(), &1).await.unwrap().is_allowed());
    let key = String::from_utf8(layer.store().redis_key(&1)).unwrap();
    assert_eq!(server.command(&format!("EXISTS {key}")), ":1");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn no_server_and_bad_urls_are_clear_errors() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // free once the listener is dropped: nothing listens there
    let started = std::time::Instant::now();
    let e = RedisBackend::connect(&format!("redis://user:hunter2@127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "could not connect to redis at redis://user:***@127.0.0.1:{port}/"
        )),
        "{msg}"
    );
    assert!(!msg.contains("hunter2"), "no password in messages: {msg}");
    assert!(e.is_unreachable() || e.is_timeout(), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the connect timeout"
    );

    let e = RedisBackend::connect("http://127.0.0.1:1/")
        .await
        .unwrap_err();
    assert!(e.to_string().starts_with("invalid redis url"), "{e}");

    // Lazily, nothing is checked but the URL: the app starts, and is told Redis is down when it
    // asks.
    let lazy = RedisBackend::connect_lazy(&format!("redis://127.0.0.1:{port}/")).unwrap();
    assert!(lazy.ping().await.is_err());
    assert!(!lazy.is_connected());
}

#[tokio::test]
async fn settings_that_cannot_work_are_refused_when_the_layer_is_built() {
    let backend = RedisBackend::connect_lazy("redis://127.0.0.1:1/").unwrap();
    let build = |backend: RedisBackend, quota: Quota, algorithm: Algorithm| {
        RateLimitLayer::builder()
            .quota(quota)
            .algorithm(algorithm)
            .key(key_fn(|k: &u32| Some(*k)))
            .backend(backend)
            .build()
            .map(|_| ())
            .unwrap_err()
    };
    let cases = [
        (
            build(
                backend.clone().prefix("a{b}"),
                Quota::per_second(1),
                Algorithm::Gcra,
            ),
            "prefix",
            "without braces",
        ),
        (
            build(
                backend.clone().prefix(""),
                Quota::per_second(1),
                Algorithm::Gcra,
            ),
            "prefix",
            "1 to 64 characters",
        ),
        (
            build(
                backend.clone().timeout(Duration::ZERO),
                Quota::per_second(1),
                Algorithm::Gcra,
            ),
            "timeout",
            "between 1 ms and 60 s",
        ),
        (
            build(
                backend.clone().local_max_keys(0),
                Quota::per_second(1),
                Algorithm::Gcra,
            ),
            "local_max_keys",
            "at least 1",
        ),
        (
            build(
                backend.clone(),
                Quota::with_period(10, Duration::from_secs(90 * 86_400)),
                Algorithm::SlidingWindow,
            ),
            "quota",
            "periods from 1 microsecond to 52 days",
        ),
        (
            build(
                backend.clone(),
                Quota::with_period(10, Duration::from_secs(90 * 86_400)),
                Algorithm::Gcra,
            ),
            "quota",
            "up to 52 days",
        ),
    ];
    for (e, setting, needle) in cases {
        assert_eq!(e.setting(), setting, "{e}");
        assert!(e.to_string().contains(needle), "{e} should say {needle:?}");
    }
    // A 30-day GCRA quota fits.
    RateLimitLayer::builder()
        .quota(Quota::with_period(1000, Duration::from_secs(30 * 86_400)))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .unwrap();
}
