//! A client of the analytics service that retries through `RetryLayer`: `RESOURCE_EXHAUSTED` and
//! `UNAVAILABLE` are retried, after the server's pushback (`grpc-retry-pushback-ms` /
//! `google.rpc.RetryInfo`) when it sends one, with backoff and jitter otherwise.

use std::time::Duration;

use tonic::transport::Channel;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::classify::GrpcClassifier;
use tower_rampart::retry::{Attempts, RetryLayer};

use crate::pb;
use crate::pb::analytics_service_client::AnalyticsServiceClient;

/// `SubmitMetric` as a retrying service.
pub(crate) type SubmitMetric = BoxCloneSyncService<
    pb::SubmitMetricRequest,
    tonic::Response<pb::SubmitMetricResponse>,
    BoxError,
>;

/// `SubmitMetric` on `channel`, retried up to `max_attempts` times within `deadline`. The server's
/// pushback is honoured up to `max_delay`; a longer one ends the retries with its answer.
pub(crate) fn submit_metric(
    channel: Channel,
    max_attempts: u32,
    max_delay: Duration,
    deadline: Duration,
) -> Result<SubmitMetric, tower_rampart::ConfigError> {
    let retry = RetryLayer::builder()
        .name("submit_metric")
        .max_attempts(max_attempts)
        .exponential_backoff(Duration::from_millis(100), 2.0, max_delay)
        .deadline(deadline)
        .classify(GrpcClassifier::new())
        .build()?;
    let client = AnalyticsServiceClient::new(channel);
    let call = tower::service_fn(move |req: pb::SubmitMetricRequest| {
        let mut client = client.clone();
        async move { client.submit_metric(req).await }
    });
    Ok(BoxCloneSyncService::new(retry.layer(call)))
}

/// How many attempts a call took.
pub(crate) fn attempts<T>(res: &tonic::Response<T>) -> u32 {
    res.extensions().get::<Attempts>().map_or(1, |a| a.0)
}

/// The status a failed call ended with (the last attempt's).
pub(crate) fn status(err: BoxError) -> tonic::Status {
    tonic::Status::from_error(err)
}

/// Sends one metric through `svc`.
pub(crate) async fn send(
    svc: &SubmitMetric,
    metric: pb::Metric,
) -> Result<tonic::Response<pb::SubmitMetricResponse>, tonic::Status> {
    svc.clone()
        .oneshot(pb::SubmitMetricRequest {
            metric: Some(metric),
        })
        .await
        .map_err(status)
}
