//! Herald's own HTTP/1 accept loop, used by [`Herald::serve`](crate::Herald::serve) in place of
//! `axum::serve`.
//!
//! `axum::serve` accepts every socket, never times out a request head, keeps idle keep-alive
//! connections forever and counts nothing before a WebSocket upgrade: 300 silent sockets, 200
//! slowloris heads and 100 trickled bodies were all still held after 45 s, outside
//! `max_connections`. This loop:
//!
//! - counts every accepted socket against the process cap (`PusherConfig::max_connections`) from
//!   accept until it closes, WebSocket sessions included (the count rides inside the socket, so it
//!   follows the socket through the upgrade); at the cap a new socket is closed at once and counted in
//!   `herald_sockets_refused_total`;
//! - gives every connection [`HttpConfig::header_timeout`] to deliver a complete request head,
//!   counted from accept and again from the end of each response: so a socket that sends nothing, one
//!   that trickles its head, and an idle keep-alive connection are all closed after it (counted in
//!   `herald_http_header_timeouts_total`); the WebSocket upgrade is a request like any other,
//!   so it must arrive within it too;
//! - sets `TCP_NODELAY` on every accepted socket (small frames are not held back by Nagle's
//!   algorithm waiting for a delayed ACK: 40 ms on the first event after a subscribe);
//! - on shutdown stops accepting, lets in-flight requests finish and closes idle connections; the
//!   connection tasks are on Herald's `TaskTracker`, so the drain waits for them within its grace.
//!
//! Request bodies of the HTTP API have their own deadline (`PusherConfig::body_timeout`), enforced by
//! the API itself.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error};

use crate::ip_limits::{IpLimits, IpSlot, IpTracker};
use crate::tls::{Stream, Tls};
use herald_pusher::ConnectRefusal;

/// Limits of Herald's HTTP server that are not part of the Pusher front.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// How long a connection may take to deliver a complete request head, counted from accept and
    /// from the end of each response. This is also the deadline for a new socket's first request
    /// (a WebSocket upgrade included) and the idle timeout of keep-alive connections.
    pub header_timeout: Duration,
    /// Per-IP limits on sockets (open at once, opened per minute); unlimited by default.
    pub ip: IpLimits,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { header_timeout: Duration::from_secs(10), ip: IpLimits::default() }
    }
}

/// Most bytes buffered per connection while reading a request head (hyper's default is ~400 KB; a
/// request head beyond this is refused).
const MAX_BUF: usize = 64 * 1024;

/// Accepts on `listener` until `shutdown` fires, serving each connection with `router` on a task of
/// `tasks`. `cap` holds one permit per open socket.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    http: HttpConfig,
    cap: Arc<Semaphore>,
    tls: Option<Arc<Tls>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(http.header_timeout).keep_alive(true).max_buf_size(MAX_BUF);
    let ips = IpTracker::new(http.ip);
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tokio::select! {
                        _ = accept_failed(e) => {}
                        _ = shutdown.cancelled() => return,
                    }
                    continue;
                }
            },
        };
        let Some(mut socket) = admit(stream, &cap) else { continue };
        let (slot, refusal) = ips.admit(peer.ip());
        socket._ip = slot;
        let service = service(router.clone(), refusal);
        match &tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(Stream::Plain(socket)), service).with_upgrades();
                tasks.spawn(serve_connection(conn, shutdown.clone()));
            }
            Some(tls) => {
                let (acceptor, builder, shutdown, deadline) = (tls.acceptor(), builder.clone(), shutdown.clone(), http.header_timeout);
                tasks.spawn(async move {
                    // The handshake has the header deadline too: a socket that never finishes it is closed.
                    let handshake = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        done = tokio::time::timeout(deadline, acceptor.accept(socket)) => done,
                    };
                    match handshake {
                        Ok(Ok(stream)) => {
                            let conn = builder.serve_connection(TokioIo::new(Stream::Tls(Box::new(stream))), service).with_upgrades();
                            serve_connection(conn, shutdown).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("herald_tls_handshake_failures_total", "reason" => "error").increment(1);
                            debug!(error = %e, "TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("herald_tls_handshake_failures_total", "reason" => "timeout").increment(1);
                            debug!("TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// The router as one connection's service: its requests carry the connection's per-IP refusal, if any.
fn service(router: Router, refusal: Option<ConnectRefusal>) -> Service {
    TowerToHyperService::new(MapRequest { router, refusal })
}

type Service = TowerToHyperService<MapRequest>;

/// Adds the connection's refusal to each request before routing it.
#[derive(Clone)]
pub(crate) struct MapRequest {
    router: Router,
    refusal: Option<ConnectRefusal>,
}

impl<B> tower_service::Service<axum::http::Request<B>> for MapRequest
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = <Router as tower_service::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <Router as tower_service::Service<axum::http::Request<B>>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        if let Some(refusal) = self.refusal {
            request.extensions_mut().insert(refusal);
        }
        self.router.call(request)
    }
}

/// Serves one connection until it closes or is upgraded; on shutdown, finishes what is in flight and
/// closes it.
async fn serve_connection(conn: http1::UpgradeableConnection<TokioIo<Stream>, Service>, shutdown: CancellationToken) {
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            metrics::counter!("herald_http_header_timeouts_total").increment(1);
        }
        debug!(error = %e, "http connection ended");
    }
}

/// Counts `stream` against the socket cap and prepares it; `None` (the socket is closed) at the cap.
pub(crate) fn admit(stream: TcpStream, cap: &Arc<Semaphore>) -> Option<Counted> {
    let Ok(permit) = cap.clone().try_acquire_owned() else {
        metrics::counter!("herald_sockets_refused_total").increment(1);
        return None;
    };
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    metrics::gauge!("herald_sockets_open").increment(1.0);
    Some(Counted { stream, _permit: permit, _ip: None })
}

/// Errors of `accept` that concern one connection only; anything else (e.g. out of file descriptors)
/// is logged and retried after a pause.
async fn accept_failed(e: io::Error) {
    if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset) {
        return;
    }
    error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// An accepted socket holding its place under the socket cap until it is dropped, which for a
/// WebSocket is when its session ends (hyper moves the socket into the upgraded connection).
pub(crate) struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    /// Its place in its address's count (when per-IP limits are on).
    _ip: Option<IpSlot>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("herald_sockets_open").decrement(1.0);
    }
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn accepted_sockets_get_tcp_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_client, server) = pair(&listener).await;
        assert!(!server.nodelay().unwrap(), "the kernel default is Nagle on");
        let counted = admit(server, &Arc::new(Semaphore::new(1))).expect("under the cap");
        assert!(counted.stream.nodelay().unwrap());
    }

    #[tokio::test]
    async fn sockets_hold_a_cap_permit_until_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cap = Arc::new(Semaphore::new(1));
        let (_c1, s1) = pair(&listener).await;
        let (_c2, s2) = pair(&listener).await;
        let first = admit(s1, &cap).expect("under the cap");
        assert!(admit(s2, &cap).is_none(), "at the cap the socket is refused");
        drop(first);
        let (_c3, s3) = pair(&listener).await;
        assert!(admit(s3, &cap).is_some(), "a closed socket frees its place");
    }
}
