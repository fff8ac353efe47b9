//! The HTTP mode: MISS then HIT over real HTTP through axum; what is never stored (`no-store`,
//! `private`, `Set-Cookie`, `Vary: *`, unsafe methods, errors); bodies over the cap streamed
//! through whole and uncached; `max-age`; request `no-cache`; `Vary` with a covering key; stale
//! answers for 5xx.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::cache::{CacheLayer, HttpKey};

use crate::common::http::serve;

#[tokio::test]
async fn axum_route_over_real_http_answers_miss_then_hit() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/api/metrics/summary",
            get(move || {
                let n = c.fetch_add(1, Ordering::SeqCst) + 1;
                async move { axum::Json(serde_json::json!({"type": "cpu_usage", "count": n})) }
            })
            .post(|| async { "posted" }),
        )
        .route_layer(CacheLayer::http(Duration::from_secs(60)))
        .route("/uncached", get(|| async { "plain" }));
    let served = serve(app, false).await;

    let first = served
        .send("GET", "/api/metrics/summary?type=cpu_usage", &[])
        .await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-cache"], "MISS");
    assert_eq!(first.json()["count"], 1);
    let second = served
        .send("GET", "/api/metrics/summary?type=cpu_usage", &[])
        .await;
    assert_eq!(second.headers["x-cache"], "HIT");
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["content-type"], "application/json");
    assert_eq!(second.headers["age"], "0");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the handler ran once");

    let other = served
        .send("GET", "/api/metrics/summary?type=memory", &[])
        .await;
    assert_eq!(
        other.headers["x-cache"], "MISS",
        "another query is another entry"
    );
    let posted = served.send("POST", "/api/metrics/summary", &[]).await;
    assert_eq!(posted.body, "posted");
    assert!(
        posted.headers.get("x-cache").is_none(),
        "POST bypasses the cache"
    );
    let plain = served.send("GET", "/uncached", &[]).await;
    assert!(
        plain.headers.get("x-cache").is_none(),
        "routes outside route_layer"
    );

    let refreshed = served
        .send(
            "GET",
            "/api/metrics/summary?type=cpu_usage",
            &[("cache-control", "no-cache")],
        )
        .await;
    assert_eq!(refreshed.headers["x-cache"], "MISS");
    assert_eq!(refreshed.json()["count"], 3, "no-cache went to the handler");
    let after = served
        .send("GET", "/api/metrics/summary?type=cpu_usage", &[])
        .await;
    assert_eq!(after.headers["x-cache"], "HIT");
    assert_eq!(after.json()["count"], 3, "and stored what it got");
}

#[tokio::test]
async fn router_layer_accepts_the_cache_and_its_handle_invalidates_on_write() {
    let count = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(300))
        .name("summaries")
        .build()
        .unwrap();
    let handle = layer.handle();
    let (c1, c2) = (Arc::clone(&count), Arc::clone(&count));
    let app = Router::new()
        .route(
            "/summary",
            get(move || {
                let n = c1.load(Ordering::SeqCst);
                async move { format!("{n} metrics") }
            }),
        )
        .layer(layer);
    let app = app.route(
        "/metrics",
        axum::routing::post(move || {
            let (c, handle) = (Arc::clone(&c2), handle.clone());
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                handle.invalidate_prefix("GET /summary").await.unwrap();
                StatusCode::CREATED
            }
        }),
    );
    let served = serve(app, false).await;
    assert_eq!(served.send("GET", "/summary", &[]).await.body, "0 metrics");
    assert_eq!(
        served.send("GET", "/summary", &[]).await.headers["x-cache"],
        "HIT"
    );
    assert_eq!(
        served.send("POST", "/metrics", &[]).await.status,
        StatusCode::CREATED
    );
    let fresh = served.send("GET", "/summary", &[]).await;
    assert_eq!(fresh.headers["x-cache"], "MISS", "invalidated on write");
    assert_eq!(fresh.body, "1 metrics");
}

/// A body of given frames; `exact` gives it an exact size hint, like `Full`.
struct Frames {
    frames: VecDeque<Frame<Bytes>>,
    exact: bool,
}

impl Frames {
    fn chunks(chunks: &[&'static [u8]], exact: bool) -> Self {
        Self {
            frames: chunks
                .iter()
                .map(|c| Frame::data(Bytes::from_static(c)))
                .collect(),
            exact,
        }
    }
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.frames.pop_front().map(Ok))
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            let n: usize = self
                .frames
                .iter()
                .filter_map(|f| f.data_ref())
                .map(Bytes::len)
                .sum();
            SizeHint::with_exact(n as u64)
        } else {
            SizeHint::default()
        }
    }
}

type Respond = dyn Fn(&Request<()>, usize) -> Response<Frames> + Send + Sync;

/// An origin whose answer to call `n` is `respond(&req, n)`.
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicUsize>,
    respond: Arc<Respond>,
}

impl Origin {
    fn new(
        respond: impl Fn(&Request<()>, usize) -> Response<Frames> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            respond: Arc::new(respond),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Request<()>> for Origin {
    type Response = Response<Frames>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Frames>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<()>) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Ok((self.respond)(&req, n)))
    }
}

/// `200 OK` with body `call <n>` and the given headers.
fn ok_with(headers: &'static [(&'static str, &'static str)]) -> Origin {
    Origin::new(move |_, n| {
        let body: &'static [u8] = Box::leak(format!("call {n}").into_bytes().into_boxed_slice());
        let mut res = Response::new(Frames::chunks(&[body], true));
        for (k, v) in headers {
            res.headers_mut().append(*k, HeaderValue::from_static(v));
        }
        res
    })
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Answer {
    fn x_cache(&self) -> Option<&str> {
        self.headers.get("x-cache").map(|v| v.to_str().unwrap())
    }
}

async fn send<S, B>(svc: &mut S, req: Request<()>) -> Answer
where
    S: Service<Request<()>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: collected.to_bytes(),
        trailers,
    }
}

