//! The analytics service over gRPC: the RPCs (summaries read through a cache), and the server with
//! its layers, health and reflection.
//! `main.rs` serves it; the tests serve it on a loopback port.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, Utc};
use tonic::{Request, Response, Status};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::cache::{CacheHandle, CacheLayer};
use tower_rampart::circuit_breaker::CircuitHandle;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::key::{ClientIp, ExtractKey, key_fn};
use tower_rampart::rate_limit::{Quota, RateLimitLayer};

use crate::config::Config;
use crate::deadline::{Commit, DeadlineLayer};
use crate::dependency::{self, ExternalClient};
use crate::pb;
use crate::pb::analytics_service_server::{AnalyticsService, AnalyticsServiceServer};
use crate::storage::{
    EventRecord, Metric, Storage, StorageError, UNKNOWN_PLATFORM, store_metric, summary_prefix,
    valid_metric_type,
};

/// The largest call message the service decodes (a larger one is refused with `OUT_OF_RANGE`
/// before it is buffered further).
pub(crate) const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// A per-client limit, asked once a call has been checked (so an invalid call spends no quota):
/// admits the client's IP, or refuses with a `RateLimited` error.
pub(crate) type Limiter = BoxCloneSyncService<IpAddr, (), BoxError>;

/// What a summary is asked for: a metric type and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SummaryQuery {
    pub(crate) metric_type: String,
    pub(crate) period: pb::Period,
}

/// Summaries, read through a cache keyed by type and period.
pub(crate) type Summaries = BoxCloneSyncService<SummaryQuery, pb::Summary, Status>;

/// The service's state.
#[derive(Clone)]
pub(crate) struct Analytics {
    pub(crate) storage: Arc<Storage>,
    pub(crate) summaries: Summaries,
    pub(crate) summary_cache: CacheHandle,
    pub(crate) external: ExternalClient,
    pub(crate) breaker: CircuitHandle,
    /// `SubmitMetric`'s limit, and the one `SubmitEvent` and `GetStats` share.
    pub(crate) metrics_limit: Limiter,
    pub(crate) events_limit: Limiter,
    /// Who the client is: the TCP peer, or behind a proxy in `TRUSTED_PROXIES`, the address that
    /// proxy put in `x-forwarded-for`.
    pub(crate) client_ip: ClientIp,
}

