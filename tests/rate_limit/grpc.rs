//! gRPC rejection mode: trailers-only RESOURCE_EXHAUSTED with retry information that standard
//! clients read, and conversion of generic-mode errors to `tonic::Status`.

use std::net::SocketAddr;
use std::time::Duration;

use tonic_types::StatusExt;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::grpc::{GRPC_RETRY_PUSHBACK_MS, status_from_error};
use tower_rampart::http::PeerIp;
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
}
