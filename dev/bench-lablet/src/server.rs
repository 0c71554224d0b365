//! The local HTTP server playing the resolver, Mosaic (streaming the package from
//! disk), LDS and SE. It runs in the parent process, so its memory and CPU are not
//! counted as the sync's peak RSS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::io::ReaderStream;

/// Read size when streaming the package out.
const STREAM_CHUNK: usize = 256 * 1024;

#[derive(Debug)]
struct Shared {
    base: String,
    package: PathBuf,
}

/// A running server; aborted on drop.
#[derive(Debug)]
pub struct Server {
    pub base: String,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serve `package` at `/package.zip`, `/resolve/{name}` answering
/// `{"MOSAIC_BASE_URL": base}`, and `/sync` + `/sync_content` answering 200.
pub async fn start(package: PathBuf) -> anyhow::Result<Server> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind the HTTP server")?;
    let base = format!("http://{}", listener.local_addr()?);
    let shared = Arc::new(Shared {
        base: base.clone(),
        package,
    });
    let app = Router::new()
        .route("/resolve/{name}", get(resolve))
        .route("/package.zip", get(package_zip))
        .route("/sync", post(StatusCode::OK))
        .route("/sync_content", post(StatusCode::OK))
        .with_state(shared);
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            eprintln!("bench HTTP server stopped: {err}");
        }
    });
    Ok(Server { base, task })
}

async fn resolve(State(shared): State<Arc<Shared>>) -> Response {
    axum::Json(serde_json::json!({ "MOSAIC_BASE_URL": shared.base })).into_response()
}

async fn package_zip(State(shared): State<Arc<Shared>>) -> Response {
    let opened = async {
        let file = tokio::fs::File::open(&shared.package).await?;
        let len = file.metadata().await?.len();
        std::io::Result::Ok((file, len))
    }
    .await;
    match opened {
        Ok((file, len)) => (
            [
                (header::CONTENT_TYPE, "application/zip".to_owned()),
                (header::CONTENT_LENGTH, len.to_string()),
            ],
            Body::from_stream(ReaderStream::with_capacity(file, STREAM_CHUNK)),
        )
            .into_response(),
        Err(err) => (StatusCode::INTERNAL_SERVER_ERROR, err.to_string()).into_response(),
    }
}
