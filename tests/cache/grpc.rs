//! gRPC unary over tonic, on loopback: a client's `Check` calls through the clone mode, keyed by
//! the requested service; concurrent identical calls make one RPC, and a failing RPC's
//! `tonic::Status` is shared with the requests that waited for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::future::join_all;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::cache::CacheLayer;
use tower_rampart::key::key_fn;

#[tokio::test]
async fn tonic_unary_calls_are_cached_and_coalesced() {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("analytics", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let rpcs = Arc::new(AtomicUsize::new(0));
    let n = Arc::clone(&rpcs);
    let check = tower::service_fn(move |req: HealthCheckRequest| {
        let mut client = HealthClient::new(channel.clone());
        let n = Arc::clone(&n);
        async move {
            n.fetch_add(1, Ordering::SeqCst);
            // Slow enough for every concurrent call to find this one in flight.
            tokio::time::sleep(Duration::from_millis(100)).await;
            client.check(req).await.map(tonic::Response::into_inner)
        }
    });
    let layer = CacheLayer::builder()
        .ttl(Duration::from_secs(30))
        .key(key_fn(|req: &HealthCheckRequest| Some(req.service.clone())))
        .share_errors()
        .build()
        .unwrap();
    let svc = layer.layer(check);
    let ask = |service: &'static str| {
        let mut svc = svc.clone();
        async move {
            let req = HealthCheckRequest {
                service: service.into(),
            };
            svc.ready().await?.call(req).await
        }
    };

    let answers = join_all((0..50).map(|_| ask("analytics"))).await;
    assert!(
        answers
            .iter()
            .all(|a| a.as_ref().unwrap().status == ServingStatus::Serving as i32)
    );
    assert_eq!(
        rpcs.load(Ordering::SeqCst),
        1,
        "50 concurrent calls, one RPC"
    );
    assert!(ask("analytics").await.is_ok());
    assert_eq!(rpcs.load(Ordering::SeqCst), 1, "then a hit");

    let failures = join_all((0..20).map(|_| ask("unknown"))).await;
    for f in &failures {
        let status = f.as_ref().unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    }
    assert_eq!(rpcs.load(Ordering::SeqCst), 2, "the failed RPC was shared");
    assert!(ask("unknown").await.is_err());
    assert_eq!(rpcs.load(Ordering::SeqCst), 3, "and not stored");
    server.abort();
}

#[tokio::test]
async fn a_tonic_server_behind_the_http_cache_serves_grpc_untouched() {
    // gRPC calls are POSTs: the HTTP mode passes them through, body and trailers, so the same
    // layer can sit in front of a whole tonic server next to cacheable GET routes.
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("analytics", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(CacheLayer::http(Duration::from_secs(30)))
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..3 {
        let res = client
            .check(HealthCheckRequest {
                service: "analytics".into(),
            })
            .await
            .unwrap();
        assert!(res.metadata().get("x-cache").is_none(), "not cached");
        assert_eq!(res.into_inner().status, ServingStatus::Serving as i32);
    }
    let status = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::NotFound,
        "trailers came through"
    );
    server.abort();
}
