//! gRPC rejection mode: trailers-only RESOURCE_EXHAUSTED with retry information that standard
//! clients read, and conversion of generic-mode errors to `tonic::Status`.

use std::net::SocketAddr;
use std::time::Duration;

use tonic_types::StatusExt;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::grpc::{GRPC_RETRY_PUSHBACK_MS, status_from_error};
use tower_rampart::key::PeerIp;
use tower_rampart::rate_limit::{Quota, RateLimitLayer};

fn request(peer: &str) -> http::Request<()> {
    let mut req = http::Request::new(());
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req
}

#[tokio::test(start_paused = true)]
async fn grpc_mode_answers_resource_exhausted_with_retry_info() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(1))
        .key(PeerIp::new())
        .grpc()
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
    }));
    let ok = svc
        .ready()
        .await
        .unwrap()
        .call(request("192.0.2.1:1"))
        .await
        .unwrap();
    assert_eq!(ok.headers()["ratelimit"], r#""default";r=0;t=60"#);

    let res = svc
        .ready()
        .await
        .unwrap()
        .call(request("192.0.2.1:2"))
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        http::StatusCode::OK,
        "gRPC errors travel in grpc-status"
    );
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()[GRPC_RETRY_PUSHBACK_MS], "60000");
    let status = tonic::Status::from_header_map(res.headers()).expect("a grpc-status");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    let retry = status
        .get_details_retry_info()
        .expect("google.rpc.RetryInfo details");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(60)));

    // Another peer has its own quota.
    let other = svc
        .ready()
        .await
        .unwrap()
        .call(request("192.0.2.2:1"))
        .await
        .unwrap();
    assert!(other.headers().get("grpc-status").is_none());
}

#[tokio::test(start_paused = true)]
async fn generic_mode_errors_convert_to_tonic_status() {
    let layer = RateLimitLayer::new(Quota::per_minute(1));
    let mut svc = layer.layer(tower::service_fn(|_: ()| async {
        Ok::<_, tower_rampart::BoxError>(())
    }));
    svc.ready().await.unwrap().call(()).await.unwrap();
    let err = svc.ready().await.unwrap().call(()).await.unwrap_err();
    let status = status_from_error(err.as_ref()).expect("a rampart refusal");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        status.metadata().get(GRPC_RETRY_PUSHBACK_MS).unwrap(),
        "60000"
    );
    assert_eq!(
        status.get_details_retry_info().unwrap().retry_delay,
        Some(Duration::from_secs(60))
    );
    assert!(status_from_error(&std::io::Error::other("unrelated")).is_none());

    // A cost over the limit's burst was not recognised (it answered `None`, and an app's
    // `unwrap_or(UNKNOWN)`-style fallback hid the refusal): `OUT_OF_RANGE`, as `AsGrpc` renders it.
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(100).burst(10))
        .cost(|req: &u32| *req)
        .build()
        .unwrap();
    let mut svc = layer.layer(tower::service_fn(|_: u32| async {
        Ok::<_, tower_rampart::BoxError>(())
    }));
    let err = svc.ready().await.unwrap().call(11).await.unwrap_err();
    let status = status_from_error(err.as_ref()).expect("a rampart refusal");
    assert_eq!(status.code(), tonic::Code::OutOfRange);
}

/// A real tonic server (the standard health service) behind the layer, keyed by the peer address
/// tonic records, called by a real tonic client.
#[tokio::test]
async fn tonic_server_refuses_over_quota_and_the_client_reads_the_retry_info() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("analytics", tonic_health::ServingStatus::Serving)
        .await;
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(2))
        .key(PeerIp::new())
        .grpc()
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(limit)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let check = || {
        tonic::Request::new(HealthCheckRequest {
            service: "analytics".into(),
        })
    };
    for _ in 0..2 {
        let res = client.check(check()).await.unwrap();
        assert_eq!(res.get_ref().status, 1, "SERVING");
        assert_eq!(
            res.metadata().get("ratelimit-policy").unwrap(),
            r#""default";q=2;w=60"#
        );
    }
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit exceeded");
    let retry = status.get_details_retry_info().expect("RetryInfo details");
    let delay = retry.retry_delay.unwrap();
    assert!(
        delay > Duration::from_secs(29) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );
    let pushback: u64 = status
        .metadata()
        .get(GRPC_RETRY_PUSHBACK_MS)
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");
    server.abort();
}
