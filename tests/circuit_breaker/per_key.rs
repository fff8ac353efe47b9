//! Per-key circuits: independent circuits per key, a bounded map that keeps open circuits over idle
//! closed ones, keys in refusals, hooks and snapshots, `UpstreamHost` for HTTP clients, the
//! crate's other extractors (`PeerIp`, `HeaderKey`), calls with no key, and a keyed layer named
//! by its type (#15).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::error::CircuitOpen;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::key::{UpstreamHost, key_fn};

/// An upstream that fails for hosts whose name starts with "down".
fn hosts() -> impl Service<String, Response = String, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(|host: String| async move {
        if host.starts_with("down") {
            Err::<String, BoxError>(format!("{host} refused").into())
        } else {
            Ok(host)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_circuit_and_refusals_say_which() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let layer = CircuitBreakerLayer::builder()
        .name("upstreams")
        .consecutive_failures(3)
        .wait_duration(Duration::from_secs(10))
        .on_state_change({
            let seen = Arc::clone(&seen);
            move |t| {
                seen.lock()
                    .unwrap()
                    .push((t.key().map(str::to_owned), t.to()))
            }
        })
        .key(key_fn(|host: &String| Some(host.clone())))
        .build()
        .unwrap();
    let circuits = layer.handle();
    let mut svc = layer.layer(hosts());

    for _ in 0..3 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call("down.example".into())
            .await
            .unwrap_err();
        assert!(!err.is::<CircuitOpen>(), "the failures themselves");
        assert_eq!(
            svc.ready()
                .await
                .unwrap()
                .call("up.example".into())
                .await
                .unwrap(),
            "up.example"
        );
    }
    let err = svc
        .ready()
        .await
        .unwrap()
        .call("down.example".into())
        .await
        .unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("refused");
    assert_eq!(open.key(), Some("down.example"));
    assert_eq!(open.name(), "upstreams");
    assert_eq!(open.retry_after(), Some(Duration::from_secs(10)));

    assert_eq!(circuits.len(), 2);
    assert_eq!(
        circuits.get(&"down.example".into()).unwrap().state(),
        CircuitState::Open
    );
    let up = circuits.get(&"up.example".into()).unwrap();
    assert_eq!(up.state(), CircuitState::Closed);
    assert_eq!(up.key(), Some("up.example"));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(Some("down.example".to_owned()), CircuitState::Open)]
    );

    let mut snapshots = circuits.snapshots();
    snapshots.sort_by(|a, b| a.key().cmp(&b.key()));
    let json = serde_json::to_value(&snapshots).unwrap();
    assert_eq!(json[0]["key"], "down.example");
    assert_eq!(json[0]["state"], "OPEN");
    assert_eq!(json[1]["key"], "up.example");
    assert_eq!(json[1]["calls"], 3);

    // The open one lets a probe through after its wait, the same way a single circuit does.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        circuits.get(&"down.example".into()).unwrap().state(),
        CircuitState::HalfOpen
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_map_evicts_idle_closed_circuits_and_keeps_open_ones() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(60))
        .key(key_fn(|host: &String| Some(host.clone())))
        .max_circuits(16)
        .build()
        .unwrap();
    let circuits = layer.handle();
    assert_eq!(circuits.capacity(), 16);
    let mut svc = layer.layer(hosts());
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call("down.a".into())
        .await
        .unwrap_err();
    assert_eq!(
        circuits.get(&"down.a".into()).unwrap().state(),
        CircuitState::Open
    );
    // A flood of distinct healthy hosts: the map never outgrows its capacity, and the open circuit
    // is never the one that makes room.
    for i in 0..1_000 {
        let host = format!("up.{i}");
        svc.ready().await.unwrap().call(host).await.unwrap();
        assert!(circuits.len() <= 16, "{} circuits", circuits.len());
        assert_eq!(
            circuits.get(&"down.a".into()).map(|c| c.state()),
            Some(CircuitState::Open),
            "after {i} hosts"
        );
    }
    assert_eq!(circuits.len(), 16);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call("down.a".into())
        .await
        .unwrap_err();
    assert!(err.is::<CircuitOpen>(), "still refused: {err}");
}

