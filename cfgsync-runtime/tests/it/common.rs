use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cfgsync_core::{ArtifactSet, ConfigResolveResponse, ConfigSource, NodeRegistration};
use tokio::sync::watch;

pub use cfgsync_test_support::{TestServer, files};

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

/// Whether `url` answers `/healthz` with 200.
async fn healthy(url: &str) -> bool {
    matches!(cfgsync_test_support::get(format!("{url}/healthz")).await, Ok(r) if r.status() == 200)
}

/// Waits (up to 10 s) for a server's `/healthz`.
pub async fn wait_healthy(url: &str) {
    for _ in 0..200 {
        if healthy(url).await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("server at {url} did not come up");
}

/// Waits (up to 20 s) for `/healthz` of the `cfgsync-server` process
/// `server`; panics with its log if it exits first (e.g. its store could
/// not be opened).
pub async fn wait_healthy_or_exit(server: &mut std::process::Child, url: &str, log: &Path) {
    for _ in 0..400 {
        if let Some(status) = server.try_wait().unwrap() {
            panic!(
                "cfgsync-server exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        if healthy(url).await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("cfgsync-server at {url} did not come up");
}