fn get_req(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

fn cache() -> CacheLayer<
    HttpKey,
    tower_rampart::backend::memory::MemoryCacheStore<tower_rampart::cache::CachedResponse>,
    tower_rampart::cache::HttpMode,
> {
    CacheLayer::http(Duration::from_secs(60))
}

/// 10 s fresh, then 60 s of stale-if-error.
fn stale_if_error_cache() -> CacheLayer<
    HttpKey,
    tower_rampart::backend::memory::MemoryCacheStore<tower_rampart::cache::CachedResponse>,
    tower_rampart::cache::HttpMode,
> {
    CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(10))
        .stale_if_error(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn responses_that_must_not_be_shared_are_never_stored() {
    for headers in [
        &[("cache-control", "no-store")][..],
        &[("cache-control", "private, max-age=60")],
        &[("cache-control", "public"), ("cache-control", "no-cache")],
        &[("set-cookie", "session=abc")],
        &[("vary", "*")],
        &[("vary", "accept-language")],
        &[("cache-control", "max-age=0")],
    ] {
        let origin = ok_with(headers);
        let mut svc = cache().layer(origin.clone());
        let a = send(&mut svc, get_req("/x")).await;
        let b = send(&mut svc, get_req("/x")).await;
        assert_eq!(
            (a.x_cache(), b.x_cache()),
            (Some("MISS"), Some("MISS")),
            "{headers:?}"
        );
        assert_eq!(b.body, "call 2", "{headers:?}");
        assert_eq!(origin.calls(), 2, "{headers:?}");
        if headers[0].0 == "set-cookie" {
            assert_eq!(
                b.headers["set-cookie"], "session=abc",
                "passed on, just not stored"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn only_get_and_head_without_credentials_use_the_cache() {
    let origin = ok_with(&[]);
    let mut svc = cache().layer(origin.clone());
    for method in ["POST", "PUT", "DELETE", "PATCH"] {
        for _ in 0..2 {
            let req = Request::builder()
                .method(method)
                .uri("/x")
                .body(())
                .unwrap();
            assert_eq!(send(&mut svc, req).await.x_cache(), None, "{method}");
        }
    }
    assert_eq!(origin.calls(), 8);
    for _ in 0..2 {
        let req = Request::get("/x")
            .header("authorization", "Bearer t")
            .body(())
            .unwrap();
        assert_eq!(
            send(&mut svc, req).await.x_cache(),
            None,
            "Authorization bypasses"
        );
        let req = Request::get("/x")
            .header("range", "bytes=0-1")
            .body(())
            .unwrap();
        assert_eq!(send(&mut svc, req).await.x_cache(), None, "Range bypasses");
        let req = Request::get("/x")
            .header("cache-control", "no-store")
            .body(())
            .unwrap();
        assert_eq!(
            send(&mut svc, req).await.x_cache(),
            None,
            "request no-store bypasses"
        );
    }
    assert_eq!(origin.calls(), 14);
    let head = Request::head("/x").body(()).unwrap();
    assert_eq!(send(&mut svc, head).await.x_cache(), Some("MISS"));
    let head = Request::head("/x").body(()).unwrap();
    assert_eq!(send(&mut svc, head).await.x_cache(), Some("HIT"));
    assert_eq!(
        send(&mut svc, get_req("/x")).await.x_cache(),
        Some("MISS"),
        "GET is its own entry"
    );
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("HIT"));
}

#[tokio::test(start_paused = true)]
async fn errors_are_not_stored_but_other_statuses_can_be_chosen() {
    let origin = Origin::new(|_, _| {
        let mut res = Response::new(Frames::chunks(&[b"missing"], true));
        *res.status_mut() = StatusCode::NOT_FOUND;
        res
    });
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("MISS"));
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .cacheable(|status, _| status.is_success() || status == StatusCode::NOT_FOUND)
        .build()
        .unwrap();
    let mut svc = layer.layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        (hit.status, hit.x_cache()),
        (StatusCode::NOT_FOUND, Some("HIT"))
    );
}

#[tokio::test(start_paused = true)]
async fn bodies_over_the_cap_stream_through_whole_and_uncached() {
    let big: &'static [u8] = Box::leak(vec![b'x'; 600].into_boxed_slice());
    for exact in [true, false] {
        // 3 chunks of 600 bytes, cap 1,000: with an exact size the cache never reads the body;
        // without, it reads 1,200 bytes, gives up, and replays them before the rest.
        let origin = Origin::new(move |_, _| {
            let mut res = Response::new(Frames::chunks(&[big, big, big], exact));
            res.headers_mut()
                .insert("content-type", HeaderValue::from_static("text/plain"));
            res
        });
        let layer = CacheLayer::builder()
            .http()
            .ttl(Duration::from_secs(60))
            .max_body_bytes(1000)
            .build()
            .unwrap();
        let mut svc = layer.layer(origin.clone());
        for _ in 0..2 {
            let a = send(&mut svc, get_req("/big")).await;
            assert_eq!(a.body.len(), 1800, "exact={exact}");
            assert!(a.body.iter().all(|&b| b == b'x'));
            assert_eq!(a.x_cache(), Some("MISS"));
        }
        assert_eq!(origin.calls(), 2, "never stored (exact={exact})");
    }
}

#[tokio::test(start_paused = true)]
async fn streamed_bodies_under_the_cap_are_stored_whole() {
    let origin = Origin::new(|_, n| {
        let tail: &'static [u8] = Box::leak(format!("#{n}").into_bytes().into_boxed_slice());
        Response::new(Frames::chunks(
            &[b"hello ", b"streamed ", b"world", tail],
            false,
        ))
    });
    let mut svc = cache().layer(origin.clone());
    assert_eq!(
        send(&mut svc, get_req("/s")).await.body,
        "hello streamed world#1"
    );
    let hit = send(&mut svc, get_req("/s")).await;
    assert_eq!(hit.body, "hello streamed world#1");
    assert_eq!(hit.x_cache(), Some("HIT"));
}

#[tokio::test(start_paused = true)]
async fn responses_with_trailers_are_passed_through_with_them() {
    let origin = Origin::new(|_, _| {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        Response::new(Frames {
            frames: [
                Frame::data(Bytes::from_static(b"data")),
                Frame::trailers(trailers),
            ]
            .into(),
            exact: false,
        })
    });
    let mut svc = cache().layer(origin.clone());
    for _ in 0..2 {
        let a = send(&mut svc, get_req("/t")).await;
        assert_eq!(a.body, "data");
        assert_eq!(a.trailers.unwrap()["grpc-status"], "0");
    }
    assert_eq!(origin.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn max_age_and_s_maxage_set_the_ttl_unless_told_otherwise() {
    let origin = ok_with(&[("cache-control", "public, max-age=5, s-maxage=2")]);
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_millis(1_999)).await;
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(hit.x_cache(), Some("HIT"));
    assert_eq!(hit.headers["age"], "1");
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        send(&mut svc, get_req("/x")).await.x_cache(),
        Some("MISS"),
        "s-maxage wins"
    );

    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .honor_cache_control(false)
        .x_cache_header(false)
        .age_header(false)
        .build()
        .unwrap();
    let mut svc = layer.layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_secs(30)).await;
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(hit.body, "call 3", "the layer's TTL applied");
    assert!(hit.headers.get("x-cache").is_none() && hit.headers.get("age").is_none());
}

#[tokio::test(start_paused = true)]
async fn vary_is_cached_per_value_when_the_key_covers_the_header() {
    let origin = Origin::new(|req, n| {
        let accept = req
            .headers()
            .get("accept")
            .map_or("none", |v| v.to_str().unwrap());
        let body: &'static [u8] =
            Box::leak(format!("{accept} #{n}").into_bytes().into_boxed_slice());
        let mut res = Response::new(Frames::chunks(&[body], true));
        res.headers_mut()
            .insert("vary", HeaderValue::from_static("Accept"));
        res
    });
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .key(HttpKey::new().header(header::ACCEPT))
        .build()
        .unwrap();
    let mut svc = layer.layer(origin.clone());
    let json = || {
        Request::get("/v")
            .header("accept", "application/json")
            .body(())
            .unwrap()
    };
    let csv = || {
        Request::get("/v")
            .header("accept", "text/csv")
            .body(())
            .unwrap()
    };
    assert_eq!(send(&mut svc, json()).await.body, "application/json #1");
    assert_eq!(send(&mut svc, csv()).await.body, "text/csv #2");
    assert_eq!(send(&mut svc, json()).await.body, "application/json #1");
    assert_eq!(send(&mut svc, csv()).await.body, "text/csv #2");
    assert_eq!(send(&mut svc, get_req("/v")).await.body, "none #3");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn server_errors_are_answered_from_the_stale_entry_within_stale_if_error() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = Arc::clone(&failing);
    let origin = Origin::new(move |_, n| {
        let body: &'static [u8] = Box::leak(format!("call {n}").into_bytes().into_boxed_slice());
        let mut res = Response::new(Frames::chunks(&[body], true));
        if f.load(Ordering::SeqCst) {
            *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
        }
        res
    });
    let layer = stale_if_error_cache();
    let mut svc = layer.layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_secs(15)).await;
    failing.store(true, Ordering::SeqCst);
    let stale = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        (stale.status, stale.x_cache()),
        (StatusCode::OK, Some("STALE"))
    );
    assert_eq!(stale.body, "call 1");
    assert_eq!(stale.headers["age"], "15");
    assert_eq!(origin.calls(), 2);
    tokio::time::advance(Duration::from_secs(60)).await;
    let err = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        err.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "past the window"
    );
}

