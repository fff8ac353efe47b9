//! `RedisConnection::eval_fenced` (#17): an application's script that answers its caller's error
//! (a timeout while Redis is stalled) writes nothing when Redis runs it later; one that runs in
//! time answers its own value.

use std::time::Duration;

use redis::Value;
use tower_rampart::backend::RedisBackend;
use tower_rampart::backend::redis::FencedScript;

use crate::common::fault_proxy::FaultProxy;
use crate::common::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_write_that_timed_out_is_never_applied() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let redis = RedisBackend::connect(&proxy.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(100));
    let conn = redis.connection();
    let incr = FencedScript::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let nothing = FencedScript::new("redis.call('SET', KEYS[1], 'x')");

    // In time: the script's own answers, `nil` included.
    assert_eq!(
        conn.eval_fenced(&incr, &[b"fenced:n"], &[b"5"])
            .await
            .unwrap(),
        Value::Int(5)
    );
    assert_eq!(
        conn.eval_fenced(&nothing, &[b"fenced:x"], &[])
            .await
            .unwrap(),
        Value::Nil
    );

    // Stalled: the caller gives up; when the bytes arrive, Redis runs the script, which writes
    // nothing.
    let before = server.calls("evalsha") + server.calls("eval");
    proxy.pause();
    let e = conn
        .eval_fenced(&incr, &[b"fenced:n"], &[b"100"])
        .await
        .unwrap_err();
    assert!(e.is_timeout(), "{e}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.forward();
    for _ in 0..250 {
        if server.calls("evalsha") + server.calls("eval") > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.calls("evalsha") + server.calls("eval") > before,
        "the held call reached redis"
    );
    assert_eq!(
        server.command("GET fenced:n"),
        "$1\r\n5",
        "not applied late"
    );
}
