use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

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
    axum::serve(listener, app)
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