/// A request that finds a stale entry within its stale-if-error window and waits for another
/// request's call (one that had no stale entry: a reload) is answered from its stale entry when
/// that call fails. It used to call the failing origin again itself and answer its 503.
#[tokio::test(start_paused = true)]
async fn requests_waiting_for_a_failed_call_are_answered_from_their_stale_entry() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let origin = tower::service_fn(move |_: Request<()>| {
        let n = c.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let body: &'static [u8] =
                Box::leak(format!("call {n}").into_bytes().into_boxed_slice());
            let mut res = Response::new(Frames::chunks(&[body], true));
            if n > 1 {
                *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, Infallible>(res)
        }
    });
    let layer = stale_if_error_cache();
    let svc = layer.layer(origin);
    assert_eq!(send(&mut svc.clone(), get_req("/x")).await.body, "call 1");
    tokio::time::advance(Duration::from_secs(15)).await;
    // A reload asks for a fresh answer (no stale one for it); a plain request, right behind it,
    // finds the entry stale and waits for the reload's call.
    let reload = Request::get("/x")
        .header("cache-control", "no-cache")
        .body(())
        .unwrap();
    let (mut a, mut b) = (svc.clone(), svc.clone());
    let (reloaded, waited) = tokio::join!(send(&mut a, reload), send(&mut b, get_req("/x")));
    assert_eq!(
        reloaded.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the reload's own answer"
    );
    assert_eq!(
        (waited.status, waited.x_cache(), &waited.body[..]),
        (StatusCode::OK, Some("STALE"), &b"call 1"[..])
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "the waiter did not call again"
    );
}

/// An origin whose n-th call answers `answer(n)` with `ETag: "v1"`, after `delay`; the list says
/// whether each call it received carried `If-None-Match` (its length: how many calls).
#[allow(clippy::type_complexity)]
fn validating_origin(
    delay: Duration,
    answer: impl Fn(usize) -> Response<Frames> + Clone + Send + Sync + 'static,
) -> (
    impl Service<Request<()>, Response = Response<Frames>, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + 'static,
    Arc<std::sync::Mutex<Vec<bool>>>,
) {
    let validated = Arc::new(std::sync::Mutex::new(Vec::new()));
    let v = Arc::clone(&validated);
    let origin = tower::service_fn(move |req: Request<()>| {
        let n = {
            let mut v = v.lock().unwrap();
            v.push(req.headers().contains_key(header::IF_NONE_MATCH));
            v.len()
        };
        let answer = answer.clone();
        async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let mut res = answer(n);
            res.headers_mut()
                .insert(header::ETAG, HeaderValue::from_static("\"v1\""));
            Ok::<_, Infallible>(res)
        }
    });
    (origin, validated)
}

/// Requests that waited for another request's call were answered the whole `200` even when their
/// validators matched what they were served (the flight's new entry, or their own stale entry when
/// that call failed): the validators were taken off before the wait. They are now taken off only
/// for the call that fills the key, so a waiter they match gets `304`, and a waiter that calls
/// through (the flight's answer was not stored) sends them to the origin. The request that leads
/// the fill keeps them aside and gets `304` too when they match what its fill stored, or its stale
/// entry when the call fails.
#[tokio::test(start_paused = true)]
async fn conditional_requests_get_304_when_what_a_fill_brings_matches() {
    let (origin, validated) = validating_origin(Duration::from_millis(100), |n| {
        let mut res = Response::new(Frames::chunks(&[b"the document"], true));
        match n {
            1 => {}
            2..=4 => *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE,
            // The call through, with `If-None-Match: "v1"`: the origin's own 304.
            6 => *res.status_mut() = StatusCode::NOT_MODIFIED,
            _ => {
                res.headers_mut()
                    .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            }
        }
        res
    });
    let calls = || validated.lock().unwrap().len();
    let svc = stale_if_error_cache().layer(origin);
    let tagged = |tag: &'static str| {
        Request::get("/x")
            .header("if-none-match", tag)
            .body(())
            .unwrap()
    };
    // A miss led by a conditional request (polled first, it leads), three requests waiting for it.
    let (mut a, mut b, mut c, mut d) = (svc.clone(), svc.clone(), svc.clone(), svc.clone());
    let (led, matching, other, plain) = tokio::join!(
        send(&mut a, tagged("\"v1\"")),
        send(&mut b, tagged("\"v1\"")),
        send(&mut c, tagged("\"v0\"")),
        send(&mut d, get_req("/x")),
    );
    assert_eq!(
        (led.status, led.x_cache(), &led.body[..]),
        (StatusCode::NOT_MODIFIED, Some("MISS"), &b""[..]),
        "the leader's validators, kept, match what its fill stored"
    );
    assert_eq!(led.headers["etag"], "\"v1\"");
    assert_eq!(
        (matching.status, matching.x_cache(), &matching.body[..]),
        (StatusCode::NOT_MODIFIED, Some("MISS"), &b""[..])
    );
    assert_eq!(matching.headers["etag"], "\"v1\"");
    for (answer, why) in [(&other, "another tag"), (&plain, "no validators")] {
        assert_eq!(
            (answer.status, answer.x_cache(), &answer.body[..]),
            (StatusCode::OK, Some("MISS"), &b"the document"[..]),
            "{why}"
        );
    }
    assert_eq!(calls(), 1, "one call for the four");

    // Stale, within stale-if-error: a reload's call fails, and the request waiting for it is
    // answered from its stale entry, `304` as its validators match.
    tokio::time::advance(Duration::from_secs(15)).await;
    let reload = Request::get("/x")
        .header("cache-control", "no-cache")
        .body(())
        .unwrap();
    let (reloaded, waited) = tokio::join!(send(&mut a, reload), send(&mut b, tagged("\"v1\"")));
    assert_eq!(reloaded.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (waited.status, waited.x_cache(), &waited.body[..]),
        (StatusCode::NOT_MODIFIED, Some("STALE"), &b""[..])
    );
    assert_eq!(calls(), 2);
    // A conditional request that leads the fill itself, and is served its stale entry when the
    // call fails: `304` too.
    let led = send(&mut a, tagged("\"v1\"")).await;
    assert_eq!(
        (led.status, led.x_cache(), &led.body[..]),
        (StatusCode::NOT_MODIFIED, Some("STALE"), &b""[..])
    );
    let other = send(&mut a, tagged("\"v0\"")).await;
    assert_eq!(
        (other.status, other.x_cache(), &other.body[..]),
        (StatusCode::OK, Some("STALE"), &b"the document"[..]),
        "another tag: the stale entry in full"
    );
    assert_eq!(calls(), 4);

    // The flight's answer is not stored (`no-store`): the waiter calls through with its
    // validators, which the origin may answer itself.
    let (passed, called) =
        tokio::join!(send(&mut a, get_req("/x")), send(&mut b, tagged("\"v1\"")));
    assert_eq!(passed.status, StatusCode::OK);
    assert_eq!(
        called.status,
        StatusCode::NOT_MODIFIED,
        "the origin's own answer to the validators, passed on"
    );
    assert_eq!(calls(), 6);
    assert_eq!(
        *validated.lock().unwrap(),
        [false, false, false, false, false, true],
        "fills ask for the whole response; the call through keeps the validators"
    );
}