#[tokio::test(start_paused = true)]
async fn a_key_can_be_forced_open_before_any_call() {
    let layer = CircuitBreakerLayer::builder()
        .key(key_fn(|host: &String| Some(host.clone())))
        .build()
        .unwrap();
    let circuits = layer.handle();
    assert!(circuits.is_empty());
    circuits.circuit(&"maintenance.example".into()).force_open();
    let mut svc = layer.layer(hosts());
    let err = svc
        .ready()
        .await
        .unwrap()
        .call("maintenance.example".into())
        .await
        .unwrap_err();
    let open = err.downcast_ref::<CircuitOpen>().expect("refused");
    assert_eq!(open.state(), CircuitState::ForcedOpen);
    assert_eq!(open.retry_after(), None);
    svc.ready()
        .await
        .unwrap()
        .call("other.example".into())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn upstream_host_gives_http_clients_a_circuit_per_host_answering_503() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .key(UpstreamHost)
        .http()
        .build()
        .unwrap();
    let circuits = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|req: http::Request<()>| async move {
        let flaky = req
            .uri()
            .host()
            .is_some_and(|h| h.eq_ignore_ascii_case("flaky.internal"));
        let status = if flaky { 500 } else { 200 };
        let mut res = http::Response::new(bytes::Bytes::new());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, std::convert::Infallible>(res)
    }));
    let mut get = async |uri: &str| {
        let req = http::Request::get(uri).body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap().status()
    };
    assert_eq!(get("http://flaky.internal/a").await, 500);
    assert_eq!(get("http://FLAKY.internal/b").await, 500);
    assert_eq!(get("http://flaky.internal/c").await, 503, "open");
    assert_eq!(get("http://healthy.internal/c").await, 200);
    assert_eq!(
        circuits.get(&"flaky.internal".into()).unwrap().state(),
        CircuitState::Open
    );
}

#[test]
fn max_circuits_must_be_sensible() {
    for bad in [0, 1_000_001] {
        let err = CircuitBreakerLayer::builder()
            .key(key_fn(|n: &u32| Some(*n)))
            .max_circuits(bad)
            .build()
            .unwrap_err();
        assert_eq!(err.setting(), "max_circuits");
        assert_eq!(
            err.to_string(),
            format!("invalid max_circuits: must be from 1 to 1000000 (got {bad})")
        );
    }
}

/// An HTTP upstream that fails for the peer 203.0.113.66, counting the calls it gets.
fn by_peer(
    calls: Arc<Mutex<u32>>,
) -> impl Service<
    http::Request<()>,
    Response = http::Response<bytes::Bytes>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone {
    tower::service_fn(move |req: http::Request<()>| {
        *calls.lock().unwrap() += 1;
        let bad = req
            .extensions()
            .get::<std::net::SocketAddr>()
            .is_some_and(|a| a.ip().to_string() == "203.0.113.66");
        let mut res = http::Response::new(bytes::Bytes::new());
        *res.status_mut() = http::StatusCode::from_u16(if bad { 500 } else { 200 }).unwrap();
        async move { Ok::<_, std::convert::Infallible>(res) }
    })
}

fn from_peer(peer: Option<&str>) -> http::Request<()> {
    let mut req = http::Request::get("/x").body(()).unwrap();
    if let Some(peer) = peer {
        req.extensions_mut()
            .insert(peer.parse::<std::net::SocketAddr>().unwrap());
    }
    req
}