/// The client IP of a call, as the HTTP examples key it: the TCP peer, or for a call through a
/// trusted proxy (`TRUSTED_PROXIES`) the client that proxy named in `x-forwarded-for` (a gRPC
/// proxy such as Envoy sets it as metadata); IPv6 grouped by /64. A call that did not come over
/// TCP shares one bucket.
fn client_of<T>(client_ip: &ClientIp, request: &Request<T>) -> IpAddr {
    let mut probe = http::Request::new(());
    if let Some(info) = request
        .extensions()
        .get::<tonic::transport::server::TcpConnectInfo>()
    {
        probe.extensions_mut().insert(info.clone());
    }
    for value in request.metadata().get_all("x-forwarded-for") {
        if let Ok(value) = http::HeaderValue::from_bytes(value.as_encoded_bytes()) {
            probe.headers_mut().append("x-forwarded-for", value);
        }
    }
    client_ip
        .extract(&probe)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// Asks `limit` for `client`: `RESOURCE_EXHAUSTED` with retry information when over it.
async fn admit(limit: &Limiter, client: IpAddr) -> Result<(), Status> {
    limit.clone().oneshot(client).await.map_err(|e| {
        tower_rampart::grpc::status_from_error(&*e).unwrap_or_else(|| {
            tracing::warn!(error = %e, "rate limiter failed; answering UNAVAILABLE");
            Status::unavailable("rate limiting is unavailable; try again shortly")
        })
    })
}

/// A per-client limit of `quota`, named `name` (in Redis, the HTTP example's limit of the same
/// name: one quota for a client whichever protocol it uses).
fn limiter(
    name: &'static str,
    quota: Quota,
    backend: tower_rampart::backend::Backend,
) -> Result<Limiter, tower_rampart::ConfigError> {
    let layer = RateLimitLayer::builder()
        .name(name)
        .quota(quota)
        .key(key_fn(|ip: &IpAddr| Some(*ip)))
        .backend(backend)
        .build()?;
    let admitted = tower::service_fn(|_: IpAddr| async { Ok::<(), BoxError>(()) });
    Ok(BoxCloneSyncService::new(layer.layer(admitted)))
}

/// Summaries are kept in a shared (Redis) cache as their protobuf encoding.
impl tower_rampart::backend::redis::CacheCodec for pb::Summary {
    fn encode(&self, out: &mut Vec<u8>) {
        prost::Message::encode(self, out).expect("a Vec grows as needed");
    }

    fn decode(bytes: &[u8]) -> Result<Self, tower_rampart::BoxError> {
        Ok(prost::Message::decode(bytes)?)
    }
}

/// Computes summaries from `storage`, through a cache fresh for `ttl` (a submitted metric drops its
/// type's entries at once), in memory or, when the data is in Redis, in Redis too (shared by every
/// instance). Concurrent calls for one summary make one computation.
fn summaries(
    storage: Arc<Storage>,
    ttl: Duration,
) -> Result<(Summaries, CacheHandle), tower_rampart::ConfigError> {
    let builder = CacheLayer::builder()
        .name("summaries")
        .ttl(ttl)
        .key(key_fn(|q: &SummaryQuery| {
            Some(format!(
                "{}{}",
                summary_prefix(&q.metric_type),
                q.period.as_str_name()
            ))
        }))
        // tonic's Status is Clone: callers waiting on one computation share its error too.
        .share_errors()
        // A type with no metrics is not stored: any string is a valid type, and every one a
        // client made up would otherwise be an entry (in Redis, for the TTL).
        .predicate(|s: &pb::Summary| s.count > 0);
    let backend = storage.backend();
    let compute = tower::service_fn(move |q: SummaryQuery| {
        let storage = Arc::clone(&storage);
        async move {
            let now = Utc::now();
            let since = match q.period {
                pb::Period::Unspecified | pb::Period::All => None,
                pb::Period::Daily => Some(now - ChronoDuration::days(1)),
                pb::Period::Hourly => Some(now - ChronoDuration::hours(1)),
            };
            let s = storage
                .summary(&q.metric_type, since)
                .await
                .map_err(unavailable)?;
            Ok::<_, Status>(pb::Summary {
                r#type: q.metric_type,
                count: s.count,
                average: s.average,
                min: s.min,
                max: s.max,
                latest: s.latest,
            })
        }
    });
    let cache = builder.backend(backend).build::<pb::Summary>()?;
    let handle = cache.handle::<pb::Summary>();
    Ok((BoxCloneSyncService::new(cache.layer(compute)), handle))
}

impl std::fmt::Debug for Analytics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Analytics")
            .field("storage", &self.storage)
            .field("breaker", &self.breaker)
            .finish_non_exhaustive()
    }
}

/// The deadline's answer.
fn timed_out() -> http::Response<tonic::body::Body> {
    Status::deadline_exceeded("the call took longer than its timeout").into_http()
}

fn unavailable(e: StorageError) -> Status {
    // The cause is logged, not answered: a client learns nothing of how the service is deployed.
    tracing::warn!(error = %e, "storage failed; answering UNAVAILABLE");
    Status::unavailable("storage unavailable; try again shortly")
}

fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

fn to_pb(m: &Metric) -> pb::Metric {
    pb::Metric {
        timestamp: Some(timestamp(m.timestamp)),
        value: m.value,
        r#type: m.metric_type.clone(),
    }
}

/// Checks a submitted metric; `INVALID_ARGUMENT` names the field.
fn from_pb(m: Option<pb::Metric>) -> Result<Metric, Status> {
    let m = m.ok_or_else(|| Status::invalid_argument("missing field `metric`"))?;
    let ts = m
        .timestamp
        .ok_or_else(|| Status::invalid_argument("missing field `metric.timestamp`"))?;
    let timestamp = u32::try_from(ts.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or(crate::timestamp::TimestampError::Unreadable)
        .and_then(|nanos| crate::timestamp::from_unix(ts.seconds, nanos))
        .map_err(|e| {
            Status::invalid_argument(format!(
                "invalid field `metric.timestamp`: {}",
                match e {
                    crate::timestamp::TimestampError::OutOfRange => e.message(),
                    crate::timestamp::TimestampError::Unreadable =>
                        "nanos must be from 0 to 999999999".to_owned(),
                }
            ))
        })?;
    if !m.value.is_finite() {
        return Err(Status::invalid_argument(
            "invalid field `metric.value`: must be a finite number",
        ));
    }
    require_type(&m.r#type, "metric.type")?;
    Ok(Metric {
        timestamp,
        value: m.value,
        metric_type: m.r#type,
    })
}

fn require_type(t: &str, field: &str) -> Result<(), Status> {
    if valid_metric_type(t) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "invalid field `{field}`: 1 to 100 characters, none of them a control character"
        )))
    }
}

