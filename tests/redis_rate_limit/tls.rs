//! `rediss://` (feature `redis-tls`): a limiter deciding through a TLS connection to a
//! `redis-server` listening with a throw-away self-signed certificate (made with the `openssl`
//! command).

use std::process::Command;

use tower_rampart::backend::RedisBackend;
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};

use crate::common::redis::{RedisServer, redis_required};
use crate::support::{decide, unique_prefix};

#[tokio::test]
async fn a_limiter_decides_over_tls() {
    let dir = std::env::temp_dir().join(format!("rampart-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let ext = dir.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(&dir)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    // A CA, and a server certificate for "localhost" signed by it.
    let made = openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=rampart test ca",
            ],
        ]
        .concat(),
    ) && openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "key.pem",
                "-out",
                "req.csr",
                "-subj",
                "/CN=localhost",
            ],
        ]
        .concat(),
    ) && openssl(&[
        "x509",
        "-req",
        "-in",
        "req.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ]);
    if !made {
        let why = "the openssl command could not make test certificates";
        assert!(!redis_required(), "{why}");
        eprintln!("skipping the TLS test: {why}");
        return;
    }
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let Some(server) = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
    ]) else {
        return;
    };
    let client = redis::Client::build_with_tls(
        format!("rediss://localhost:{tls_port}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(&ca).unwrap()),
        },
    )
    .unwrap();
    let backend = RedisBackend::from_client(client)
        .await
        .expect("connect over TLS")
        .prefix(unique_prefix("tls"));
    backend.ping().await.expect("PING over TLS");
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_hour(2))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend)
        .build()
        .unwrap();
    let store = layer.store();
    assert!(decide(store, &1).await.unwrap().is_allowed());
    assert!(decide(store, &1).await.unwrap().is_allowed());
    assert!(!decide(store, &1).await.unwrap().is_allowed());
    let name = String::from_utf8(store.redis_key(&1)).unwrap();
    assert_eq!(
        server.command(&format!("EXISTS {name}")),
        ":1",
        "decided in redis"
    );
    // A plain connection to the TLS port is refused: the decisions above did go over TLS.
    assert!(
        RedisBackend::connect(&format!("redis://127.0.0.1:{tls_port}/"))
            .await
            .is_err()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