#[tokio::test(start_paused = true)]
async fn peer_ip_keys_a_circuit_per_client_and_a_call_without_a_peer_goes_through_no_circuit() {
    // #15: the rate limiter's `PeerIp` keys the breaker too.
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(2)
        .key(tower_rampart::key::PeerIp::new())
        .http()
        .build()
        .unwrap();
    let circuits = layer.handle();
    let calls = Arc::new(Mutex::new(0));
    let mut svc = layer.layer(by_peer(Arc::clone(&calls)));
    let mut get = async |peer: Option<&str>| {
        let res = svc.ready().await.unwrap().call(from_peer(peer)).await;
        res.unwrap().status()
    };
    assert_eq!(get(Some("203.0.113.66:4000")).await, 500);
    assert_eq!(get(Some("203.0.113.66:4001")).await, 500);
    assert_eq!(get(Some("203.0.113.66:4002")).await, 503, "open");
    assert_eq!(get(Some("198.51.100.1:4000")).await, 200, "another client");
    let bad: std::net::IpAddr = "203.0.113.66".parse().unwrap();
    assert_eq!(circuits.get(&bad).unwrap().state(), CircuitState::Open);
    assert_eq!(*calls.lock().unwrap(), 3);

    // No peer address: no circuit, straight to the upstream, nothing recorded.
    assert_eq!(get(None).await, 200);
    assert_eq!(*calls.lock().unwrap(), 4);
    assert_eq!(circuits.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_key_function_returning_none_passes_the_call_through_unrecorded() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .key(key_fn(|host: &String| {
            (!host.starts_with("down.anonymous")).then(|| host.clone())
        }))
        .build()
        .unwrap();
    let circuits = layer.handle();
    let mut svc = layer.layer(hosts());
    for _ in 0..3 {
        let err = svc
            .ready()
            .await
            .unwrap()
            .call("down.anonymous".into())
            .await
            .unwrap_err();
        assert!(!err.is::<CircuitOpen>(), "never refused: no circuit");
    }
    assert_eq!(circuits.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn header_key_labels_circuits_without_the_header_value() {
    let layer = CircuitBreakerLayer::builder()
        .consecutive_failures(1)
        .key(tower_rampart::key::HeaderKey::new("x-api-key"))
        .http()
        .build()
        .unwrap();
    let circuits = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|_: http::Request<()>| async {
        let mut res = http::Response::new(bytes::Bytes::new());
        *res.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        Ok::<_, std::convert::Infallible>(res)
    }));
    let req = || {
        http::Request::get("/x")
            .header("x-api-key", "secret-key")
            .body(())
            .unwrap()
    };
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(req())
            .await
            .unwrap()
            .status(),
        500
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(req())
            .await
            .unwrap()
            .status(),
        503
    );
    let key = http::HeaderValue::from_static("secret-key");
    let circuit = circuits.get(&key).unwrap();
    let label = circuit.key().unwrap();
    assert!(
        label.starts_with("h:") && !label.contains("secret"),
        "{label}"
    );
}

mod named {
    //! A layer keyed by a plain `fn` has a type that can be written down (#15).
    use tower_rampart::circuit_breaker::CircuitBreakerLayer;
    use tower_rampart::circuit_breaker::fallback::NoFallback;
    use tower_rampart::circuit_breaker::key::PerKey;
    use tower_rampart::classify::ErrorsAreFailures;
    use tower_rampart::key::{KeyFn, KeyFnPtr};
    use tower_rampart::rejection::AsError;

    type PerHost = CircuitBreakerLayer<
        ErrorsAreFailures,
        AsError,
        NoFallback,
        PerKey<KeyFnPtr<String, String>>,
    >;

    fn per_host() -> PerHost {
        CircuitBreakerLayer::builder()
            .key(KeyFn::from_fn(|host: &String| Some(host.clone())))
            .build()
            .unwrap()
    }

    #[test]
    fn a_layer_keyed_by_a_fn_can_be_returned_from_a_function() {
        let layer: PerHost = per_host();
        assert_eq!(layer.handle().len(), 0);
    }
}
