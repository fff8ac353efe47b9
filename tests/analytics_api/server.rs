//! The examples' hardened server (`examples/common/serve.rs`, #17), over real loopback TCP: a
//! client trickling its headers is cut off at the header read timeout, so is one that sends
//! nothing or part of the HTTP/2 preface, an idle connection is closed at the idle timeout (but
//! not one whose request is still being answered), the connection cap holds
//! new clients back (and lets them in when a connection closes), so does the cap per client
//! (closing its extra connections), request bodies held at once are bounded across the server
//! (the analytics app answers `503` past it, and takes bodies again once they are released), and
//! shutdown ends within its grace period whatever clients do. Every wait is bounded.

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::serve::serve;
use crate::setup::ServerLimits;

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: ServerLimits) -> Server {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                "late"
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, app, limits, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        stop: Some(stop),
        task,
    }
}

fn limits() -> ServerLimits {
    ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
        max_connections: 64,
        max_connections_per_ip: 64,
        max_streams_per_connection: 32,
        max_buffered_body_bytes: 1 << 20,
        shutdown_grace: Duration::from_secs(1),
    }
}

/// Sends `GET path` on `stream` and reads the answer's first line (within `limit`).
async fn get_on(stream: &mut TcpStream, path: &str, limit: Duration) -> Option<String> {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = [0u8; 512];
    let n = tokio::time::timeout(limit, stream.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_owned)
}

