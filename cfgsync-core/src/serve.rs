use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;

use crate::router::build_cfgsync_router;
use crate::server::CfgsyncServerState;
use crate::{Error, Result};

/// Binds `addr` and serves the cfgsync routes until SIGTERM or ctrl-c, then
/// finishes in-flight requests (held long-polls answer at once) and returns.
pub async fn serve_cfgsync(addr: SocketAddr, state: CfgsyncServerState) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
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
