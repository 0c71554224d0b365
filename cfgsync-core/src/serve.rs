//! Binding and serving the router: listener set-up, graceful shutdown on
//! SIGTERM / ctrl-c.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::router::build_cfgsync_router;
use crate::server::CfgsyncServerState;
use crate::{Error, Result};

/// Pending connections the kernel may queue for us (it caps this at
/// `net.core.somaxconn`): a fleet booting at once connects in the same instant,
/// and tokio's default of 1024 makes the kernel fall back to SYN cookies.
pub const LISTEN_BACKLOG: u32 = 8192;

/// Binds `addr` for serving, with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a
/// restarted server can bind while old connections linger in TIME_WAIT).
pub fn bind_listener(addr: SocketAddr) -> Result<TcpListener> {
    let bind = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    bind().map_err(|source| Error::Bind { addr, source })
}

/// Binds `addr` and serves the cfgsync routes until SIGTERM or ctrl-c, then
/// finishes in-flight requests (held long-polls answer at once) and returns.
pub async fn serve_cfgsync(addr: SocketAddr, state: CfgsyncServerState) -> Result<()> {
    let listener = bind_listener(addr)?;
    serve_cfgsync_on(listener, state, shutdown_signal()).await
}

/// Serves on an already bound listener until `shutdown` completes — for tests and
/// for apps that own their listener and signal handling.
pub async fn serve_cfgsync_on(
    listener: TcpListener,
    state: CfgsyncServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let router = build_cfgsync_router(state.clone());
    serve_app_on(listener, router, state, shutdown).await
}

/// Serves `app` — the cfgsync router of `state` merged with an app's own
/// routes — until `shutdown` completes, then finishes in-flight requests,
/// releasing the long-polls held by `state`.
pub async fn serve_app_on(
    listener: TcpListener,
    app: axum::Router,
    state: CfgsyncServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "cfgsync server listening");
    }
    axum::serve(LingeringListener(listener), app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            state.begin_shutdown();
        })
        .await
        .map_err(|source| Error::Serve { source })
}

/// Completes on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// How long a closed connection may keep draining a request body the server
/// refused, so the client sees the answer rather than a reset.
const LINGER_TIME: Duration = Duration::from_secs(2);
/// How much of a refused body a closed connection reads and discards at most.
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Accepts like tokio's listener (axum retries accept errors), handing out
/// [`LingeringStream`]s.
struct LingeringListener(TcpListener);

impl axum::serve::Listener for LingeringListener {
    type Io = LingeringStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (LingeringStream(Some(stream)), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection that closes the way RFC 9112 §9.6 asks ("lingering close").
///
/// When the server answers without reading the whole body (405, 413, 404 on a
/// route that takes none), the HTTP layer closes the connection. Closing a
/// socket with unread bytes makes the kernel send a reset, and a client that is
/// still writing its body gets a broken pipe instead of the answer. So on drop,
/// unless the peer has already closed, the socket is handed to a task that
/// sends FIN and reads and discards until the peer closes, for at most
/// [`LINGER_TIME`] and [`LINGER_BYTES`]. Connections the peer closed (the
/// usual end of keep-alive) close at once.
struct LingeringStream(Option<TcpStream>);

impl LingeringStream {
    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        self.0
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }
}

fn ready_err<T>(error: io::Error) -> Poll<io::Result<T>> {
    Poll::Ready(Err(error))
}

impl AsyncRead for LingeringStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(error) => ready_err(error),
        }
    }
}

impl AsyncWrite for LingeringStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(error) => ready_err(error),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(error) => ready_err(error),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(error) => ready_err(error),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(error) => ready_err(error),
        }
    }
}

impl Drop for LingeringStream {
    fn drop(&mut self) {
        let Some(stream) = self.0.take() else { return };
        let mut probe = [0u8; 1];
        match stream.try_read(&mut probe) {
            // The peer closed, or the connection failed: nothing to protect.
            Ok(0) => return,
            Err(e) if e.kind() != io::ErrorKind::WouldBlock => return,
            // Pending bytes, or none yet: the HTTP layer may just have drained
            // what had arrived while more is in flight, so the peer may still
            // be writing.
            _ => {}
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(linger(stream));
    }
}

async fn linger(mut stream: TcpStream) {
    // FIN after the answer already written, so the client reads it to the end.
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}
