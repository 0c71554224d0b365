#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cfgsync_core::{
    ArtifactFile, ArtifactSet, CfgsyncServerState, ConfigResolveResponse, ConfigSource,
    NodeRegistration, serve_cfgsync_on,
};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// A real cfgsync server (cfgsync-core's router) on 127.0.0.1:0.
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

    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap().unwrap();
    }

    /// `/node` answers so far, by status, from the server's own `/metrics`.
    pub async fn node_answers(&self) -> BTreeMap<u16, u64> {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let mut answers = BTreeMap::new();
        for line in text.lines() {
            if !line.starts_with("cfgsync_http_requests_total{")
                || !line.contains("route=\"/node\"")
            {
                continue;
            }
            let status: u16 = line
                .split("status=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap()
                .parse()
                .unwrap();
            let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            *answers.entry(status).or_default() += count as u64;
        }
        answers
    }

    /// How many `/node` requests the server holds by long-poll right now.
    pub async fn long_polls_waiting(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find(|l| l.starts_with("cfgsync_long_polls_waiting "))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .unwrap_or(0)
    }

    /// Waits until the server holds `n` long-polls (the client is parked on it).
    pub async fn until_long_polls_waiting(&self, n: u64) {
        while self.long_polls_waiting().await != n {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

pub fn files(entries: &[(&str, &str)]) -> ArtifactSet {
    ArtifactSet::from_files(entries.iter().map(|(p, c)| ArtifactFile::new(*p, *c))).unwrap()
}

pub fn node(identifier: &str) -> NodeRegistration {
    NodeRegistration::new(identifier, "10.0.0.5".parse().unwrap())
}

/// Names in `dir`, sorted (empty when it does not exist).
pub fn entries(dir: &Path) -> Vec<String> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = read
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// An app policy as an adapter would write one: not ready until `quorum` nodes
/// registered, then every node gets `/peers.txt` listing them all and its
/// `/config.yaml`, plus any extra files. Keeps the
/// registrations it received so tests can check what the client sent.
#[derive(Debug)]
pub struct QuorumSource {
    quorum: usize,
    extra: ArtifactSet,
    registered: Mutex<BTreeMap<String, NodeRegistration>>,
    changes: watch::Sender<u64>,
}

impl QuorumSource {
    pub fn new(quorum: usize) -> Self {
        Self {
            quorum,
            extra: ArtifactSet::new(),
            registered: Mutex::default(),
            changes: watch::Sender::new(0),
        }
    }

    /// Serves `extra` too, to every node.
    pub fn with_files(mut self, extra: ArtifactSet) -> Self {
        self.extra = extra;
        self
    }

    pub fn registration(&self, identifier: &str) -> Option<NodeRegistration> {
        self.registered.lock().unwrap().get(identifier).cloned()
    }
}

#[async_trait]
impl ConfigSource for QuorumSource {
    async fn register(&self, registration: NodeRegistration) -> cfgsync_core::Result<()> {
        self.registered
            .lock()
            .unwrap()
            .insert(registration.identifier.clone(), registration);
        self.changes.send_modify(|g| *g += 1);
        Ok(())
    }

    async fn resolve(
        &self,
        registration: &NodeRegistration,
    ) -> cfgsync_core::Result<ConfigResolveResponse> {
        let registered = self.registered.lock().unwrap();
        if !registered.contains_key(&registration.identifier) || registered.len() < self.quorum {
            return Ok(ConfigResolveResponse::NotReady);
        }
        let peers: String = registered.keys().map(|id| format!("{id}\n")).collect();
        let own = files(&[
            ("/peers.txt", &peers),
            (
                "/config.yaml",
                &format!("id: {}\n", registration.identifier),
            ),
        ]);
        let payload = cfgsync_core::ServedPayload::new(own.merged_with_shared(&self.extra))?;
        Ok(ConfigResolveResponse::Ready(Arc::new(payload)))
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}
