//! Serving an axum app the way a deployed service must: what `axum::serve` leaves out.
//!
//! - **Header read timeout** (`HEADER_READ_TIMEOUT_SECS`, 10 s): a client that has not sent its
//!   whole request head by then is disconnected (a slow-loris client trickling one header line at
//!   a time holds nothing for long). The request and body timeouts are the apps' own layers.
//! - **Connection cap** (`MAX_CONNECTIONS`, 1,024): at the cap the server stops accepting until a
//!   connection closes; new clients wait in the kernel's backlog instead of the accept loop
//!   spinning on `EMFILE`. Accept errors (out of file descriptors, say) pause accepting for 100 ms
//!   instead of spinning.
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
use std::sync::Arc;
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

use crate::setup::ServerLimits;

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then drains for at
/// most the grace period.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
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
        .max_concurrent_streams(256);
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
        let _ = stream.set_nodelay(true);
        let app = router.clone();
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { Ok::<_, Infallible>(app.call(req).await.unwrap_or_else(|e| match e {})) }
        });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
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
