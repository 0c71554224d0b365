//! The original cfgsync use case as an adapter: wait until N nodes registered,
//! then give each node its own config plus the shared peer list.

use async_trait::async_trait;
use cfgsync_adapter::{
    Error, NodeArtifacts, NodeArtifactsCatalog, RegistrationSnapshot,
    RegistrationSnapshotMaterializer, Result, SnapshotMaterialization,
};
use cfgsync_core::{ArtifactFile, ArtifactSet, NodeRegistration};
use serde::Deserialize;

/// What a node may say about itself when it registers.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerMetadata {
    /// The port peers reach it on (default: the adapter's port).
    pub port: Option<u16>,
}

/// Ready once `expected` nodes registered; each node gets `/config.yaml`
/// (identifier, index, listen address) and every node the shared
/// `/peers.yaml` (all nodes, sorted by identifier).
#[derive(Debug, Clone)]
pub struct PeerListMaterializer {
    expected: usize,
    default_port: u16,
}

impl PeerListMaterializer {
    /// Waits for `expected` nodes; nodes that give no port listen on `default_port`.
    pub fn new(expected: usize, default_port: u16) -> Self {
        Self {
            expected,
            default_port,
        }
    }

    fn address(&self, node: &NodeRegistration) -> Result<String> {
        let meta: PeerMetadata = node
            .metadata()
            .map_err(|e| Error::InvalidMetadata {
                identifier: node.identifier.clone(),
                reason: format!("expected {{\"port\": N}}: {e}"),
            })?
            .unwrap_or_default();
        let port = meta.port.unwrap_or(self.default_port);
        Ok(match node.ip {
            std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
            ip => format!("{ip}:{port}"),
        })
    }
}

#[async_trait]
impl RegistrationSnapshotMaterializer for PeerListMaterializer {
    fn validate_registration(&self, node: &NodeRegistration) -> Result<()> {
        self.address(node).map(drop)
    }

    async fn materialize_snapshot(
        &self,
        snapshot: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization> {
        if snapshot.len() < self.expected {
            return Ok(SnapshotMaterialization::NotReady);
        }
        let mut peers = String::from("peers:\n");
        let mut nodes = Vec::with_capacity(snapshot.len());
        for (index, node) in snapshot.iter().enumerate() {
            let address = self.address(node)?;
            peers.push_str(&format!(
                "  - id: {}\n    addr: {address}\n",
                node.identifier
            ));
            let config = format!(
                "id: {}\nindex: {index}\nlisten: {address}\n",
                node.identifier
            );
            let files = ArtifactSet::from_files([ArtifactFile::new("/config.yaml", config)])
                .map_err(|source| Error::Artifacts {
                    context: format!("config of node {:?}", node.identifier),
                    source,
                })?;
            nodes.push(NodeArtifacts::new(node.identifier.clone(), files));
        }
        let shared = ArtifactSet::from_files([ArtifactFile::new("/peers.yaml", peers)]).map_err(
            |source| Error::Artifacts {
                context: "shared peer list".into(),
                source,
            },
        )?;
        Ok(SnapshotMaterialization::Ready(
            NodeArtifactsCatalog::new(nodes).with_shared(shared),
        ))
    }
}