/// A reload (`Cache-Control: no-cache`) with validators was answered the whole `200` however they
/// matched: its validators were taken off before the refresh. It keeps them for its own answer now
/// (the refresh still asks the origin for the whole response): `304` when they match what it
/// brought, the whole response when not, and the entry is refreshed for everyone either way.
#[tokio::test(start_paused = true)]
async fn a_reload_with_validators_gets_304_when_the_refresh_matches_them() {
    let (origin, validated) = validating_origin(Duration::ZERO, |n| {
        let body: &'static [u8] = Box::leak(format!("call {n}").into_bytes().into_boxed_slice());
        Response::new(Frames::chunks(&[body], true))
    });
    let mut svc = cache().layer(origin);
    assert_eq!(send(&mut svc, get_req("/x")).await.body, "call 1");
    let reload = |tag: &'static str| {
        Request::get("/x")
            .header("cache-control", "no-cache")
            .header("if-none-match", tag)
            .body(())
            .unwrap()
    };
    let matched = send(&mut svc, reload("\"v1\"")).await;
    assert_eq!(
        (matched.status, matched.x_cache(), &matched.body[..]),
        (StatusCode::NOT_MODIFIED, Some("MISS"), &b""[..])
    );
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        (hit.x_cache(), &hit.body[..]),
        (Some("HIT"), &b"call 2"[..]),
        "refreshed for everyone"
    );
    let other = send(&mut svc, reload("\"v0\"")).await;
    assert_eq!(
        (other.status, &other.body[..]),
        (StatusCode::OK, &b"call 3"[..])
    );
    assert_eq!(
        *validated.lock().unwrap(),
        [false, false, false],
        "every refresh asked for the whole response"
    );
}

/// A request's own `Cache-Control` bounds (RFC 9111 §5.2.1): `max-age=N` accepts no older
/// answer, `min-fresh=N` none fresh for less than N more seconds (a stored answer outside them is
/// fetched and stored again, for everyone), `only-if-cached` is answered from the cache or with a
/// `504`, the origin untouched. They used to be ignored: a hit of any age.
#[tokio::test(start_paused = true)]
async fn a_requests_max_age_min_fresh_and_only_if_cached_bound_what_it_is_served() {
    let origin = ok_with(&[]);
    let mut svc = cache().layer(origin.clone());
    let with = |cc: &str| {
        Request::get("/x")
            .header("cache-control", cc)
            .body(())
            .unwrap()
    };
    // Nothing stored: only-if-cached is a 504, and the origin is not called.
    let none = send(&mut svc, with("only-if-cached")).await;
    assert_eq!(
        (none.status, none.x_cache()),
        (StatusCode::GATEWAY_TIMEOUT, Some("MISS"))
    );
    assert_eq!(origin.calls(), 0);
    assert_eq!(send(&mut svc, get_req("/x")).await.body, "call 1");
    tokio::time::advance(Duration::from_secs(20)).await;
    // 20 s old, fresh for 40 s more (the layer's 60 s).
    let hit = send(&mut svc, with("max-age=30")).await;
    assert_eq!(
        (hit.x_cache(), &hit.body[..]),
        (Some("HIT"), &b"call 1"[..])
    );
    let cached = send(&mut svc, with("only-if-cached, max-age=30")).await;
    assert_eq!(
        (cached.status, &cached.body[..]),
        (StatusCode::OK, &b"call 1"[..])
    );
    let fresher = send(&mut svc, with("min-fresh=30")).await;
    assert_eq!(
        (fresher.x_cache(), &fresher.body[..]),
        (Some("HIT"), &b"call 1"[..])
    );
    // A reload that may not reach the origin: nothing stored will do, and no call is made.
    for cc in ["no-cache, only-if-cached", "only-if-cached, max-age=0"] {
        let reload = send(&mut svc, with(cc)).await;
        assert_eq!(reload.status, StatusCode::GATEWAY_TIMEOUT, "{cc}");
    }
    assert_eq!(origin.calls(), 1);
    // Too old for max-age=10: fetched and stored again; the next plain request gets it.
    let younger = send(&mut svc, with("max-age=10")).await;
    assert_eq!(
        (younger.x_cache(), &younger.body[..]),
        (Some("MISS"), &b"call 2"[..])
    );
    assert_eq!(send(&mut svc, get_req("/x")).await.body, "call 2");
    // Fresh for less than min-fresh asks: fetched again.
    tokio::time::advance(Duration::from_secs(50)).await;
    let fresh = send(&mut svc, with("min-fresh=30")).await;
    assert_eq!(fresh.body, "call 3");
    // too old for max-age and only-if-cached: a 504, not a call.
    tokio::time::advance(Duration::from_secs(20)).await;
    let refused = send(&mut svc, with("only-if-cached, max-age=5")).await;
    assert_eq!(refused.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(origin.calls(), 3);
    // With `request_no_cache(false)` a client cannot make the origin work: max-age and min-fresh
    // are not honoured (only-if-cached still is).
    let origin = ok_with(&[]);
    let mut svc = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .request_no_cache(false)
        .build()
        .unwrap()
        .layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_secs(20)).await;
    let hit = send(&mut svc, with("max-age=1, min-fresh=59")).await;
    assert_eq!(
        (hit.x_cache(), &hit.body[..]),
        (Some("HIT"), &b"call 1"[..])
    );
    assert_eq!(origin.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_over_http_marks_stale_answers() {
    let origin = ok_with(&[]);
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(10))
        .stale_while_revalidate(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut svc = layer.layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_secs(12)).await;
    let stale = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        (stale.x_cache(), &stale.body[..]),
        (Some("STALE"), &b"call 1"[..])
    );
    tokio::task::yield_now().await;
    let fresh = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        (fresh.x_cache(), &fresh.body[..]),
        (Some("HIT"), &b"call 2"[..])
    );
}