#[tonic::async_trait]
impl AnalyticsService for Analytics {
    async fn submit_metric(
        &self,
        request: Request<pb::SubmitMetricRequest>,
    ) -> Result<Response<pb::SubmitMetricResponse>, Status> {
        let client = client_of(&self.client_ip, &request);
        let commit = request.extensions().get::<Commit>().cloned();
        let metric = from_pb(request.into_inner().metric)?;
        // Checked first: an invalid call spends no quota.
        admit(&self.metrics_limit, client).await?;
        // From here the answer is the write's, whatever the timeout.
        if let Some(commit) = commit {
            commit.begin();
        }
        // The write and the invalidation it calls for run to their end even if the call is
        // dropped (a client's deadline, which tonic enforces outside the deadline layer).
        crate::deadline::to_the_end(store_metric(
            Arc::clone(&self.storage),
            self.summary_cache.clone(),
            metric.clone(),
        ))
        .await
        .map_err(unavailable)?;
        Ok(Response::new(pb::SubmitMetricResponse {
            message: "Metric stored successfully".into(),
            metric: Some(to_pb(&metric)),
        }))
    }

    async fn get_summary(
        &self,
        request: Request<pb::GetSummaryRequest>,
    ) -> Result<Response<pb::Summary>, Status> {
        let req = request.into_inner();
        require_type(&req.r#type, "type")?;
        let period = pb::Period::try_from(req.period).map_err(|_| {
            Status::invalid_argument(format!(
                "invalid field `period`: {} is not a Period",
                req.period
            ))
        })?;
        let summary = self
            .summaries
            .clone()
            .oneshot(SummaryQuery {
                metric_type: req.r#type,
                period: match period {
                    pb::Period::Unspecified => pb::Period::All,
                    p => p,
                },
            })
            .await?;
        Ok(Response::new(summary))
    }

    async fn list_metrics(
        &self,
        request: Request<pb::ListMetricsRequest>,
    ) -> Result<Response<pb::ListMetricsResponse>, Status> {
        let req = request.into_inner();
        require_type(&req.r#type, "type")?;
        let limit = match req.limit {
            0 => 100,
            n if n <= 1000 => n as usize,
            n => {
                return Err(Status::invalid_argument(format!(
                    "invalid field `limit`: {n} is over 1000"
                )));
            }
        };
        let (total, page) = self
            .storage
            .metrics_page(&req.r#type, req.offset as usize, limit)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::ListMetricsResponse {
            r#type: req.r#type,
            total,
            metrics: page.iter().map(to_pb).collect(),
        }))
    }

