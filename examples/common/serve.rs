//! Serving an axum app the way a deployed service must: what `axum::serve` leaves out.
//!
//! - **Header read timeout** (`HEADER_READ_TIMEOUT_SECS`, 10 s): a connection whose first
//!   request has not arrived (its whole head) that long after it was accepted is closed, whatever
//!   it sent meanwhile (nothing at all, a few bytes of the HTTP/2 preface, one header line at a
//!   time). On HTTP/1, hyper's own header timeout also runs from the moment a keep-alive
//!   connection waits for its next request: an idle HTTP/1 connection is closed after this long.
//!   The request and body timeouts are the apps' own layers.
//! - **Idle timeout** (`IDLE_TIMEOUT_SECS`, 60 s): an HTTP/2 connection with no request in
//!   flight and no response still being sent for that long is closed (its pings do not count as
//!   use; HTTP/1's idle connections go at the header read timeout, above).
//! - **Connection cap** (`MAX_CONNECTIONS`, 1,024): at the cap the server stops accepting until a
//!   connection closes; new clients wait in the kernel's backlog instead of the accept loop
//!   spinning on `EMFILE`. Accept errors (out of file descriptors, say) pause accepting for 100 ms
//!   instead of spinning.
//! - **Connections per client** (`MAX_CONNECTIONS_PER_IP`, 256): a client address (an IPv6
//!   one by its /64) holding that many open connections has its next one closed at once, so one
//!   client cannot take every place under the cap. Behind a reverse proxy, raise it to
//!   `MAX_CONNECTIONS`.
//! - **HTTP/2 streams** (`MAX_STREAMS_PER_CONNECTION`, 32): requests in flight on one HTTP/2
//!   connection.
//! - **Request bodies being read** (`MAX_BUFFERED_BODY_BYTES`, 64 MiB): the bytes of request
//!   bodies read so far and not yet released (a body's count is released when it is dropped, once
//!   its handler has read it whole: what the app keeps after that is the app's), across the
//!   server, and an eighth of that per client address. Past either, a body's next bytes fail its
//!   read with `BodyBudgetExceeded` (the apps answer `503` with `Retry-After`): clients sending
//!   bodies slowly on many connections cannot make the server buffer connections x streams x
//!   `MAX_BODY_BYTES`, and one client cannot hold the budget every other client needs.
//! - **Bounded shutdown** (`SHUTDOWN_GRACE_SECS`, 10 s): on Ctrl-C or SIGTERM the server stops
//!   accepting, lets requests in flight finish and closes idle keep-alive connections; whatever
//!   is still open when the grace period ends is dropped, whatever clients do.
//!
//! Each peer's address reaches handlers and layers as axum's `ConnectInfo<SocketAddr>`, as with
//! `into_make_service_with_connect_info`.
//!
//! Included by path (`#[path = "../common/serve.rs"] mod serve;`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::Service;

use crate::setup::{BodyBudgetExceeded, CLIENT_SHARES, ServerLimits};

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then drains for at
/// most the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp::new(
        limits.max_connections_per_ip,
        (limits.max_buffered_body_bytes / CLIENT_SHARES).max(1),
    ));
    let budget = Arc::new(Semaphore::new(limits.max_buffered_body_bytes));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // A peer that stops answering pings is dropped.
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .keep_alive_timeout(limits.header_read_timeout)
        .max_concurrent_streams(limits.max_streams_per_connection);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // At the cap, stop accepting: clients wait in the backlog until a connection closes.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed; pausing accepts for 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(client) = PerIp::enter(&per_ip, peer.ip()) else {
            tracing::debug!(%peer, "connection closed: too many from this client");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = router.clone();
        let budget = Arc::clone(&budget);
        let client_budget = Arc::clone(&client.budget);
        let activity = Arc::new(Activity::new());
        let in_service = Arc::clone(&activity);
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req
                .map(|body| Budgeted::new(body, Arc::clone(&budget), Arc::clone(&client_budget)));
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            // In use from here until the response's body has been sent (or dropped).
            let busy = Busy::start(Arc::clone(&in_service));
            async move {
                let res = app.call(req).await.unwrap_or_else(|e| match e {});
                if res.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    // The connection is the protocol's now (a WebSocket, say): not ours to close.
                    busy.0.upgraded.store(true, Ordering::Release);
                }
                Ok::<_, Infallible>(res.map(|body| Tracked { body, _busy: busy }))
            }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let (first, idle) = (limits.header_read_timeout, limits.idle_timeout);
        connections.spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                },
                () = activity.idle(first, idle) => {
                    tracing::debug!(%peer, "connection closed: no request in time");
                }
            }
            drop(client);
            drop(permit);
        });
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    tracing::info!(
        open = connections.len(),
        grace = ?limits.shutdown_grace,
        "draining connections"
    );
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "grace period over; dropping the connections still open"
        );
    }
    connections.shutdown().await;
}