#[tokio::test(start_paused = true)]
async fn with_authority_keys_an_origin_form_request_on_its_host_header() {
    let origin = Origin::new(|req, n| {
        let host = req
            .headers()
            .get("host")
            .map_or("none", |h| h.to_str().unwrap())
            .to_owned();
        let body: &'static [u8] = Box::leak(format!("{host} {n}").into_bytes().into_boxed_slice());
        Response::new(Frames::chunks(&[body], true))
    });
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .key(HttpKey::new().with_authority())
        .build()
        .unwrap();
    let mut svc = layer.layer(origin.clone());
    let for_host = |host: &str| Request::get("/x").header("host", host).body(()).unwrap();
    // HTTP/1.1 to a server: the target is a path, the host is only in `Host`.
    let a = send(&mut svc, for_host("a.example")).await;
    let b = send(&mut svc, for_host("b.example")).await;
    assert_eq!(
        (a.x_cache(), a.body.as_ref()),
        (Some("MISS"), &b"a.example 1"[..])
    );
    assert_eq!(
        (b.x_cache(), b.body.as_ref()),
        (Some("MISS"), &b"b.example 2"[..]),
        "another host's request is another entry"
    );
    let a_again = send(&mut svc, for_host("a.example")).await;
    assert_eq!(
        (a_again.x_cache(), a_again.body.as_ref()),
        (Some("HIT"), &b"a.example 1"[..])
    );
    // An absolute-form target names its host itself, whatever `Host` says (RFC 9112 §3.2.2).
    let absolute = Request::get("http://c.example/x")
        .header("host", "a.example")
        .body(())
        .unwrap();
    assert_eq!(send(&mut svc, absolute).await.x_cache(), Some("MISS"));
    // One form whichever carried the host, in any case: HTTP/2's `:authority` (a URI with a
    // scheme) and an HTTP/1.1 `Host` share the entry.
    let h2 = Request::get("https://A.Example/x").body(()).unwrap();
    let shared = send(&mut svc, h2).await;
    assert_eq!(
        (shared.x_cache(), shared.body.as_ref()),
        (Some("HIT"), &b"a.example 1"[..])
    );
    // A `Host` that is not a host cannot write another path's key: the request is not cached.
    let poisoned = send(&mut svc, for_host("a.example/admin")).await;
    assert_eq!(poisoned.x_cache(), None, "no key: passed through");
    let admin = Request::get("/admin/x")
        .header("host", "a.example")
        .body(())
        .unwrap();
    assert_eq!(send(&mut svc, admin).await.x_cache(), Some("MISS"));
    // Without the option, the host is not part of the key.
    let mut plain = cache().layer(origin.clone());
    send(&mut plain, for_host("a.example")).await;
    assert_eq!(
        send(&mut plain, for_host("b.example")).await.x_cache(),
        Some("HIT")
    );
}

#[tokio::test]
async fn nested_routers_sharing_a_layer_key_on_the_path_the_client_sent() {
    let layer = CacheLayer::http(Duration::from_secs(60));
    let handle = layer.handle();
    let users = Router::new()
        .route("/{id}", get(|| async { "a user" }))
        .route_layer(layer.clone());
    let orgs = Router::new()
        .route("/{id}", get(|| async { "an org" }))
        .route_layer(layer);
    let app = Router::new().nest("/users", users).nest("/orgs", orgs);
    let served = serve(app, false).await;

    let user = served.send("GET", "/users/1", &[]).await;
    assert_eq!(
        (
            user.headers["x-cache"].to_str().unwrap(),
            user.body.as_str()
        ),
        ("MISS", "a user")
    );
    let org = served.send("GET", "/orgs/1", &[]).await;
    assert_eq!(
        (org.headers["x-cache"].to_str().unwrap(), org.body.as_str()),
        ("MISS", "an org"),
        "the nested routers' stripped paths (`/1`) would have shared an entry"
    );
    assert_eq!(
        served.send("GET", "/users/1", &[]).await.headers["x-cache"],
        "HIT"
    );
    // Invalidation takes the path as clients see it.
    handle.invalidate_prefix("GET /users/").await.unwrap();
    assert_eq!(
        served.send("GET", "/users/1", &[]).await.headers["x-cache"],
        "MISS"
    );
    assert_eq!(
        served.send("GET", "/orgs/1", &[]).await.headers["x-cache"],
        "HIT"
    );
}

#[tokio::test(start_paused = true)]
async fn statuses_without_freshness_from_the_origin_are_stored_only_when_heuristically_cacheable() {
    let with_status = |status: StatusCode, headers: &'static [(&'static str, &'static str)]| {
        Origin::new(move |_, n| {
            let body: &'static [u8] =
                Box::leak(format!("call {n}").into_bytes().into_boxed_slice());
            let mut res = Response::new(Frames::chunks(&[body], true));
            *res.status_mut() = status;
            for (k, v) in headers {
                res.headers_mut().append(*k, HeaderValue::from_static(v));
            }
            res
        })
    };
    // A job still running answers 202; the next answer must come from the origin.
    for status in [
        StatusCode::CREATED,
        StatusCode::ACCEPTED,
        StatusCode::RESET_CONTENT,
    ] {
        let origin = with_status(status, &[]);
        let mut svc = cache().layer(origin.clone());
        send(&mut svc, get_req("/x")).await;
        let again = send(&mut svc, get_req("/x")).await;
        assert_eq!(
            (again.x_cache(), again.body.as_ref()),
            (Some("MISS"), &b"call 2"[..]),
            "{status}"
        );
        // The origin saying how long it stays fresh makes it storable.
        let origin = with_status(status, &[("cache-control", "max-age=30")]);
        let mut svc = cache().layer(origin.clone());
        send(&mut svc, get_req("/x")).await;
        assert_eq!(
            send(&mut svc, get_req("/x")).await.x_cache(),
            Some("HIT"),
            "{status}"
        );
    }
    for status in [
        StatusCode::OK,
        StatusCode::NON_AUTHORITATIVE_INFORMATION,
        StatusCode::NO_CONTENT,
    ] {
        let origin = with_status(status, &[]);
        let mut svc = cache().layer(origin.clone());
        send(&mut svc, get_req("/x")).await;
        assert_eq!(
            send(&mut svc, get_req("/x")).await.x_cache(),
            Some("HIT"),
            "{status}"
        );
    }
    // 206 never, even with max-age: the cache does not assemble ranges.
    let origin = with_status(
        StatusCode::PARTIAL_CONTENT,
        &[("cache-control", "max-age=30")],
    );
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("MISS"));
}