    async fn submit_event(
        &self,
        request: Request<pb::SubmitEventRequest>,
    ) -> Result<Response<pb::SubmitEventResponse>, Status> {
        let client = client_of(&self.client_ip, &request);
        let commit = request.extensions().get::<Commit>().cloned();
        let req = request.into_inner();
        require_type(&req.event_type, "event_type")?;
        let platform = if req.platform.is_empty() {
            UNKNOWN_PLATFORM.to_owned()
        } else {
            require_type(&req.platform, "platform")?;
            req.platform
        };
        // Checked first: an invalid call spends no quota.
        admit(&self.events_limit, client).await?;
        let record = EventRecord {
            user_id: req.user_id,
            event_type: req.event_type,
            platform,
        };
        if let Some(commit) = commit {
            commit.begin();
        }
        let storage = Arc::clone(&self.storage);
        crate::deadline::to_the_end(async move { storage.record_event(&record, Utc::now()).await })
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::SubmitEventResponse {
            status: "received".into(),
        }))
    }

    async fn get_stats(
        &self,
        request: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::EventStats>, Status> {
        admit(&self.events_limit, client_of(&self.client_ip, &request)).await?;
        let event_type = request.into_inner().event_type;
        let count = self
            .storage
            .event_count(&event_type)
            .await
            .map_err(unavailable)?;
        Ok(Response::new(pb::EventStats { event_type, count }))
    }

    async fn call_external(
        &self,
        _: Request<pb::CallExternalRequest>,
    ) -> Result<Response<pb::CallExternalResponse>, Status> {
        use pb::call_external_response::Result as Outcome;
        let result = match self.external.clone().oneshot(()).await {
            Ok(value) => Outcome::Value(value),
            Err(e) => {
                let circuit_open = e.is::<CircuitOpen>();
                if !circuit_open {
                    tracing::warn!(error = %e, "external call failed; answering the fallback");
                }
                Outcome::Fallback(pb::Fallback {
                    // As `analytics_api`'s `/external` (reference 000) says it.
                    reason: if circuit_open {
                        "circuit open"
                    } else {
                        "external service failure"
                    }
                    .into(),
                    circuit_open,
                })
            }
        };
        Ok(Response::new(pb::CallExternalResponse {
            result: Some(result),
        }))
    }

    async fn circuit_status(
        &self,
        _: Request<pb::CircuitStatusRequest>,
    ) -> Result<Response<pb::CircuitStatusResponse>, Status> {
        let s = self.breaker.snapshot();
        Ok(Response::new(pb::CircuitStatusResponse {
            name: s.name().into(),
            state: s.state().to_string(),
            calls: s.calls(),
            failures: s.failures(),
            failure_rate: s.failure_rate(),
            consecutive_failures: s.consecutive_failures(),
            rejected: s.rejected(),
            next_attempt_in_seconds: s.next_attempt_in().map(|d| d.as_secs_f64()),
        }))
    }
}

