//! Every RPC over real loopback gRPC: answers, validation, per-client limits answering
//! `RESOURCE_EXHAUSTED` with retry information, the circuit-broken external call, health and
//! reflection (v1 and v1alpha).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::pb;
use crate::pb::analytics_service_client::AnalyticsServiceClient;
use crate::{config, server, storage};

/// The Redis names of the cached summaries' entries.
const SUMMARY_ENTRIES: &str = "analytics:cache:summaries:*:e:*";

/// A server on a loopback port; stops (draining) when dropped.
pub(crate) struct Running {
    pub(crate) addr: SocketAddr,
    pub(crate) storage: Arc<storage::Storage>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

impl Running {
    pub(crate) async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the test server")
    }

    pub(crate) async fn client(&self) -> AnalyticsServiceClient<Channel> {
        AnalyticsServiceClient::new(self.channel().await)
    }
}

/// Serves `grpc_analytics` for the environment `vars`, in memory.
pub(crate) async fn start(vars: &[(&str, &str)]) -> Running {
    start_on(vars, Arc::new(storage::Storage::default())).await
}

/// Serves `grpc_analytics` for the environment `vars`, keeping its data in `storage`.
pub(crate) async fn start_on(vars: &[(&str, &str)], storage: Arc<storage::Storage>) -> Running {
    let vars: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let config = config::Config::from_lookup_on(|k| vars.get(k).cloned(), 0).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let shared = Arc::clone(&storage);
    let task = tokio::spawn(async move {
        server::serve(&config, shared, listener, async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        storage,
        stop: Some(stop),
        task,
    }
}

pub(crate) fn metric(value: f64, kind: &str) -> pb::SubmitMetricRequest {
    pb::SubmitMetricRequest {
        metric: Some(pb::Metric {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_771_675_200, // 2026-02-21T12:00:00Z
                nanos: 0,
            }),
            value,
            r#type: kind.into(),
        }),
    }
}