#[tokio::test(start_paused = true)]
async fn s_maxage_forbids_the_layers_stale_answers_but_not_the_origins_own() {
    for (cc, stale) in [
        ("max-age=1", true),
        ("s-maxage=1", false),
        ("max-age=1, proxy-revalidate", false),
        // The origin's own window still applies (as CDNs read `s-maxage` with it).
        ("s-maxage=1, stale-while-revalidate=60", true),
        (
            "s-maxage=1, stale-while-revalidate=60, must-revalidate",
            false,
        ),
    ] {
        let origin = ok_with(Box::leak(Box::new([("cache-control", cc)])));
        let layer = CacheLayer::builder()
            .http()
            .ttl(Duration::from_secs(60))
            .stale_while_revalidate(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut svc = layer.layer(origin.clone());
        send(&mut svc, get_req("/x")).await;
        tokio::time::advance(Duration::from_secs(2)).await;
        let after = send(&mut svc, get_req("/x")).await;
        let expected = if stale { "STALE" } else { "MISS" };
        assert_eq!(after.x_cache(), Some(expected), "{cc}");
    }
}

#[tokio::test(start_paused = true)]
async fn expires_sets_the_ttl_without_max_age_and_a_past_or_invalid_one_is_never_stored() {
    const DATE: &str = "Sun, 06 Dec 2026 12:00:00 GMT";
    for headers in [
        &[("expires", "0")][..],
        &[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")],
        &[("date", DATE), ("expires", DATE)],
        &[("date", DATE), ("expires", "Sun, 06 Dec 2026 11:59:59 GMT")],
    ] {
        let origin = ok_with(headers);
        let mut svc = cache().layer(origin.clone());
        send(&mut svc, get_req("/x")).await;
        let again = send(&mut svc, get_req("/x")).await;
        assert_eq!(
            (again.x_cache(), again.body.as_ref()),
            (Some("MISS"), &b"call 2"[..]),
            "{headers:?}"
        );
    }
    // 30 s after the response's `Date`: fresh for 30 s (not the layer's 60).
    let origin = ok_with(&[("date", DATE), ("expires", "Sun, 06 Dec 2026 12:00:30 GMT")]);
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_millis(29_999)).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("HIT"));
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("MISS"));
    // `max-age` wins over `Expires`, even a past one.
    let origin = ok_with(&[("cache-control", "max-age=10"), ("expires", "0")]);
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("HIT"));
    // Not honouring `Cache-Control` ignores `Expires` too.
    let layer = CacheLayer::builder()
        .http()
        .ttl(Duration::from_secs(60))
        .honor_cache_control(false)
        .build()
        .unwrap();
    let origin = ok_with(&[("expires", "0")]);
    let mut svc = layer.layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("HIT"));
}

#[tokio::test(start_paused = true)]
async fn fields_for_one_connection_or_a_proxy_are_not_replayed() {
    let origin = ok_with(&[
        ("connection", "close, X-Debug-Hop"),
        ("x-debug-hop", "1"),
        ("proxy-authenticate", "Basic realm=\"proxy\""),
        ("proxy-authentication-info", "nextnonce=\"abc\""),
        ("x-kept", "yes"),
    ]);
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(hit.x_cache(), Some("HIT"));
    assert_eq!(hit.headers["x-kept"], "yes");
    for gone in [
        "connection",
        "x-debug-hop",
        "proxy-authenticate",
        "proxy-authentication-info",
    ] {
        assert!(hit.headers.get(gone).is_none(), "{gone} replayed");
    }
}

#[tokio::test(start_paused = true)]
async fn an_upstream_age_counts_towards_freshness_and_the_age_sent() {
    let origin = ok_with(&[("cache-control", "max-age=60"), ("age", "55")]);
    let mut svc = cache().layer(origin.clone());
    let miss = send(&mut svc, get_req("/x")).await;
    // The upstream's age is passed on (it was dropped: a client would keep the answer 55 s
    // longer than it may).
    assert_eq!(
        (miss.x_cache(), miss.headers["age"].to_str().unwrap()),
        (Some("MISS"), "55")
    );
    tokio::time::advance(Duration::from_millis(4_999)).await;
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        (hit.x_cache(), hit.headers["age"].to_str().unwrap()),
        (Some("HIT"), "59")
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(
        send(&mut svc, get_req("/x")).await.x_cache(),
        Some("MISS"),
        "60 s old: stale"
    );
    // Already as old as its lifetime (here the layer's 60 s): not stored.
    let origin = ok_with(&[("age", "60")]);
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    assert_eq!(send(&mut svc, get_req("/x")).await.x_cache(), Some("MISS"));
    // A value that is not seconds is ignored; a list's first member counts.
    for (age, sent) in [("soon", "0"), ("7, 9", "7")] {
        let origin = ok_with(Box::leak(Box::new([("age", age)])));
        let mut svc = cache().layer(origin.clone());
        send(&mut svc, get_req("/x")).await;
        let hit = send(&mut svc, get_req("/x")).await;
        assert_eq!(
            (hit.x_cache(), hit.headers["age"].to_str().unwrap()),
            (Some("HIT"), sent),
            "{age}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn an_expires_without_date_is_what_is_left_and_the_age_is_not_taken_off_it_again() {
    let origin = Origin::new(|_, n| {
        let body: &'static [u8] = Box::leak(format!("call {n}").into_bytes().into_boxed_slice());
        let mut res = Response::new(Frames::chunks(&[body], true));
        let expires =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(31));
        res.headers_mut()
            .insert("expires", HeaderValue::from_str(&expires).unwrap());
        res.headers_mut()
            .insert("age", HeaderValue::from_static("20"));
        res
    });
    let mut svc = cache().layer(origin.clone());
    send(&mut svc, get_req("/x")).await;
    tokio::time::advance(Duration::from_secs(25)).await;
    let hit = send(&mut svc, get_req("/x")).await;
    assert_eq!(
        hit.x_cache(),
        Some("HIT"),
        "fresh until its Expires, 30 s on"
    );
    assert_eq!(hit.headers["age"], "45", "20 upstream and 25 here");
}

/// An app whose items are cached (`GET`, `HEAD`, varying on `accept`) and written with `PUT`,
/// `DELETE` and `OPTIONS`; a `PUT` with `x-fail` fails with 409. Each answer carries the item's
/// version.
fn items_app(invalidate_on_write: bool) -> Router {
    let layer = CacheLayer::builder()
        .http()
        .key(HttpKey::new().header(header::ACCEPT))
        .ttl(Duration::from_secs(300))
        .invalidate_on_write(invalidate_on_write)
        .build()
        .unwrap();
    use axum::extract::Path;
    let version = Arc::new(AtomicUsize::new(0));
    let (read, write) = (Arc::clone(&version), Arc::clone(&version));
    Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<String>, headers: HeaderMap| {
                let v = read.load(Ordering::SeqCst);
                let accept = headers
                    .get(header::ACCEPT)
                    .map(|a| a.to_str().unwrap_or("").to_owned())
                    .unwrap_or_default();
                async move {
                    (
                        [(header::VARY, "accept")],
                        format!("{id} v{v} for {accept}"),
                    )
                }
            })
            .put(move |Path(_): Path<String>, headers: HeaderMap| {
                let ok = !headers.contains_key("x-fail");
                if ok {
                    write.fetch_add(1, Ordering::SeqCst);
                }
                async move {
                    if ok {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::CONFLICT
                    }
                }
            })
            .delete(|| async { StatusCode::SEE_OTHER })
            .options(|| async { StatusCode::NO_CONTENT }),
        )
        .route_layer(layer)
}

