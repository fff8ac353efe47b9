//! Tests of the test support itself: the throw-away Redis server starts on its own port, serves,
//! dies when killed, and comes back when restarted.

mod common;

use common::redis::RedisServer;
use redis::AsyncCommands;

#[tokio::test]
async fn throwaway_redis_server_starts_serves_dies_and_restarts() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    assert_ne!(
        server.port(),
        6379,
        "tests must never use the machine's own Redis"
    );

    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = conn.set("rampart:support", "alive").await.unwrap();
    let got: String = conn.get("rampart:support").await.unwrap();
    assert_eq!(got, "alive");
    // Persistence is off, as the tests expect.
    assert_eq!(server.command("CONFIG GET save").lines().nth(3), Some("$0"));
    assert_eq!(
        server.command("CONFIG GET appendonly").lines().nth(4),
        Some("no")
    );

    server.kill();
    assert!(!server.is_running());
    let err = client.get_multiplexed_async_connection().await;
    assert!(err.is_err(), "a killed server must refuse connections");

    server.restart();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let gone: Option<String> = conn.get("rampart:support").await.unwrap();
    assert_eq!(gone, None, "a restarted server starts empty");
}

#[test]
fn two_servers_get_two_ports() {
    let (Some(a), Some(b)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    assert_ne!(a.port(), b.port());
    assert_eq!(a.command("PING"), "+PONG");
    assert_eq!(b.command("PING"), "+PONG");
}