/// Whether the server closed `stream` within `limit` (a read answers end of stream or an error).
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        match tokio::time::timeout(deadline - Instant::now(), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_its_headers_is_cut_off_at_the_header_read_timeout() {
    let server = start(limits()).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    let started = Instant::now();
    // One header line every 300 ms, for at most 20 lines (6 s): never a whole head.
    let mut cut_off = None;
    for i in 0..20 {
        if slow
            .write_all(format!("x-trickle-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            cut_off = Some(started.elapsed());
            break;
        }
        if closed_within(&mut slow, Duration::from_millis(300)).await {
            cut_off = Some(started.elapsed());
            break;
        }
    }
    let cut_off = cut_off.expect("the trickling client was never cut off");
    assert!(
        cut_off < Duration::from_secs(3),
        "cut off after {cut_off:?}, with a 1 s header read timeout"
    );
    // Others are served meanwhile and after.
    let mut ok = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_on(&mut ok, "/health", Duration::from_secs(2))
            .await
            .as_deref(),
        Some("HTTP/1.1 200 OK")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_or_part_of_the_http2_preface_is_closed() {
    let server = start(limits()).await;
    // Nothing at all; a few bytes of the preface (hyper waits for 24 to tell HTTP/2 from
    // HTTP/1, with no timer of its own); the whole preface, then nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut partial = TcpStream::connect(server.addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0").await.unwrap();
    let mut preface = TcpStream::connect(server.addr).await.unwrap();
    preface
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    for (what, stream) in [
        ("silent", &mut silent),
        ("partial preface", &mut partial),
        ("preface only", &mut preface),
    ] {
        assert!(
            closed_within(stream, Duration::from_secs(4)).await,
            "the {what} connection is still open after {:?}, with a 1 s header read timeout",
            started.elapsed()
        );
    }
}

/// An HTTP/2 connection (prior knowledge) to `addr`: the request sender, and the connection's
/// driver, which ends when the server closes the connection.
async fn h2(
    addr: std::net::SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    (send, tokio::spawn(async move { drop(conn.await) }))
}

fn h2_get(path: &str) -> hyper::Request<http_body_util::Empty<bytes::Bytes>> {
    hyper::Request::get(format!("http://x{path}"))
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_but_not_one_whose_answer_is_on_its_way() {
    let server = start(limits()).await;
    // HTTP/2, whose pings keep a connection alive at the transport (HTTP/1's keep-alive
    // connections are closed by hyper's own header read timeout).
    let (mut idle, idle_conn) = h2(server.addr).await;
    let res = idle.send_request(h2_get("/health")).await.unwrap();
    assert_eq!(res.status(), 200);
    drop(res);
    let (mut busy, busy_conn) = h2(server.addr).await;
    let slow = tokio::spawn(async move { busy.send_request(h2_get("/slow")).await });
    // The idle one goes after about a second with nothing in flight.
    tokio::time::timeout(Duration::from_secs(4), idle_conn)
        .await
        .expect("an idle HTTP/2 connection outlived its 1 s idle timeout")
        .unwrap();
    // The busy one is waiting for its answer (a minute away): still open, well past that.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert!(
        !busy_conn.is_finished() && !slow.is_finished(),
        "a connection with a request in flight was closed as idle"
    );
    slow.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_cap_new_clients_wait_until_a_connection_closes() {
    let server = start(ServerLimits {
        max_connections: 2,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..limits()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_on(&mut first, "/health", Duration::from_secs(2))
            .await
            .as_deref(),
        Some("HTTP/1.1 200 OK"),
        "within the cap"
    );
    // The third connects (the kernel's backlog takes it) but is not served while two are open.
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        get_on(&mut third, "/health", Duration::from_millis(500)).await,
        None,
        "served past the cap"
    );
    drop(second);
    let mut line = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut line))
        .await
        .expect("served once a connection closed")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&line[..n]).starts_with("HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&line[..n])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_within_its_grace_period_whatever_clients_do() {
    let mut server = start(limits()).await;
    // A request that would take a minute, and an idle keep-alive connection.
    let mut busy = TcpStream::connect(server.addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        get_on(&mut idle, "/health", Duration::from_secs(2))
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let asked = Instant::now();
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), &mut server.task)
        .await
        .expect("the server stopped")
        .expect("no panic");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} with a 1 s grace period"
    );
    assert!(closed_within(&mut busy, Duration::from_secs(1)).await);
    assert!(
        TcpStream::connect(server.addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_its_share_of_connections_has_its_next_one_closed() {
    let server = start(ServerLimits {
        max_connections_per_ip: 2,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..limits()
    })
    .await;
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    for conn in [&mut first, &mut second] {
        assert_eq!(
            get_on(conn, "/health", Duration::from_secs(2))
                .await
                .as_deref(),
            Some("HTTP/1.1 200 OK"),
            "within the client's share"
        );
    }
    // A third from the same address is closed at once (unlike the global cap, which holds it).
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut third, Duration::from_secs(2)).await,
        "a third connection from one client was kept"
    );
    // The first two still serve; once one closes, the client may open another.
    assert_eq!(
        get_on(&mut first, "/health", Duration::from_secs(2))
            .await
            .as_deref(),
        Some("HTTP/1.1 200 OK")
    );
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = TcpStream::connect(server.addr).await.unwrap();
        if get_on(&mut again, "/health", Duration::from_millis(500))
            .await
            .as_deref()
            == Some("HTTP/1.1 200 OK")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no new connection served after one of the client's closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection to `addr` from the loopback address `from` (127.0.0.0/8 is all loopback): another
/// client, as the server counts clients.
async fn connect_from(from: [u8; 4], addr: std::net::SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((from, 0))).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Sends a metric POST with `body` from `from` on a new connection and reads the answer.
async fn post_metric(from: [u8; 4], addr: std::net::SocketAddr, body: &str) -> String {
    let mut conn = connect_from(from, addr).await;
    let head = format!(
        "POST /api/metrics HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    if conn.write_all(head.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut buf = vec![0u8; 4096];
    match tokio::time::timeout(Duration::from_secs(2), conn.read(&mut buf)).await {
        Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).to_string(),
        _ => String::new(),
    }
}

/// Starts a POST from `from` with a 60,000-byte body and sends only `sent` bytes of it.
async fn partial_body(from: [u8; 4], addr: std::net::SocketAddr, sent: usize) -> TcpStream {
    let mut conn = connect_from(from, addr).await;
    conn.write_all(
        b"POST /api/metrics HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 60000\r\n\r\n",
    )
    .await
    .unwrap();
    conn.write_all(&vec![b' '; sent]).await.unwrap();
    conn
}

/// Posts a small metric from `from` until the answer starts with `want` (within 5 s); every other
/// answer must be a 201 (stored) or a 503 (refused, nothing stored).
async fn until_answered(from: [u8; 4], addr: std::net::SocketAddr, want: &str) -> String {
    let metric = crate::metric(42.0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = post_metric(from, addr, &metric).await;
        if answer.starts_with(want) {
            return answer;
        }
        assert!(
            answer.starts_with("HTTP/1.1 201") || answer.starts_with("HTTP/1.1 503"),
            "neither stored nor refused: {answer}"
        );
        assert!(Instant::now() < deadline, "never {want}: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Holds part of a body on each of `holders` (`(client, bytes sent)`), then posts a small metric
/// from `from` until the answer is a 503 (within 5 s), and returns it with the held connections.
///
/// The budget refuses whichever body's bytes come second, and the test means the small one to be:
/// on a loaded host the small body could be read first, the held one then refused (a 503 on its
/// own connection: the budget at work, the other way round). Then every connection is dropped and
/// it starts again, at most 10 times; any other answer on a held connection fails the test.
async fn refused_past_held(
    holders: &[([u8; 4], usize)],
    from: [u8; 4],
    addr: std::net::SocketAddr,
) -> (Vec<TcpStream>, String) {
    let metric = crate::metric(42.0);
    for _ in 0..10 {
        let mut held = Vec::new();
        for &(client, sent) in holders {
            held.push(partial_body(client, addr, sent).await);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        'probe: loop {
            let answer = post_metric(from, addr, &metric).await;
            if answer.starts_with("HTTP/1.1 503") {
                return (held, answer);
            }
            assert!(
                answer.starts_with("HTTP/1.1 201"),
                "neither stored nor refused: {answer}"
            );
            for conn in &mut held {
                let mut buf = [0u8; 512];
                if let Ok(read) =
                    tokio::time::timeout(Duration::from_millis(5), conn.read(&mut buf)).await
                {
                    let answer = String::from_utf8_lossy(&buf[..read.unwrap_or(0)]).to_string();
                    assert!(
                        answer.starts_with("HTTP/1.1 503"),
                        "a held body answered other than refused: {answer:?}"
                    );
                    eprintln!("a held body was refused before the small one; starting again");
                    break 'probe;
                }
            }
            assert!(Instant::now() < deadline, "never refused: {answer}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    panic!("the held bodies were refused before the small one 10 times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_at_once_are_bounded_and_the_app_answers_503_past_it() {
    // A quota no loop below reaches.
    let vars: &[(&str, &str)] = &[("RATE_LIMIT_REQUESTS", "10000")];
    let time = crate::ManualTime::new();
    let (router, _state) = crate::app::build(
        &crate::config(vars),
        &crate::tiers(vars),
        std::sync::Arc::new(crate::storage::Storage::default()),
        time.clock(),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // 100,000 bytes in all, 12,500 per client.
    let limits = ServerLimits {
        max_buffered_body_bytes: 100_000,
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..limits()
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, router, limits, async {
        let _ = stopped.await;
    }));
    // One client holding 12,450 bytes of a body: its own next body (67 bytes) does not fit its share (503,
    // with a Retry-After, nothing stored); another client's does.
    let (slow, refused) =
        refused_past_held(&[([127, 0, 0, 2], 12_450)], [127, 0, 0, 2], addr).await;
    let lower = refused.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{refused}");
    assert!(lower.contains("too many request bodies"), "{refused}");
    until_answered([127, 0, 0, 3], addr, "HTTP/1.1 201").await;
    drop(slow);
    until_answered([127, 0, 0, 2], addr, "HTTP/1.1 201").await;
    // Eight clients holding 12,495 bytes each: 99,960 of the 100,000. A ninth client's small
    // body (67 bytes) fits its share but not what is left: 503; once they go, bodies are taken
    // again.
    let holders: Vec<_> = (10..18)
        .map(|client| ([127, 0, 0, client], 12_495))
        .collect();
    let (held, _) = refused_past_held(&holders, [127, 0, 0, 20], addr).await;
    drop(held);
    until_answered([127, 0, 0, 20], addr, "HTTP/1.1 201").await;
    task.abort();
}