#[tokio::test]
async fn metrics_summaries_lists_events_and_stats() {
    let server = start(&[]).await;
    let mut c = server.client().await;
    for v in [1.0, 2.0, 6.0] {
        let r = c.submit_metric(metric(v, "cpu_usage")).await.unwrap();
        assert_eq!(r.get_ref().message, "Metric stored successfully");
        assert_eq!(r.get_ref().metric.as_ref().unwrap().value, v);
    }
    let s = c
        .get_summary(pb::GetSummaryRequest {
            r#type: "cpu_usage".into(),
            period: pb::Period::All.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (s.count, s.average, s.min, s.max, s.latest),
        (3, 3.0, 1.0, 6.0, 6.0)
    );
    let daily = c
        .get_summary(pb::GetSummaryRequest {
            r#type: "cpu_usage".into(),
            period: pb::Period::Daily.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        daily.count, 0,
        "the metrics are timestamped long before the last day"
    );
    let list = c
        .list_metrics(pb::ListMetricsRequest {
            r#type: "cpu_usage".into(),
            limit: 2,
            offset: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 3);
    let values: Vec<f64> = list.metrics.iter().map(|m| m.value).collect();
    assert_eq!(values, [2.0, 6.0]);

    for platform in ["ios", ""] {
        let r = c
            .submit_event(pb::SubmitEventRequest {
                user_id: 42,
                event_type: "login".into(),
                timestamp: 1_690_000_000,
                platform: platform.into(),
            })
            .await
            .unwrap();
        assert_eq!(r.get_ref().status, "received");
    }
    let stats = c
        .get_stats(pb::GetStatsRequest {
            event_type: "login".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((stats.event_type.as_str(), stats.count), ("login", 2));
}

#[tokio::test]
async fn invalid_arguments_name_the_field_and_store_nothing() {
    let server = start(&[("RATE_LIMIT_REQUESTS", "100")]).await;
    let mut c = server.client().await;
    let cases = [
        (pb::SubmitMetricRequest { metric: None }, "`metric`"),
        (
            pb::SubmitMetricRequest {
                metric: Some(pb::Metric {
                    timestamp: None,
                    value: 1.0,
                    r#type: "cpu".into(),
                }),
            },
            "`metric.timestamp`",
        ),
        (metric(f64::NAN, "cpu"), "`metric.value`"),
        (metric(f64::INFINITY, "cpu"), "`metric.value`"),
        (metric(1.0, "no\nnewlines"), "`metric.type`"),
        (metric(1.0, ""), "`metric.type`"),
    ];
    for (req, field) in cases {
        let err = c.submit_metric(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(field), "{}: {field}", err.message());
    }
    let err = c
        .get_summary(pb::GetSummaryRequest {
            r#type: "cpu".into(),
            period: 99,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("`period`"));
    let err = c
        .list_metrics(pb::ListMetricsRequest {
            r#type: "cpu".into(),
            limit: 5000,
            offset: 0,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("`limit`"));
    let err = c
        .submit_event(pb::SubmitEventRequest {
            user_id: 1,
            event_type: String::new(),
            timestamp: 0,
            platform: String::new(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("`event_type`"));
    let list = c
        .list_metrics(pb::ListMetricsRequest {
            r#type: "cpu".into(),
            limit: 0,
            offset: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.total, 0, "nothing invalid was stored");
}

#[tokio::test]
async fn an_exhausted_quota_answers_resource_exhausted_with_retry_info() {
    let server = start(&[
        ("RATE_LIMIT_REQUESTS", "2"),
        ("RATE_LIMIT_WINDOW_SECONDS", "60"),
        ("RATE_LIMIT", "1"),
    ])
    .await;
    let mut c = server.client().await;
    for v in [1.0, 2.0] {
        c.submit_metric(metric(v, "cpu")).await.unwrap();
    }
    let err = c.submit_metric(metric(3.0, "cpu")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(err.message(), "rate limit exceeded");
    let retry = err.get_details_retry_info().expect("RetryInfo details");
    let delay = retry.retry_delay.unwrap();
    assert!(
        delay > Duration::from_secs(29) && delay <= Duration::from_secs(30),
        "{delay:?}"
    );
    let pushback: u64 = err
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((29_000..=30_000).contains(&pushback), "{pushback}");

    // Unlimited methods still answer; the events limit is separate (1 per minute here, over
    // SubmitEvent and GetStats together).
    let s = c
        .get_summary(pb::GetSummaryRequest {
            r#type: "cpu".into(),
            period: 0,
        })
        .await
        .unwrap();
    assert_eq!(s.get_ref().count, 2, "the refused metric was not stored");
    c.get_stats(pb::GetStatsRequest {
        event_type: "login".into(),
    })
    .await
    .unwrap();
    let err = c
        .submit_event(pb::SubmitEventRequest {
            user_id: 1,
            event_type: "login".into(),
            timestamp: 0,
            platform: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

/// Behind a proxy every call comes from the proxy's address: `grpc_analytics` keyed its limits on
/// the TCP peer alone, so all of a proxy's clients shared one quota. With the proxy in
/// `TRUSTED_PROXIES`, each client named in its `x-forwarded-for` has its own; a peer that is not
/// trusted is keyed on its own address, whatever it forwards.
#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_quota() {
    use tonic::Request;
    let submit_as = |c: &mut AnalyticsServiceClient<Channel>, client: &str, v: f64| {
        let mut req = Request::new(metric(v, "cpu"));
        req.metadata_mut()
            .insert("x-forwarded-for", client.parse().unwrap());
        let mut c = c.clone();
        async move { c.submit_metric(req).await.map(|_| ()).map_err(|e| e.code()) }
    };
    let limits = [
        ("RATE_LIMIT_REQUESTS", "1"),
        ("RATE_LIMIT_WINDOW_SECONDS", "60"),
    ];
    let mut trusted = limits.to_vec();
    trusted.push(("TRUSTED_PROXIES", "127.0.0.1/32"));
    let server = start(&trusted).await;
    let mut c = server.client().await;
    assert_eq!(submit_as(&mut c, "198.51.100.1", 1.0).await, Ok(()));
    assert_eq!(
        submit_as(&mut c, "198.51.100.2", 2.0).await,
        Ok(()),
        "another client"
    );
    assert_eq!(
        submit_as(&mut c, "198.51.100.1", 3.0).await,
        Err(Code::ResourceExhausted),
        "the first client's quota is spent"
    );

    let server = start(&limits).await;
    let mut c = server.client().await;
    assert_eq!(submit_as(&mut c, "198.51.100.1", 1.0).await, Ok(()));
    assert_eq!(
        submit_as(&mut c, "198.51.100.2", 2.0).await,
        Err(Code::ResourceExhausted),
        "an untrusted peer's forwarding is not believed"
    );
}

#[tokio::test]
async fn the_external_call_falls_back_and_its_circuit_opens() {
    let server = start(&[
        ("EXTERNAL_SERVICE_FAILURE_RATE", "1.0"),
        ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
        ("CIRCUIT_BREAKER_FAILURE_THRESHOLD", "2"),
        ("CIRCUIT_BREAKER_RESET_TIMEOUT", "60"),
    ])
    .await;
    let mut c = server.client().await;
    use pb::call_external_response::Result as Outcome;
    for circuit_open in [false, false, true] {
        let r = c
            .call_external(pb::CallExternalRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.result,
            Some(Outcome::Fallback(pb::Fallback {
                reason: if circuit_open {
                    "circuit open"
                } else {
                    "external service failure"
                }
                .into(),
                circuit_open,
            }))
        );
    }
    let s = c
        .circuit_status(pb::CircuitStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.name, "external");
    assert_eq!(s.state, "OPEN");
    assert_eq!(s.consecutive_failures, 2);
    assert_eq!(s.rejected, 1);
    assert!(s.next_attempt_in_seconds.unwrap() > 59.0);

    let healthy = start(&[
        ("EXTERNAL_SERVICE_FAILURE_RATE", "0"),
        ("EXTERNAL_SERVICE_LATENCY_MS", "0"),
    ])
    .await;
    let r = healthy
        .client()
        .await
        .call_external(pb::CallExternalRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        matches!(r.result, Some(Outcome::Value(v)) if (100..200).contains(&v)),
        "{r:?}"
    );
}

#[tokio::test]
async fn health_is_serving_and_reflection_lists_the_services() {
    let server = start(&[]).await;
    let channel = server.channel().await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "rampart.analytics.v1.AnalyticsService"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    // v1
    {
        use tonic_reflection::pb::v1::ServerReflectionRequest;
        use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel.clone());
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut replies = client
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("{reply:?}");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.contains(&"rampart.analytics.v1.AnalyticsService".to_owned()),
            "{names:?}"
        );
        assert!(
            names.contains(&"grpc.health.v1.Health".to_owned()),
            "{names:?}"
        );
    }
    // v1alpha (older grpcurl and grpcio clients)
    {
        use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "rampart.analytics.v1.AnalyticsService".into(),
            )),
        };
        let mut replies = client
            .server_reflection_info(futures::stream::iter([req]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(files)) = reply.message_response else {
            panic!("{reply:?}");
        };
        assert!(!files.file_descriptor_proto.is_empty());
    }
}

#[tokio::test]
async fn the_retrying_client_waits_out_the_servers_pushback_and_succeeds() {
    // 2 per 2 s: the third metric must wait about a second.
    let server = start(&[
        ("RATE_LIMIT_REQUESTS", "2"),
        ("RATE_LIMIT_WINDOW_SECONDS", "2"),
    ])
    .await;
    let submit = crate::retrying::submit_metric(
        server.channel().await,
        4,
        Duration::from_secs(5),
        Duration::from_secs(10),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut tries = Vec::new();
    for v in [1.0, 2.0, 3.0] {
        let res = crate::retrying::send(&submit, metric(v, "cpu").metric.unwrap())
            .await
            .expect("the retrying client gets through");
        tries.push(crate::retrying::attempts(&res));
    }
    assert_eq!(tries, [1, 1, 2], "the third waited once, for the pushback");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "it honoured the pushback: {waited:?}"
    );

    // A pushback longer than the client will wait ends the retries with the server's answer.
    let impatient = crate::retrying::submit_metric(
        server.channel().await,
        4,
        Duration::from_millis(100),
        Duration::from_millis(300),
    )
    .unwrap();
    let err = crate::retrying::send(&impatient, metric(4.0, "cpu").metric.unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
}

/// A type with no metrics is answered, not cached: made-up types make no entries (a metric
/// stored behind the service's back is seen at once, where a cached empty summary would hide it).
#[tokio::test]
async fn summaries_of_types_with_no_metrics_are_not_cached() {
    let server = start(&[]).await;
    let mut c = server.client().await;
    let summary = || pb::GetSummaryRequest {
        r#type: "made_up_type".into(),
        period: 0,
    };
    assert_eq!(c.get_summary(summary()).await.unwrap().get_ref().count, 0);
    server
        .storage
        .add_metric(&crate::storage::Metric {
            timestamp: chrono::Utc::now(),
            value: 3.0,
            metric_type: "made_up_type".into(),
        })
        .await
        .unwrap();
    assert_eq!(c.get_summary(summary()).await.unwrap().get_ref().count, 1);
}

#[tokio::test]
async fn summaries_come_from_the_cache_until_a_metric_of_their_type_arrives() {
    let server = start(&[("RATE_LIMIT_REQUESTS", "100")]).await;
    let mut c = server.client().await;
    let summary = |kind: &str| pb::GetSummaryRequest {
        r#type: kind.into(),
        period: 0,
    };
    c.submit_metric(metric(1.0, "cpu")).await.unwrap();
    c.submit_metric(metric(9.0, "mem")).await.unwrap();
    assert_eq!(
        c.get_summary(summary("cpu")).await.unwrap().get_ref().count,
        1
    );
    // Stored behind the service's back: a cached summary does not see it...
    let sneaky = crate::storage::Metric {
        timestamp: chrono::Utc::now(),
        value: 3.0,
        metric_type: "cpu".into(),
    };
    server.storage.add_metric(&sneaky).await.unwrap();
    assert_eq!(
        c.get_summary(summary("cpu")).await.unwrap().get_ref().count,
        1,
        "cached"
    );
    // ...a SubmitMetric of that type drops it; another type's summary stays cached.
    assert_eq!(
        c.get_summary(summary("mem")).await.unwrap().get_ref().count,
        1
    );
    server
        .storage
        .add_metric(&crate::storage::Metric {
            metric_type: "mem".into(),
            ..sneaky.clone()
        })
        .await
        .unwrap();
    c.submit_metric(metric(2.0, "cpu")).await.unwrap();
    assert_eq!(
        c.get_summary(summary("cpu")).await.unwrap().get_ref().count,
        3
    );
    assert_eq!(
        c.get_summary(summary("mem")).await.unwrap().get_ref().count,
        1,
        "still cached"
    );
}

#[tokio::test]
async fn with_redis_two_servers_share_the_data_and_the_per_client_limit() {
    let Some(redis) = crate::common::redis::RedisServer::start() else {
        return;
    };
    let storage = || {
        Arc::new(storage::Storage::Redis(
            storage::RedisStorage::open(&redis.url(), Duration::from_millis(500)).unwrap(),
        ))
    };
    let vars = [
        ("RATE_LIMIT_REQUESTS", "3"),
        ("RATE_LIMIT_WINDOW_SECONDS", "60"),
    ];
    let a = start_on(&vars, storage()).await;
    let b = start_on(&vars, storage()).await;
    let mut clients = [a.client().await, b.client().await];
    let mut codes = Vec::new();
    for i in 0..5 {
        let c = &mut clients[i % 2];
        codes.push(match c.submit_metric(metric(i as f64, "cpu")).await {
            Ok(_) => Code::Ok,
            Err(s) => s.code(),
        });
    }
    assert_eq!(
        codes,
        [
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::ResourceExhausted,
            Code::ResourceExhausted
        ],
        "3 in total across both servers"
    );
    let s = clients[1]
        .get_summary(pb::GetSummaryRequest {
            r#type: "cpu".into(),
            period: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(s.count, 3, "both servers' metrics, from the shared store");
}

#[tokio::test]
async fn with_redis_two_servers_share_cached_summaries_and_their_invalidation() {
    let Some(redis) = crate::common::redis::RedisServer::start() else {
        return;
    };
    let storage = || {
        Arc::new(storage::Storage::Redis(
            storage::RedisStorage::open(&redis.url(), Duration::from_millis(500)).unwrap(),
        ))
    };
    let vars = [("RATE_LIMIT_REQUESTS", "100")];
    let a = start_on(&vars, storage()).await;
    let b = start_on(&vars, storage()).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let cpu = || pb::GetSummaryRequest {
        r#type: "cpu".into(),
        period: 0,
    };
    ca.submit_metric(metric(1.0, "cpu")).await.unwrap();
    assert_eq!(ca.get_summary(cpu()).await.unwrap().get_ref().count, 1);
    // The cache answers first and writes behind: wait for the entry to be in Redis.
    redis.until_one_key(SUMMARY_ENTRIES).await;
    // Stored behind both servers' backs: b answers from the summary a cached in Redis.
    let sneaky = crate::storage::Metric {
        timestamp: chrono::Utc::now(),
        value: 3.0,
        metric_type: "cpu".into(),
    };
    a.storage.add_metric(&sneaky).await.unwrap();
    let from_b = cb.get_summary(cpu()).await.unwrap().into_inner();
    assert_eq!(from_b.count, 1, "computed by a, served to b from Redis");
    assert_eq!(
        (from_b.r#type.as_str(), from_b.max),
        ("cpu", 1.0),
        "the cached summary decodes whole"
    );
    // A metric submitted through b drops the summary for a too.
    cb.submit_metric(metric(2.0, "cpu")).await.unwrap();
    assert_eq!(ca.get_summary(cpu()).await.unwrap().get_ref().count, 3);
}

/// #17: the gRPC server caps its open connections as the HTTP examples do: at the cap a new
/// client is not served (it waits in the backlog) until a connection closes; and a stop ends
/// within the grace period even with a client connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_clients_back_until_one_closes() {
    let mut server = start(&[("MAX_CONNECTIONS", "1"), ("SHUTDOWN_GRACE_SECS", "1")]).await;
    let mut first = server.client().await;
    let summary = || pb::GetSummaryRequest {
        r#type: "cpu_usage".into(),
        period: pb::Period::All.into(),
    };
    first.get_summary(summary()).await.unwrap();
    // A second client's connection is accepted by the kernel, not by the server: no answer.
    let endpoint = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .timeout(Duration::from_millis(500));
    let second = tokio::time::timeout(Duration::from_millis(700), async {
        let channel = endpoint.connect().await?;
        AnalyticsServiceClient::new(channel)
            .get_summary(summary())
            .await
            .map_err(Into::<Box<dyn std::error::Error + Send + Sync>>::into)
    })
    .await;
    assert!(
        !matches!(second, Ok(Ok(_))),
        "a second connection was served past the cap"
    );
    // The first closes: the next client is served.
    drop(first);
    let mut served = false;
    for _ in 0..30 {
        let attempt = tokio::time::timeout(Duration::from_millis(500), async {
            let mut c = server.client().await;
            c.get_summary(summary()).await
        })
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            served = true;
            break;
        }
    }
    assert!(
        served,
        "no client was served after the first connection closed"
    );
    // Stopping with a client connected ends within the grace period (1 s).
    let _held = server.client().await;
    let asked = std::time::Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("the server stopped")
        .unwrap();
    assert!(asked.elapsed() < Duration::from_secs(3));
}

/// A connection that sends nothing, or part of the HTTP/2 preface, is closed at the header read
/// timeout (h2's handshake has no timer of its own); one with a whole preface and a call is
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_its_http2_preface_is_closed_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(&[("HEADER_READ_TIMEOUT_SECS", "1")]).await;
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0").await.unwrap();
    let mut c = server.client().await;
    c.get_summary(pb::GetSummaryRequest {
        r#type: "cpu_usage".into(),
        period: pb::Period::All.into(),
    })
    .await
    .expect("a real client is served");
    for (what, stream) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = [0u8; 256];
        let closed = tokio::time::timeout(Duration::from_secs(4), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            closed.is_ok(),
            "the {what} connection is still open after 4 s"
        );
    }
}

/// Issue #16: calls are checked before the limit, so invalid ones spend no quota (as over HTTP),
/// and an out-of-range timestamp is refused naming the range.
#[tokio::test]
async fn invalid_calls_spend_no_quota() {
    let server = start(&[("RATE_LIMIT_REQUESTS", "2"), ("RATE_LIMIT", "1")]).await;
    let mut c = server.client().await;
    for _ in 0..5 {
        let err = c.submit_metric(metric(1.0, "")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = c
            .submit_event(pb::SubmitEventRequest {
                user_id: 1,
                event_type: String::new(),
                timestamp: 0,
                platform: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
    let mut late = metric(1.0, "cpu");
    late.metric.as_mut().unwrap().timestamp = Some(prost_types::Timestamp {
        seconds: 253_402_300_800,
        nanos: 0,
    });
    let err = c.submit_metric(late).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("9999-12-31"), "{}", err.message());
    for v in [1.0, 2.0] {
        c.submit_metric(metric(v, "cpu")).await.unwrap();
    }
    let err = c.submit_metric(metric(3.0, "cpu")).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    c.submit_event(pb::SubmitEventRequest {
        user_id: 1,
        event_type: "login".into(),
        timestamp: 0,
        platform: String::new(),
    })
    .await
    .unwrap();
}

/// A call message past 64 KiB is refused before it is buffered further (tonic's default allowed
/// 4 MiB on each of a connection's streams), and nothing is stored; one within it is served.
#[tokio::test]
async fn a_message_past_the_size_bound_is_refused_and_stores_nothing() {
    let server = start(&[]).await;
    let mut c = server.client().await;
    let event = |platform: String| pb::SubmitEventRequest {
        user_id: 1,
        event_type: "login".into(),
        timestamp: 0,
        platform,
    };
    let err = c
        .submit_event(event("x".repeat(100 * 1024)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    c.submit_event(event("ios".into())).await.unwrap();
    let stats = c
        .get_stats(pb::GetStatsRequest {
            event_type: "login".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.count, 1, "the refused call stored nothing");
}

/// The request timeout (tonic's `Server::timeout` before) cancelled a call whose write Redis had
/// run, answering `CANCELLED` for a stored metric. It stops at a begun write now: a call whose
/// acknowledgement comes back after the timeout is answered `OK`, and stored once; a call that
/// times out before its write (here, waiting on the limiter) is `DEADLINE_EXCEEDED` and stores
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_the_request_timeout_answers_for_a_write_only_before_it_begins() {
    let Some((_redis, proxy, _server, mut c)) =
        behind_a_proxy(&[("REQUEST_TIMEOUT_SECONDS", "1")]).await
    else {
        return;
    };

    // The write of this value runs in Redis; its answer is held for 1.8 s.
    proxy.hold_replies_after(b"271828");
    let started = std::time::Instant::now();
    let (answer, ()) = tokio::join!(c.submit_metric(metric(271_828.0, "cpu")), async {
        tokio::time::sleep(Duration::from_millis(1800)).await;
        proxy.forward();
    });
    let took = started.elapsed();
    answer.unwrap_or_else(|s| panic!("after {took:?}: {s:?}"));
    assert!(took >= Duration::from_millis(1800), "{took:?}");

    // Everything held from before the limiter's decision: the timeout comes first.
    proxy.pause();
    let started = std::time::Instant::now();
    let refused = c.submit_metric(metric(314_159.0, "cpu")).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    proxy.forward();

    // Bounded: the held limiter call reaches Redis now; whatever it does, no write follows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cpu_count(c.clone()).await,
        2,
        "the acknowledged write once, the refused one not at all"
    );
}

/// A client's own deadline (`grpc-timeout`), which tonic enforces outside the app's layers, dropped
/// the handler mid-write: the metric was stored and its cached summaries were not dropped (stale
/// until their TTL). The write now runs to its end: the client that gave up learns nothing
/// (`DEADLINE_EXCEEDED`: the outcome is unknown, as gRPC defines it), and the store and the cache
/// agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_a_write_whose_client_gave_up_still_drops_the_cached_summaries() {
    let Some((redis, proxy, _server, mut c)) = behind_a_proxy(&[]).await else {
        return;
    };
    assert_eq!(cpu_count(c.clone()).await, 1);
    // The cache answers first and writes behind: wait for the entry to be in Redis.
    redis.until_one_key(SUMMARY_ENTRIES).await;

    proxy.hold_replies_after(b"271828");
    let mut call = tonic::Request::new(metric(271_828.0, "cpu"));
    call.set_timeout(Duration::from_millis(800));
    let gave_up = c.submit_metric(call).await.unwrap_err();
    assert!(
        matches!(gave_up.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{gave_up:?}"
    );
    proxy.forward();
    // The write's acknowledgement comes now; its invalidation follows (bounded: 5 s).
    let seen = crate::common::until_it_answers(2, || cpu_count(c.clone())).await;
    assert_eq!(
        seen, 2,
        "the stored metric, its summary no longer the cached one"
    );
}

/// Redis behind a fault proxy and the server on it (`vars`, a generous limit, a 5 s store
/// timeout), with a client that has stored one metric through it (the backend has learned Redis's
/// clock, which fences its writes); `None` without a `redis-server`.
async fn behind_a_proxy(
    vars: &[(&str, &str)],
) -> Option<(
    crate::common::redis::RedisServer,
    crate::common::fault_proxy::FaultProxy,
    Running,
    AnalyticsServiceClient<Channel>,
)> {
    let redis = crate::common::redis::RedisServer::start()?;
    let proxy = crate::common::fault_proxy::FaultProxy::start(redis.addr()).await;
    let storage = Arc::new(storage::Storage::Redis(
        storage::RedisStorage::open(&proxy.url(), Duration::from_secs(5)).unwrap(),
    ));
    let mut vars = vars.to_vec();
    vars.push(("RATE_LIMIT_REQUESTS", "1000"));
    let server = start_on(&vars, storage).await;
    let mut c = server.client().await;
    c.submit_metric(metric(1.0, "cpu")).await.unwrap();
    Some((redis, proxy, server, c))
}

/// The `cpu` summary's count.
async fn cpu_count(mut c: AnalyticsServiceClient<Channel>) -> u64 {
    c.get_summary(pb::GetSummaryRequest {
        r#type: "cpu".into(),
        period: 0,
    })
    .await
    .unwrap()
    .into_inner()
    .count
}
