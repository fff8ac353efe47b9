//! HTTP semantics on paused time: which statuses are retried, `Retry-After` honoured (never sooner),
//! a server asking for longer than the deadline, idempotency, bodies that cannot be copied, the
//! attempt count on responses, and a final timeout as a `504`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{Layer, Service};
use tower_rampart::retry::request::IDEMPOTENCY_KEY;
use tower_rampart::retry::{Attempts, RetryLayer};

use crate::{MS, call};

/// What the upstream answers a call with: a status and headers.
type Answer = (u16, Vec<(&'static str, String)>);

/// An upstream that answers its `n`-th call with `script(n)` (status and headers), and records
/// each call's time and method.
#[derive(Clone)]
struct Upstream {
    calls: Arc<Mutex<Vec<(Instant, Method)>>>,
    script: Arc<dyn Fn(usize) -> Answer + Send + Sync>,
}

impl Upstream {
    fn new(
        script: impl Fn(usize) -> (u16, Vec<(&'static str, String)>) + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            script: Arc::new(script),
        }
    }

    /// `first` once (with `headers`), then 200.
    fn once(first: u16, headers: &[(&'static str, &str)]) -> Self {
        let headers: Vec<_> = headers.iter().map(|(k, v)| (*k, v.to_string())).collect();
        Self::new(move |n| {
            if n == 0 {
                (first, headers.clone())
            } else {
                (200, Vec::new())
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn times(&self, start: Instant) -> Vec<Duration> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| *t - start)
            .collect()
    }

    fn service<B: Send + 'static>(
        &self,
    ) -> impl Service<
        Request<B>,
        Response = Response<Full<Bytes>>,
        Error = std::convert::Infallible,
        Future: Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let this = self.clone();
        tower::service_fn(move |req: Request<B>| {
            let n = {
                let mut calls = this.calls.lock().unwrap();
                calls.push((Instant::now(), req.method().clone()));
                calls.len() - 1
            };
            let (status, headers) = (this.script)(n);
            let mut res = Response::new(Full::new(Bytes::from_static(b"{}")));
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                res.headers_mut().insert(k, v.parse().unwrap());
            }
            std::future::ready(Ok(res))
        })
    }
}

fn get() -> Request<Full<Bytes>> {
    Request::get("http://upstream/x")
        .body(Full::default())
        .unwrap()
}

fn attempts<B>(res: &Response<B>) -> u32 {
    res.extensions()
        .get::<Attempts>()
        .expect("an Attempts extension")
        .0
}

fn layer() -> tower_rampart::retry::RetryBuilder<
    tower_rampart::classify::HttpClassifier,
    tower_rampart::retry::request::HttpRequests,
    tower_rampart::http::AsHttp,
> {
    RetryLayer::builder()
        .max_attempts(3)
        .exponential_backoff(100 * MS, 2.0, Duration::from_secs(10))
        .jitter(tower_rampart::retry::Jitter::None)
        .no_budget()
        .http()
}

#[tokio::test(start_paused = true)]
async fn the_default_statuses_are_retried_and_others_are_not() {
    for (status, retried) in [
        (502, true),
        (503, true),
        (504, true),
        (429, true),
        (500, false),
        (404, false),
        (400, false),
    ] {
        let upstream = Upstream::once(status, &[]);
        let mut svc = layer().build().unwrap().layer(upstream.service());
        let res = call(&mut svc, get()).await.unwrap();
        let expected = if retried { 200 } else { status };
        assert_eq!(res.status().as_u16(), expected, "{status}");
        assert_eq!(attempts(&res), if retried { 2 } else { 1 }, "{status}");
    }
    // Configurable.
    let upstream = Upstream::once(500, &[]);
    let l = layer()
        .retry_statuses([StatusCode::INTERNAL_SERVER_ERROR])
        .build()
        .unwrap();
    let res = call(&mut l.layer(upstream.service()), get()).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (200, 2));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_in_seconds_and_as_a_date() {
    let upstream = Upstream::once(503, &[("retry-after", "3")]);
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let start = Instant::now();
    let res = call(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        upstream.times(start),
        [Duration::ZERO, Duration::from_secs(3)]
    );

    let upstream = Upstream::once(
        429,
        &[
            ("retry-after", "Wed, 21 Oct 2015 07:28:05 GMT"),
            ("date", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ],
    );
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let start = Instant::now();
    call(&mut svc, get()).await.unwrap();
    assert_eq!(
        upstream.times(start),
        [Duration::ZERO, Duration::from_secs(5)]
    );

    // Shorter than the backoff's own delay: the backoff wins.
    let upstream = Upstream::once(503, &[("retry-after", "0")]);
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let start = Instant::now();
    call(&mut svc, get()).await.unwrap();
    assert_eq!(upstream.times(start), [Duration::ZERO, 100 * MS]);
}

/// A retry never comes sooner than the server asked: a wait longer than the maximum delay is not
/// made, and the caller gets the server's answer at once (it was once retried at the maximum
/// delay, an attempt the server had said it would refuse).
#[tokio::test(start_paused = true)]
async fn a_server_asking_for_longer_than_the_maximum_delay_gets_its_response_back() {
    let upstream = Upstream::once(503, &[("retry-after", "3600")]);
    let mut svc = layer()
        .attempts_header(true)
        .build()
        .unwrap()
        .layer(upstream.service());
    let start = Instant::now();
    let res = call(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()["retry-after"],
        "3600",
        "the server's own answer"
    );
    assert_eq!(res.headers()["x-retry-attempts"], "1");
    assert_eq!(Instant::now(), start, "returned at once");
    assert_eq!(upstream.times(start), [Duration::ZERO]);

    // A fixed backoff's maximum is its delay, unless raised: 3 s is more than 200 ms...
    let upstream = Upstream::once(503, &[("retry-after", "3")]);
    let l = layer().fixed_backoff(200 * MS).build().unwrap();
    let start = Instant::now();
    let res = call(&mut l.layer(upstream.service()), get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(upstream.times(start), [Duration::ZERO]);
    // ... and within a raised maximum, waited in full.
    let upstream = Upstream::once(503, &[("retry-after", "3")]);
    let l = layer()
        .fixed_backoff(200 * MS)
        .max_delay(Duration::from_secs(3))
        .build()
        .unwrap();
    let start = Instant::now();
    let res = call(&mut l.layer(upstream.service()), get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        upstream.times(start),
        [Duration::ZERO, Duration::from_secs(3)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_server_asking_for_longer_than_the_deadline_gets_its_last_response_back() {
    let upstream = Upstream::once(503, &[("retry-after", "30")]);
    let mut svc = layer()
        // A maximum delay above the server's wish: the deadline alone gives up.
        .max_delay(Duration::from_secs(60))
        .deadline(Duration::from_secs(5))
        .attempts_header(true)
        .build()
        .unwrap()
        .layer(upstream.service());
    let start = Instant::now();
    let res = call(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(
        res.headers()["retry-after"],
        "30",
        "the server's own answer"
    );
    assert_eq!(attempts(&res), 1);
    assert_eq!(res.headers()["x-retry-attempts"], "1");
    assert_eq!(Instant::now(), start, "returned at once");
    assert_eq!(upstream.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn attempts_run_out_and_the_last_response_is_returned() {
    let upstream = Upstream::new(|n| (503, vec![("x-call", n.to_string())]));
    let mut svc = layer()
        .attempts_header(true)
        .build()
        .unwrap()
        .layer(upstream.service());
    let res = call(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["x-call"], "2", "the third call's response");
    assert_eq!(res.headers()["x-retry-attempts"], "3");
    assert_eq!(attempts(&res), 3);
    assert_eq!(res.extensions().get::<Attempts>().unwrap().retries(), 2);
}

#[tokio::test(start_paused = true)]
async fn post_is_not_retried_unless_it_is_idempotent_or_the_user_opts_in() {
    let post = || {
        Request::post("http://upstream/x")
            .body(Full::new(Bytes::from_static(b"{\"a\":1}")))
            .unwrap()
    };
    let upstream = Upstream::once(503, &[]);
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let res = call(&mut svc, post()).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (503, 1));
    assert_eq!(upstream.calls(), 1, "sent once");

    for method in [Method::PATCH, Method::POST] {
        let upstream = Upstream::once(503, &[]);
        let mut svc = layer().build().unwrap().layer(upstream.service());
        let mut req = post();
        *req.method_mut() = method.clone();
        req.headers_mut()
            .insert(&IDEMPOTENCY_KEY, "a5b1f3".parse().unwrap());
        let res = call(&mut svc, req).await.unwrap();
        assert_eq!(
            (res.status().as_u16(), attempts(&res)),
            (200, 2),
            "{method} with a key"
        );
    }

    let upstream = Upstream::once(503, &[]);
    let mut svc = layer()
        .any_method(true)
        .build()
        .unwrap()
        .layer(upstream.service());
    let res = call(&mut svc, post()).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (200, 2));
    let methods: Vec<_> = upstream
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(methods, [Method::POST, Method::POST]);
}

#[tokio::test(start_paused = true)]
async fn bodies_that_cannot_be_copied_are_sent_once_and_empty_ones_are_retried() {
    let upstream = Upstream::once(503, &[]);
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let streaming = Request::put("http://upstream/x")
        .body(axum::body::Body::from_stream(futures::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from_static(b"chunk")),
        ])))
        .unwrap();
    let res = call(&mut svc, streaming).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (503, 1));
    assert_eq!(upstream.calls(), 1, "sent once, not dropped");

    let upstream = Upstream::once(503, &[]);
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let empty = Request::get("http://upstream/x")
        .body(axum::body::Body::empty())
        .unwrap();
    let res = call(&mut svc, empty).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (200, 2));
}

#[tokio::test(start_paused = true)]
async fn a_final_timeout_in_http_mode_is_a_504_with_the_attempt_count() {
    let slow = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok::<_, std::convert::Infallible>(Response::new(axum::body::Body::empty()))
    });
    let mut svc = layer()
        .attempt_timeout(Duration::from_secs(1))
        .attempts_header(true)
        .build()
        .unwrap()
        .layer(slow);
    let start = Instant::now();
    let res = call(&mut svc, get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["x-retry-attempts"], "3");
    assert_eq!(attempts(&res), 3);
    assert_eq!(Instant::now() - start, 3300 * MS); // 1 s + 100 ms + 1 s + 200 ms + 1 s
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    assert_eq!(
        &body[..],
        br#"{"error":"attempt timed out","kind":"timed_out"}"#
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_keep_their_type_in_http_mode() {
    #[derive(Debug)]
    struct Refused;
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let failing = tower::service_fn(move |_req: Request<Full<Bytes>>| {
        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::ready(Err::<Response<Full<Bytes>>, _>(Refused))
    });
    let mut svc = layer().build().unwrap().layer(failing);
    let err: Refused = call(&mut svc, get()).await.unwrap_err();
    let _ = err;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 3);
}

/// Regression (#5 review): `StatusCode` allows 100 to 999, but the classifier's status set once
/// covered 0 to 639 only: an upstream answering 799 panicked the retry future, and configuring 700
/// panicked `build`.
#[tokio::test(start_paused = true)]
async fn statuses_up_to_999_are_classified_without_panicking() {
    let upstream = Upstream::once(799, &[]);
    let mut svc = layer().build().unwrap().layer(upstream.service());
    let res = call(&mut svc, get()).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (799, 1));

    let l = layer()
        .retry_statuses([700, 999].map(|s| StatusCode::from_u16(s).unwrap()))
        .build()
        .unwrap();
    for status in [700, 999] {
        let upstream = Upstream::once(status, &[]);
        let res = call(&mut l.layer(upstream.service()), get()).await.unwrap();
        assert_eq!(
            (res.status().as_u16(), attempts(&res)),
            (200, 2),
            "{status}"
        );
    }
    let upstream = Upstream::once(503, &[]);
    let res = call(&mut l.layer(upstream.service()), get()).await.unwrap();
    assert_eq!(
        (res.status().as_u16(), attempts(&res)),
        (503, 1),
        "no longer in the set"
    );

    let c = tower_rampart::classify::HttpClassifier::new();
    let s = |n| StatusCode::from_u16(n).unwrap();
    assert!(!c.retries(s(999)) && !c.retries(s(640)) && !c.retries(s(100)));
    let c = c.retry_on(s(999)).retry_on(s(640));
    assert!(c.retries(s(999)) && c.retries(s(640)) && c.retries(s(503)));
}

/// Regression (#5 review): `fixed_backoff` once reset the jitter and the maximum delay set before
/// it, so a `Retry-After` of 5 s was cut to the fixed 200 ms in one order and not in the other.
#[tokio::test(start_paused = true)]
async fn the_maximum_delay_holds_whatever_the_order_of_the_setters() {
    let orders = [
        layer()
            .max_delay(Duration::from_secs(10))
            .fixed_backoff(200 * MS),
        layer()
            .fixed_backoff(200 * MS)
            .max_delay(Duration::from_secs(10)),
    ];
    for (i, builder) in orders.into_iter().enumerate() {
        let upstream = Upstream::once(503, &[("retry-after", "5")]);
        let mut svc = builder.build().unwrap().layer(upstream.service());
        let start = Instant::now();
        call(&mut svc, get()).await.unwrap();
        assert_eq!(
            upstream.times(start),
            [Duration::ZERO, Duration::from_secs(5)],
            "order {i}"
        );
    }
}

/// `.buffer_bodies(n)` in HTTP mode: an axum `Body` built from bytes is retried with its content;
/// one still arriving is sent once, whole.
#[tokio::test(start_paused = true)]
async fn bodies_already_in_memory_are_retried_with_their_content_when_asked() {
    use http_body_util::BodyExt;
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let r = received.clone();
    let upstream = tower::service_fn(move |req: Request<axum::body::Body>| {
        let r = r.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = {
                let mut received = r.lock().unwrap();
                received.push(String::from_utf8(body.to_vec()).unwrap());
                received.len()
            };
            let mut res = Response::new(Full::new(Bytes::new()));
            *res.status_mut() = if n == 1 {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            };
            Ok::<_, std::convert::Infallible>(res)
        }
    });
    let mut svc = layer()
        .buffer_bodies(1024)
        .build()
        .unwrap()
        .layer(upstream.clone());
    let put = Request::put("http://upstream/x")
        .body(axum::body::Body::from(r#"{"metric":"cpu","value":0.5}"#))
        .unwrap();
    let res = call(&mut svc, put).await.unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (200, 2));
    assert_eq!(
        *received.lock().unwrap(),
        [r#"{"metric":"cpu","value":0.5}"#; 2]
    );

    // A body whose second half has not arrived yet: sent once, with all of it.
    received.lock().unwrap().clear();
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
    tx.unbounded_send(Ok(Bytes::from("first half, "))).unwrap();
    let put = Request::put("http://upstream/x")
        .body(axum::body::Body::from_stream(rx))
        .unwrap();
    let pending = tokio::spawn({
        let mut svc = svc.clone();
        async move { call(&mut svc, put).await }
    });
    tokio::task::yield_now().await;
    tx.unbounded_send(Ok(Bytes::from("second half"))).unwrap();
    drop(tx);
    let res = pending.await.unwrap().unwrap();
    assert_eq!((res.status().as_u16(), attempts(&res)), (503, 1));
    assert_eq!(*received.lock().unwrap(), ["first half, second half"]);
}
