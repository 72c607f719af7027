//! The connection loop: HTTP/1.1 served by hyper with the timeouts that poem's `Server` cannot
//! set (hyper's header-read deadline needs a timer poem does not give it), so a slow or silent
//! client cannot hold a connection open for good.
//!
//! - A request's line and headers must arrive within `header_read` of the server starting to
//!   wait for them (hyper's own deadline; trickling bytes does not extend it).
//! - A connection without traffic in either direction for `idle` is shut down gracefully, and
//!   dropped if it is still silent after another `idle` (a stalled body or reply).
//! - Upgraded WebSockets leave this loop and are watched by the event hub's pings.
//! - With TLS, the handshake must complete within `header_read` too; then HTTPS and WSS are
//!   served exactly like HTTP and WS.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::{
    Addr, Endpoint, IntoResponse, Request,
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinSet,
    time::Instant,
};
use tokio_rustls::TlsAcceptor;

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

/// Serves `ep` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then lets
/// open requests finish for at most `grace` and drops what is left.
pub async fn serve<E>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ep: E,
    timeouts: Timeouts,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> std::io::Result<()>
where
    E: Endpoint + 'static,
{
    let ep = Arc::new(ep);
    let local = LocalAddr(Addr::SocketAddr(listener.local_addr()?));
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(accept_connection(
                        stream,
                        tls.clone(),
                        peer,
                        ep.clone(),
                        local.clone(),
                        timeouts,
                        stop_rx.clone(),
                    ));
                }
                // Out of file descriptors, say: back off instead of spinning.
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            open = connections.len(),
            "closing connections that outlived the shutdown grace period"
        );
    }
    Ok(())
}

/// Completes the TLS handshake, if any, and serves the connection.
async fn accept_connection<E: Endpoint + 'static>(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    peer: SocketAddr,
    ep: Arc<E>,
    local: LocalAddr,
    timeouts: Timeouts,
    stop: watch::Receiver<()>,
) {
    let activity = Arc::new(Activity::new());
    let watched = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    let conn = Conn {
        peer,
        ep,
        local,
        timeouts,
        activity,
    };
    let Some(tls) = tls else {
        return conn.serve(watched, Scheme::HTTP, stop).await;
    };
    match tokio::time::timeout(timeouts.header_read, tls.accept(watched)).await {
        Ok(Ok(stream)) => conn.serve(stream, Scheme::HTTPS, stop).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// One accepted connection and what serving it needs.
struct Conn<E> {
    peer: SocketAddr,
    ep: Arc<E>,
    local: LocalAddr,
    timeouts: Timeouts,
    activity: Arc<Activity>,
}

impl<E: Endpoint + 'static> Conn<E> {
    /// Serves HTTP/1.1 on `stream` (plain or TLS, as `scheme` says) until it closes.
    async fn serve<S>(self, stream: S, scheme: Scheme, mut stop: watch::Receiver<()>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            peer,
            ep,
            local,
            timeouts,
            activity,
        } = self;
        let io = TokioIo::new(stream);
        let remote = RemoteAddr(Addr::SocketAddr(peer));
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let (ep, local, remote, scheme) =
                (ep.clone(), local.clone(), remote.clone(), scheme.clone());
            async move {
                let req = Request::from((req, local, remote, scheme));
                let resp = ep.get_response(req).await.into_response();
                Ok::<_, Infallible>(hyper::Response::from(resp))
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeouts.header_read)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(conn);
        let mut closing = false;
        loop {
            let idle_until = activity.last() + timeouts.idle;
            tokio::select! {
                _ = &mut conn => return,
                _ = tokio::time::sleep_until(idle_until) => {
                    if activity.last() + timeouts.idle > Instant::now() {
                        continue;
                    }
                    if closing {
                        tracing::debug!(%peer, "dropping a connection that stayed silent");
                        return;
                    }
                    // Closes an idle connection at once; one with a request in flight after it.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    activity.touch();
                }
                _ = stop.changed(), if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

/// When bytes last moved on a connection, as milliseconds since it was accepted.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A socket that records when bytes move through it.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
