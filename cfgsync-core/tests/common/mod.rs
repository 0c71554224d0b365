#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cfgsync_core::{
    ArtifactFile, ArtifactSet, CfgsyncServerState, ConfigSource, StaticConfigSource,
    serve_cfgsync_on,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A real cfgsync server on 127.0.0.1:0.
pub struct TestServer {
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<cfgsync_core::Result<()>>,
}

impl TestServer {
    pub async fn start(state: CfgsyncServerState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_cfgsync_on(listener, state, async {
            let _ = stopped.await;
        }));
        Self {
            url,
            stop: Some(stop),
            task,
        }
    }

    pub async fn with_source(source: Arc<dyn ConfigSource>) -> Self {
        Self::start(CfgsyncServerState::new(source)).await
    }

    /// Begins graceful shutdown and waits for the server to return.
    pub async fn shutdown(mut self) -> cfgsync_core::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

pub fn files(entries: &[(&str, &str)]) -> ArtifactSet {
    ArtifactSet::from_files(entries.iter().map(|(p, c)| ArtifactFile::new(*p, *c))).unwrap()
}

/// node-1 and node-2 with their own config, plus a shared file that node-2 overrides.
pub fn two_node_static_source() -> StaticConfigSource {
    StaticConfigSource::new(files(&[
        ("/peers.txt", "shared peers\n"),
        ("/shared.yaml", "shared\n"),
    ]))
    .unwrap()
    .with_node("node-1", files(&[("/config.yaml", "id: node-1\n")]))
    .unwrap()
    .with_node(
        "node-2",
        files(&[
            ("/config.yaml", "id: node-2\n"),
            ("/shared.yaml", "node-2 wins\n"),
        ]),
    )
    .unwrap()
}

/// A raw POST with a JSON body, as a node would send it.
pub async fn post_json(url: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The error body's code, asserting the answer is our JSON error.
pub async fn error_code(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    assert_eq!(
        content_type, "application/json",
        "status {status}, body {text:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        status,
        body["code"].as_str().unwrap().to_owned(),
        body["message"].as_str().unwrap().to_owned(),
    )
}
