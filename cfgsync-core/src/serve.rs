//! Binding and serving the router: listener set-up, graceful shutdown on
//! SIGTERM / ctrl-c.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::connection::{REFUSAL_SLOTS, default_max_connections, refuse, serve_connection};
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
/// Connection limits come from the state's [`ServerLimits`](crate::ServerLimits).
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
/// routes — until `shutdown` completes.
///
/// Hostile peers are bounded by the state's [`ServerLimits`](crate::ServerLimits):
/// a connection that sends no request for `idle_timeout_secs`, or does not
/// complete a request head within `header_read_timeout_secs` of its first
/// byte, is closed; beyond `max_connections` a new connection gets `503` and
/// is closed. On `shutdown` the listener closes, held long-polls answer what
/// they have, connections with no request in flight close at once, the rest
/// finish their request; after `shutdown_timeout_secs` whatever is left is
/// dropped. A listener beyond loopback with auth off is flagged (see
/// [`CfgsyncServerState::note_listener`]).
pub async fn serve_app_on(
    listener: TcpListener,
    app: axum::Router,
    state: CfgsyncServerState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Serve { source })?;
    let limits = state.limits().clone();
    let max_connections = limits
        .max_connections
        .unwrap_or_else(default_max_connections)
        .clamp(1, Semaphore::MAX_PERMITS);
    tracing::info!(%addr, max_connections, "cfgsync server listening");
    state.note_listener(addr);

    let slots = Arc::new(Semaphore::new(max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let closing = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        connections.spawn(serve_connection(
                            stream,
                            app.clone(),
                            state.clone(),
                            closing.clone(),
                            slot,
                        ));
                    }
                    Err(_) => refuse(stream, &refusals, &state, max_connections),
                },
                Err(error) => {
                    // Out of file descriptors, or an aborted handshake: the
                    // listener stays usable, so pause briefly and go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "shutting down: finishing in-flight requests"
    );
    state.begin_shutdown();
    closing.cancel();
    let drained = tokio::time::timeout(limits.shutdown_timeout(), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            deadline = ?limits.shutdown_timeout(),
            "shutdown deadline passed: dropping the connections still open"
        );
        connections.shutdown().await;
    }
    Ok(())
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

/// Pause after a failed accept (e.g. out of file descriptors) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
