//! A real cfgsync server on `127.0.0.1:0` for tests, with the readings tests
//! make of it through its own `/metrics`, and long-polls to wait on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cfgsync_core::{
    ArtifactFile, ArtifactSet, CfgsyncClient, CfgsyncServerState, ConfigSource, FetchOptions,
    FetchOutcome, NodeArtifactsPayload, NodeRegistration, serve_cfgsync_on,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A free loopback port for a server process a test starts (bound, read,
/// released: the process binds it again).
///
/// # Panics
/// When no loopback port can be bound.
pub fn free_port() -> u16 {
    #[allow(clippy::expect_used)] // a test helper: no port is a broken host
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// A cfgsync server (cfgsync-core's router, served as in production by
/// [`serve_cfgsync_on`]) on an ephemeral loopback port. Dropping it begins a
/// graceful shutdown, so keep it alive while the test uses the URL;
/// [`shutdown`](Self::shutdown) also waits for the server to return.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<cfgsync_core::Result<()>>,
}

impl TestServer {
    /// Serves `state`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    #[allow(clippy::expect_used)]
    pub async fn start(state: CfgsyncServerState) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let url = format!(
            "http://{}",
            listener.local_addr().expect("a bound listener's address")
        );
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

    /// Serves `source` with default server settings.
    pub async fn with_source(source: Arc<dyn ConfigSource>) -> Self {
        Self::start(CfgsyncServerState::new(source)).await
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// Begins graceful shutdown and waits for the server to return.
    ///
    /// # Panics
    /// When the server task panicked.
    #[allow(clippy::expect_used)]
    pub async fn shutdown(mut self) -> cfgsync_core::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.expect("the server task panicked")
    }

    /// The server's `/metrics` samples whose name and labels start with
    /// `prefix`, as `(labels, value)` (empty when it cannot be read).
    pub async fn metric(&self, prefix: &str) -> Vec<(String, f64)> {
        let Ok(response) = crate::get(self.url("/metrics")).await else {
            return Vec::new();
        };
        let text = response.text().await.unwrap_or_default();
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    /// `/node` answers so far, by status.
    pub async fn node_answers(&self) -> BTreeMap<u16, u64> {
        let mut answers = BTreeMap::new();
        for (series, count) in self.metric("cfgsync_http_requests_total{").await {
            if !series.contains("route=\"/node\"") {
                continue;
            }
            let status = series
                .split("status=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|s| s.parse().ok());
            if let Some(status) = status {
                *answers.entry(status).or_default() += count as u64;
            }
        }
        answers
    }

    /// How many `/node` requests the server holds by long-poll right now.
    pub async fn long_polls_waiting(&self) -> u64 {
        self.metric("cfgsync_long_polls_waiting ")
            .await
            .first()
            .map_or(0, |(_, value)| *value as u64)
    }

    /// Waits until the server holds `n` long-polls (the clients are parked).
    pub async fn until_long_polls_waiting(&self, n: u64) {
        while self.long_polls_waiting().await != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// An artifact set of `(path, content)` pairs.
///
/// # Panics
/// When two entries share a path.
#[allow(clippy::expect_used)]
pub fn files(entries: &[(&str, &str)]) -> ArtifactSet {
    ArtifactSet::from_files(entries.iter().map(|(p, c)| ArtifactFile::new(*p, *c)))
        .expect("distinct paths")
}

/// Starts a long-poll of `node` (held up to 30 s) in a task, holding `etag`
/// when given; [`woken`] waits for its answer.
pub fn long_poll(
    client: &CfgsyncClient,
    node: &NodeRegistration,
    etag: Option<String>,
) -> JoinHandle<cfgsync_core::Result<FetchOutcome>> {
    let (client, node) = (client.clone(), node.clone());
    tokio::spawn(async move {
        let options = FetchOptions {
            if_none_match: etag,
            wait: Some(Duration::from_secs(30)),
        };
        client.fetch_node_config_with(&node, &options).await
    })
}

/// The payload and ETag a [`long_poll`] woke with.
///
/// # Panics
/// Unless it answered with a payload and its ETag within 10 s, long before its
/// 30 s wait would have ended.
#[allow(clippy::expect_used, clippy::panic)]
pub async fn woken(
    waiting: JoinHandle<cfgsync_core::Result<FetchOutcome>>,
) -> (NodeArtifactsPayload, String) {
    let outcome = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("woken within 10 s, long before the 30 s wait")
        .expect("the long-poll task panicked")
        .expect("the long-poll answered");
    match outcome {
        FetchOutcome::Updated {
            payload,
            etag: Some(etag),
        } => (payload, etag),
        other => panic!("a payload with its ETag expected, got {other:?}"),
    }
}