/// Serves the analytics service, `grpc.health.v1` and server reflection (v1 and v1alpha) on
/// `listener` until `shutdown` resolves, then drains in-flight calls.
pub(crate) async fn serve(
    config: &Config,
    storage: Arc<Storage>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Per-client limits (`SubmitMetric`; `SubmitEvent` and `GetStats` together) are asked in the
    // methods, after each call is checked: `RESOURCE_EXHAUSTED` with retry information.
    let analytics = analytics(config, storage)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AnalyticsServiceServer<Analytics>>()
        .await;
    if analytics.storage.is_remote() {
        // Report NOT_SERVING while the shared store is unreachable.
        let storage = Arc::downgrade(&analytics.storage);
        let health = health.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            while let Some(storage) = storage.upgrade() {
                tick.tick().await;
                if storage.connected().await == Some(false) {
                    health
                        .set_not_serving::<AnalyticsServiceServer<Analytics>>()
                        .await;
                } else {
                    health
                        .set_serving::<AnalyticsServiceServer<Analytics>>()
                        .await;
                }
            }
        });
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::DESCRIPTOR)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    // As the HTTP examples' server (`examples/common/serve.rs`): at most `MAX_CONNECTIONS` open
    // connections (new clients wait in the backlog), accept errors paused rather than spun, a
    // request timeout, HTTP/2 pings that drop a peer that stopped answering, and a shutdown
    // bounded by the grace period.
    let server_limits = config.server;
    let incoming = capped::incoming(
        listener,
        server_limits.max_connections,
        server_limits.header_read_timeout,
    );
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let server = tonic::transport::Server::builder()
        // The request timeout, which no longer cuts off a write once begun: `DEADLINE_EXCEEDED`
        // means nothing was stored (see `deadline`). A call's own shorter `grpc-timeout` is
        // tonic's to enforce (outside every layer); the writes run to their end regardless.
        .layer(DeadlineLayer::new(config.request_timeout, timed_out))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(server_limits.header_read_timeout))
        .max_concurrent_streams(server_limits.max_streams_per_connection)
        // A connection's life is bounded, whatever it does: at 30 minutes it is asked to go
        // (GOAWAY: calls in flight finish, clients' channels reconnect), and closed a grace
        // period later. An HTTP/2 connection that answers pings but sends no call would
        // otherwise hold its place under `MAX_CONNECTIONS` for good.
        .max_connection_age(Duration::from_secs(30 * 60))
        .max_connection_age_grace(server_limits.shutdown_grace)
        // Every service's messages bounded: tonic's default is 4 MiB a message; these are a few
        // hundred bytes. With `MAX_CONNECTIONS` x `MAX_STREAMS_PER_CONNECTION` calls buffering at
        // once, 4 MiB each allowed 128 GiB; 64 KiB (the HTTP example's `MAX_BODY_BYTES`) allows
        // 2 GiB at worst. (`MAX_CONNECTIONS_PER_IP` and `MAX_BUFFERED_BODY_BYTES` are the HTTP
        // servers': not used here.)
        .add_service(health_service.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(reflection_v1.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(reflection_v1alpha.max_decoding_message_size(MAX_MESSAGE_BYTES))
        .add_service(
            AnalyticsServiceServer::new(analytics).max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    let grace = async {
        if stopped.await.is_ok() {
            tokio::time::sleep(server_limits.shutdown_grace).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = server => served?,
        () = grace => tracing::warn!(
            grace = ?server_limits.shutdown_grace,
            "grace period over; dropping the connections still open"
        ),
    }
    Ok(())
}

/// Connections counted against a cap: each holds a permit until it closes.
mod capped {
    use std::io;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use futures::Stream;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{OwnedSemaphorePermit, Semaphore};
    use tonic::transport::server::{Connected, TcpConnectInfo};

    /// A TCP connection that frees its place under the cap when it closes, and that is cut off
    /// unless the HTTP/2 preface (its first 24 bytes) arrives within the header read timeout
    /// (h2's handshake waits for it with no timer of its own: a client that sends nothing would
    /// hold its place for good).
    pub(super) struct Capped {
        io: TcpStream,
        _permit: OwnedSemaphorePermit,
        /// Until the preface is in: the bytes read so far and the deadline.
        preface: Option<(usize, Pin<Box<tokio::time::Sleep>>)>,
    }

    /// The HTTP/2 client preface's length (`PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n`).
    const PREFACE_LEN: usize = 24;

    /// The connections `listener` accepts, at most `max` open at once: at the cap, accepting
    /// stops until one closes. Accept errors (out of file descriptors) pause it for 100 ms.
    pub(super) fn incoming(
        listener: TcpListener,
        max: usize,
        preface_within: Duration,
    ) -> impl Stream<Item = io::Result<Capped>> + Send + 'static {
        let permits = Arc::new(Semaphore::new(max));
        futures::stream::unfold((listener, permits), move |(listener, permits)| async move {
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("never closed");
            loop {
                match listener.accept().await {
                    Ok((io, _)) => {
                        let _ = io.set_nodelay(true);
                        let deadline = tokio::time::sleep(preface_within);
                        let conn = Capped {
                            io,
                            _permit: permit,
                            preface: Some((0, Box::pin(deadline))),
                        };
                        return Some((Ok(conn), (listener, permits)));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; pausing accepts for 100 ms");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }

    impl Connected for Capped {
        type ConnectInfo = TcpConnectInfo;

        fn connect_info(&self) -> TcpConnectInfo {
            self.io.connect_info()
        }
    }

    impl AsyncRead for Capped {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            let before = buf.filled().len();
            let read = Pin::new(&mut this.io).poll_read(cx, buf);
            if let Some((got, deadline)) = &mut this.preface {
                match read {
                    Poll::Ready(Ok(())) => {
                        *got += buf.filled().len() - before;
                        if *got >= PREFACE_LEN {
                            this.preface = None;
                        }
                    }
                    Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 preface within the header read timeout",
                        )));
                    }
                    _ => {}
                }
            }
            read
        }
    }

    impl AsyncWrite for Capped {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.io).poll_shutdown(cx)
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[io::IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }
    }
}

/// The service's state for `config`.
pub(crate) fn analytics(
    config: &Config,
    storage: Arc<Storage>,
) -> Result<Analytics, tower_rampart::ConfigError> {
    let (external, breaker, _) = dependency::client(config, storage.backend())?;
    let (summaries, summary_cache) = summaries(Arc::clone(&storage), config.cache_ttl)?;
    // In memory, or shared by every instance through Redis when the data is there.
    let policy = config.rate_limit_failure_policy;
    let backend = storage
        .backend()
        .map_redis(|redis| redis.failure_policy(policy));
    let metrics_limit = limiter(
        "metrics",
        Quota::with_period(config.metrics_limit, config.metrics_window),
        backend.clone(),
    )?;
    let events_limit = limiter(
        "events",
        Quota::per_minute(config.events_per_minute),
        backend,
    )?;
    Ok(Analytics {
        storage,
        summaries,
        summary_cache,
        external,
        breaker,
        metrics_limit,
        events_limit,
        client_ip: ClientIp::new().trusted_proxies(&config.trusted_proxies),
    })
}