/// RFC 9111 §4.4: a cache must invalidate a resource's entries when a request that may change it
/// succeeds. Before, a `PUT /items/1` left `GET /items/1` answered from the cache for the whole
/// TTL. Now every variant of its `GET` and `HEAD` entries is gone before the `PUT` is answered;
/// other resources (`/items/10`, whose key starts the same), failed writes (409) and safe methods
/// (`OPTIONS`) invalidate nothing; a 3xx counts as a success.
#[tokio::test]
async fn a_successful_write_invalidates_its_resource_and_nothing_else() {
    let served = serve(items_app(true), false).await;
    let x_cache = |r: &crate::common::http::Reply| r.headers["x-cache"].clone();
    let json = [("accept", "application/json")];
    let text = [("accept", "text/plain")];
    // Fill: two variants of /items/1, its HEAD, and /items/10.
    for (method, path, headers) in [
        ("GET", "/items/1", &json[..]),
        ("GET", "/items/1", &text[..]),
        ("HEAD", "/items/1", &json[..]),
        ("GET", "/items/10", &json[..]),
    ] {
        let first = served.send(method, path, headers).await;
        assert_eq!(x_cache(&first), "MISS", "{method} {path} {headers:?}");
        let again = served.send(method, path, headers).await;
        assert_eq!(x_cache(&again), "HIT", "{method} {path} {headers:?}");
    }
    // A failed write and a safe method change nothing.
    let conflict = served.send("PUT", "/items/1", &[("x-fail", "1")]).await;
    assert_eq!(conflict.status, StatusCode::CONFLICT);
    let options = served.send("OPTIONS", "/items/1", &[]).await;
    assert_eq!(options.status, StatusCode::NO_CONTENT);
    assert_eq!(x_cache(&served.send("GET", "/items/1", &json).await), "HIT");

    let put = served.send("PUT", "/items/1", &[]).await;
    assert_eq!(put.status, StatusCode::NO_CONTENT);
    assert!(
        !put.headers.contains_key("x-cache"),
        "a write is not a cache answer"
    );
    for (method, headers) in [("GET", &json[..]), ("GET", &text[..]), ("HEAD", &json[..])] {
        let after = served.send(method, "/items/1", headers).await;
        assert_eq!(x_cache(&after), "MISS", "{method} /items/1 {headers:?}");
        if method == "GET" {
            assert!(after.body.contains(" v1 "), "fetched again: {}", after.body);
        }
    }
    let other = served.send("GET", "/items/10", &json).await;
    assert_eq!(x_cache(&other), "HIT", "another resource is left alone");
    assert!(other.body.contains(" v0 "), "{}", other.body);

    // A 303 answering a DELETE is a success too.
    assert_eq!(x_cache(&served.send("GET", "/items/1", &json).await), "HIT");
    let deleted = served.send("DELETE", "/items/1", &[]).await;
    assert_eq!(deleted.status, StatusCode::SEE_OTHER);
    assert_eq!(
        x_cache(&served.send("GET", "/items/1", &json).await),
        "MISS"
    );
}

/// `.invalidate_on_write(false)` keeps the entries: the app invalidates them itself.
#[tokio::test]
async fn invalidation_on_write_can_be_turned_off() {
    let served = serve(items_app(false), false).await;
    let json = [("accept", "application/json")];
    served.send("GET", "/items/1", &json).await;
    assert_eq!(
        served.send("GET", "/items/1", &json).await.headers["x-cache"],
        "HIT"
    );
    served.send("PUT", "/items/1", &[]).await;
    let after = served.send("GET", "/items/1", &json).await;
    assert_eq!(after.headers["x-cache"], "HIT");
    assert!(after.body.contains(" v0 "), "{}", after.body);
}

/// A write's invalidation keeps fills of its own resource that were running when it came from
/// storing (they may have read the resource before the write), and only those: a fill of another
/// resource, running meanwhile, still stores (a write costs other keys no miss).
#[tokio::test]
async fn a_write_drops_its_resources_running_fills_and_no_others() {
    use axum::body::Body;
    use axum::extract::Path;
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::clone(&release);
    let version = Arc::new(AtomicUsize::new(0));
    let (read, write) = (Arc::clone(&version), Arc::clone(&version));
    let waiting = Arc::new(AtomicUsize::new(0));
    let waiters = Arc::clone(&waiting);
    let app: Router = Router::new()
        .route(
            "/items/{id}",
            get(move |Path(id): Path<String>| {
                let (gate, read) = (Arc::clone(&gate), Arc::clone(&read));
                let waiters = Arc::clone(&waiters);
                async move {
                    // Reads the item, then waits to be let go: a slow fill.
                    let v = read.load(Ordering::SeqCst);
                    waiters.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    format!("{id} v{v}")
                }
            })
            .put(move || {
                write.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::NO_CONTENT }
            }),
        )
        .route_layer(CacheLayer::http(Duration::from_secs(300)));
    let call = |app: &Router, method: &str, path: &str| {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::empty())
            .unwrap();
        app.clone().oneshot(req)
    };
    // Fills of /items/1 and of eight other resources, all running when /items/1 is written. (A
    // resource whose keys share /items/1's stripe of write epochs, one in 64, would miss once
    // more: at most two of the eight are allowed to.)
    let others: Vec<String> = (2..10).map(|i| format!("/items/{i}")).collect();
    let mut fills = vec![tokio::spawn(call(&app, "GET", "/items/1"))];
    for path in &others {
        fills.push(tokio::spawn(call(&app, "GET", path)));
    }
    while waiting.load(Ordering::SeqCst) < fills.len() {
        tokio::task::yield_now().await;
    }
    let put = call(&app, "PUT", "/items/1").await.unwrap();
    assert_eq!(put.status(), StatusCode::NO_CONTENT);
    release.add_permits(1000);
    for fill in fills {
        assert_eq!(fill.await.unwrap().unwrap().headers()["x-cache"], "MISS");
    }
    let mut stored = 0;
    for path in &others {
        if call(&app, "GET", path).await.unwrap().headers()["x-cache"] == "HIT" {
            stored += 1;
        }
    }
    assert!(
        stored >= 6,
        "only {stored} of 8 other resources' fills stored"
    );
    let one = call(&app, "GET", "/items/1").await.unwrap();
    assert_eq!(
        one.headers()["x-cache"],
        "MISS",
        "the written resource's fill, begun before the write, did not store"
    );
    let body = one.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"1 v1");
}

