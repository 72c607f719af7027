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
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
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

use super::proxy::TrustedProxies;
use crate::error::ApiError;

#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
    /// From a request's headers to its reply, body included.
    pub request: Duration,
}

/// How many HTTP connections may be open at once, in all and per peer address.
pub struct Limits {
    pub max_connections: usize,
    /// 0: none.
    pub max_per_address: usize,
    /// Peers exempt from `max_per_address` (the trusted proxies, which carry many clients).
    pub exempt: TrustedProxies,
}

/// Open connections, counted while a [`Slot`] lives.
struct Admission {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

struct Slot {
    admission: Arc<Admission>,
    addr: Option<IpAddr>,
}

impl Admission {
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.0 >= self.limits.max_connections {
            return None;
        }
        let counted = self.limits.max_per_address > 0 && !self.limits.exempt.trusts(peer);
        if counted {
            let n = open.1.entry(peer.to_canonical()).or_default();
            if *n >= self.limits.max_per_address {
                return None;
            }
            *n += 1;
        }
        open.0 += 1;
        Some(Slot {
            admission: self.clone(),
            addr: counted.then(|| peer.to_canonical()),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .admission
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.0 -= 1;
        if let Some(addr) = self.addr {
            super::count_down(&mut open.1, addr, 1);
        }
    }
}

/// Serves `ep` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then lets
/// open requests finish for at most `grace` and drops what is left.
pub async fn serve<E>(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    ep: E,
    timeouts: Timeouts,
    limits: Limits,
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
    let admission = Arc::new(Admission {
        limits,
        open: Mutex::default(),
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Over a limit the connection is closed at once (dropped): cheap for us,
                    // and the client sees a reset it can retry.
                    let Some(slot) = admission.admit(peer.ip()) else {
                        tracing::debug!(%peer, "refusing a connection over http.max_connections*");
                        continue;
                    };
                    let connection = accept_connection(
                        stream,
                        tls.clone(),
                        peer,
                        ep.clone(),
                        local.clone(),
                        timeouts,
                        stop_rx.clone(),
                    );
                    // The slot is held until the connection ends (or leaves for a WebSocket).
                    connections.spawn(async move {
                        let _slot = slot;
                        connection.await
                    });
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
        let activity_for_requests = activity.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let (ep, local, remote, scheme) =
                (ep.clone(), local.clone(), remote.clone(), scheme.clone());
            let activity = activity_for_requests.clone();
            async move {
                let req = Request::from((req, local, remote, scheme));
                // While a request is in flight its deadline applies, not the idle timeout.
                let _busy = activity.begin_request();
                let resp = match tokio::time::timeout(timeouts.request, ep.get_response(req)).await
                {
                    Ok(resp) => resp.into_response(),
                    Err(_) => {
                        tracing::info!(%peer, "request timed out");
                        ApiError::RequestTimeout(format!(
                            "the request took longer than {} s (http.request_timeout_secs)",
                            timeouts.request.as_secs()
                        ))
                        .into_response()
                    }
                };
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
                    if activity.last() + timeouts.idle > Instant::now() || activity.busy() {
                        activity.touch();
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

/// When bytes last moved on a connection, as milliseconds since it was accepted, and how many
/// requests are in flight on it.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicU64,
}

/// Counts a request in flight while it lives.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
        }
    }

    fn begin_request(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        Busy(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
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