/// What a connection is doing: requests in flight (until their responses are sent) and when it
/// was last in use, for the idle timeout.
struct Activity {
    opened: tokio::time::Instant,
    in_flight: AtomicUsize,
    /// Switched to another protocol (a `101` was answered): never idle as far as HTTP knows.
    upgraded: AtomicBool,
    /// Milliseconds from `opened` to when a request last started or ended; `u64::MAX` until the
    /// first one.
    last_use_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            upgraded: AtomicBool::new(false),
            last_use_ms: AtomicU64::new(u64::MAX),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_use_ms.store(ms, Ordering::Release);
    }

    /// Resolves once the connection is idle: no request within `first` of its opening, or none
    /// in flight for `idle` since the last one ended.
    async fn idle(&self, first: Duration, idle: Duration) {
        loop {
            if self.upgraded.load(Ordering::Acquire) {
                return std::future::pending().await;
            }
            // Requests in flight first, then the last use: a request that ends touches the time
            // before it stops counting, so a count of none is read with its end's time.
            if self.in_flight.load(Ordering::Acquire) > 0 {
                tokio::time::sleep(idle.min(first)).await;
                continue;
            }
            let deadline = match self.last_use_ms.load(Ordering::Acquire) {
                u64::MAX => self.opened + first,
                ms => self.opened + Duration::from_millis(ms) + idle,
            };
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            // Not idle long enough yet: look again then (a request that starts or ends meanwhile
            // moves the deadline, which is read again).
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A request in flight: counted from its head's arrival until its response is sent.
struct Busy(Arc<Activity>);

impl Busy {
    fn start(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        activity.touch();
        Self(activity)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Open connections per client address (an IPv6 one by its /64), each at most `max`, and each
/// client's share of the body budget. The map holds only addresses with a connection open: at most
/// `MAX_CONNECTIONS` entries.
struct PerIp {
    max: usize,
    share: usize,
    open: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (usize, Arc<Semaphore>)>>,
}

/// A connection counted against its client's share until it is dropped.
struct Counted {
    per_ip: Arc<PerIp>,
    client: std::net::IpAddr,
    /// The client's share of the body budget (one for all its connections).
    budget: Arc<Semaphore>,
}

impl PerIp {
    fn new(max: usize, share: usize) -> Self {
        Self {
            max,
            share,
            open: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The client an address counts as: IPv4 (an IPv4-mapped IPv6 address too), or an IPv6 /64.
    fn client(ip: std::net::IpAddr) -> std::net::IpAddr {
        match ip.to_canonical() {
            std::net::IpAddr::V6(v6) => {
                std::net::IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into())
            }
            v4 => v4,
        }
    }

    /// Counts one more connection from `ip`, or `None` if its client holds `max` already.
    fn enter(this: &Arc<Self>, ip: std::net::IpAddr) -> Option<Counted> {
        let client = Self::client(ip);
        let mut open = this.open.lock().unwrap_or_else(|e| e.into_inner());
        let (n, budget) = open
            .entry(client)
            .or_insert_with(|| (0, Arc::new(Semaphore::new(this.share))));
        if *n >= this.max {
            return None;
        }
        *n += 1;
        Some(Counted {
            per_ip: Arc::clone(this),
            client,
            budget: Arc::clone(budget),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock().unwrap_or_else(|e| e.into_inner());
        if let std::collections::hash_map::Entry::Occupied(mut e) = open.entry(self.client) {
            e.get_mut().0 -= 1;
            if e.get().0 == 0 {
                e.remove();
            }
        }
    }
}

/// A request body whose bytes count against the server's budget and its client's share of it
/// from when they are read until the body is dropped.
struct Budgeted {
    body: Incoming,
    budget: Arc<Semaphore>,
    client_budget: Arc<Semaphore>,
    held: Option<(
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    )>,
}

impl Budgeted {
    fn new(body: Incoming, budget: Arc<Semaphore>, client_budget: Arc<Semaphore>) -> Self {
        Self {
            body,
            budget,
            client_budget,
            held: None,
        }
    }
}

impl hyper::body::Body for Budgeted {
    type Data = hyper::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        if let Some(data) = frame.data_ref()
            && !data.is_empty()
        {
            let taken = u32::try_from(data.len()).ok().and_then(|n| {
                let client = Arc::clone(&self.client_budget)
                    .try_acquire_many_owned(n)
                    .ok()?;
                let all = Arc::clone(&self.budget).try_acquire_many_owned(n).ok()?;
                Some((client, all))
            });
            let Some((client, all)) = taken else {
                return Poll::Ready(Some(Err(Box::new(BodyBudgetExceeded))));
            };
            match &mut self.held {
                Some((held_client, held_all)) => {
                    held_client.merge(client);
                    held_all.merge(all);
                }
                none => *none = Some((client, all)),
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