/// A conditional request to a stored response got the whole `200` again, even when the client
/// had it (RFC 9111 §4.3.2: a cache evaluates the request's conditions against what it stored).
/// Now `If-None-Match` naming the stored `ETag` (weak comparison, in a list, or `*`) or, without
/// it, an `If-Modified-Since` no earlier than `Last-Modified` is answered `304` from the cache,
/// with the validators and no body; anything else is the stored `200`.
#[tokio::test]
async fn a_conditional_request_matching_the_stored_response_gets_304_from_the_cache() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = Arc::clone(&calls);
    let app = Router::new()
        .route(
            "/doc",
            get(move || {
                c.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        [
                            (header::ETAG, "\"v1\""),
                            (header::LAST_MODIFIED, "Sat, 21 Feb 2026 12:00:00 GMT"),
                            (header::CACHE_CONTROL, "max-age=300"),
                        ],
                        "the document",
                    )
                }
            }),
        )
        .route_layer(CacheLayer::http(Duration::from_secs(60)));
    let served = serve(app, false).await;
    let first = served.send("GET", "/doc", &[]).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-cache"], "MISS");
    for (name, value) in [
        ("if-none-match", "\"v1\""),
        ("if-none-match", "W/\"v1\""),
        ("if-none-match", "\"a,b\", \"other\" ,W/\"v1\""),
        ("if-none-match", "*"),
        ("if-modified-since", "Sat, 21 Feb 2026 12:00:00 GMT"),
        ("if-modified-since", "Sun, 22 Feb 2026 08:00:00 GMT"),
    ] {
        let r = served.send("GET", "/doc", &[(name, value)]).await;
        assert_eq!(r.status, StatusCode::NOT_MODIFIED, "{name}: {value}");
        assert_eq!(r.headers["x-cache"], "HIT", "{name}: {value}");
        assert_eq!(r.headers["etag"], "\"v1\"");
        assert_eq!(r.headers["cache-control"], "max-age=300");
        assert!(r.headers.contains_key("age"));
        assert!(
            !r.headers.contains_key("last-modified"),
            "not a 304's field"
        );
        assert_eq!(r.body, "", "{name}: {value}");
    }
    for (headers, why) in [
        (&[("if-none-match", "\"v2\"")][..], "another tag"),
        (&[("if-none-match", "\"v1")][..], "not a tag"),
        (
            &[("if-modified-since", "Fri, 20 Feb 2026 12:00:00 GMT")][..],
            "modified since",
        ),
        (&[("if-modified-since", "yesterday")][..], "not a date"),
        (
            &[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Sun, 22 Feb 2026 08:00:00 GMT"),
            ][..],
            "If-None-Match decides, If-Modified-Since is ignored",
        ),
    ] {
        let r = served.send("GET", "/doc", headers).await;
        assert_eq!(r.status, StatusCode::OK, "{why}");
        assert_eq!(r.headers["x-cache"], "HIT", "{why}");
        assert_eq!(r.body, "the document", "{why}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "every answer came from the cache"
    );
}

/// An origin that answers conditional requests itself: `ETag: "v<n>"` for its n-th answer, and
/// `304` to an `If-None-Match` naming the current one. Counts its calls in `calls`.
fn conditional_origin(calls: &Arc<AtomicUsize>) -> Router {
    use axum::response::IntoResponse;
    let c = Arc::clone(calls);
    Router::new().route(
        "/doc",
        get(move |headers: HeaderMap| {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            let etag = format!("\"v{n}\"");
            let current = format!("\"v{}\"", n - 1);
            let matches = headers
                .get(header::IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == current.as_bytes());
            async move {
                if matches {
                    return StatusCode::NOT_MODIFIED.into_response();
                }
                (
                    [
                        (header::ETAG, etag),
                        (
                            header::LAST_MODIFIED,
                            "Sat, 21 Feb 2026 12:00:00 GMT".to_owned(),
                        ),
                    ],
                    format!("body {n}"),
                )
                    .into_response()
            }
        }),
    )
}

/// A client's validators went to the origin with the cache's own fills: a conditional request
/// that missed (or was served stale) made the origin answer `304`, which is not stored, so the
/// cache never filled (or refreshed) for anyone. Fills now ask for the whole response.
#[tokio::test(start_paused = true)]
async fn fills_made_for_a_conditional_request_ask_for_the_whole_response() {
    use axum::body::Body;
    let calls = Arc::new(AtomicUsize::new(0));
    let app = conditional_origin(&calls).route_layer(
        CacheLayer::builder()
            .http()
            .ttl(Duration::from_secs(10))
            .stale_while_revalidate(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let get = |headers: &[(&str, &str)]| {
        let mut req = Request::builder().uri("/doc");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        app.clone().oneshot(req.body(Body::empty()).unwrap())
    };
    let body = |r: Response<Body>| async move {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    };
    // A miss led by a conditional request: the origin is asked for the whole response, which
    // is stored; the client gets it (a 200, valid for a conditional request).
    let first = get(&[("if-none-match", "\"v0\"")]).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["x-cache"], "MISS");
    assert_eq!(body(first).await, "body 1");
    let hit = get(&[("if-none-match", "\"v1\"")]).await.unwrap();
    assert_eq!(
        (hit.status(), &hit.headers()["x-cache"]),
        (
            StatusCode::NOT_MODIFIED,
            &"HIT".parse::<HeaderValue>().unwrap()
        )
    );

    // Stale: the conditional request gets a 304 from the stale entry, and the refresh in the
    // background stores the origin's new whole response.
    tokio::time::advance(Duration::from_secs(11)).await;
    let stale = get(&[("if-none-match", "\"v1\"")]).await.unwrap();
    assert_eq!(stale.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(stale.headers()["x-cache"], "STALE");
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let refreshed = get(&[]).await.unwrap();
    assert_eq!(refreshed.headers()["x-cache"], "HIT");
    assert_eq!(refreshed.headers()["etag"], "\"v2\"");
    assert_eq!(body(refreshed).await, "body 2");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // Preconditions are the origin's to evaluate: straight through, nothing stored or served.
    let precondition = get(&[("if-match", "\"v2\"")]).await.unwrap();
    assert!(!precondition.headers().contains_key("x-cache"));
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // An empty list element is skipped; two `If-Modified-Since` are not a date.
    let listed = get(&[("if-none-match", "\"x\", , \"v2\"")]).await.unwrap();
    assert_eq!(listed.status(), StatusCode::NOT_MODIFIED);
    let once = get(&[("if-modified-since", "Sun, 22 Feb 2099 08:00:00 GMT")])
        .await
        .unwrap();
    assert_eq!(once.status(), StatusCode::NOT_MODIFIED);
    let mut req = Request::builder().uri("/doc");
    for _ in 0..2 {
        req = req.header("if-modified-since", "Sun, 22 Feb 2099 08:00:00 GMT");
    }
    let twice = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::OK);
    assert_eq!(twice.headers()["x-cache"], "HIT");

    // A forced refresh (`no-cache`, a browser's reload) with the client's validators: the origin
    // is asked for the whole response, which replaces the entry (it answered 304 to the client's
    // validators, and nothing was refreshed).
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let reload = get(&[("cache-control", "no-cache"), ("if-none-match", "\"v3\"")])
        .await
        .unwrap();
    assert_eq!(reload.status(), StatusCode::OK);
    assert_eq!(body(reload).await, "body 4");
    let after = get(&[]).await.unwrap();
    assert_eq!(after.headers()["x-cache"], "HIT");
    assert_eq!(body(after).await, "body 4");
}
