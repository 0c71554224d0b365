//! The simulated nodes: identities, registration bodies, and what each node
//! must receive — written here independently of the materializer, so the bench
//! checks the server instead of repeating it.

use std::net::{IpAddr, Ipv4Addr};

use bytes::Bytes;
use cfgsync_core::{NodeArtifactsPayload, NodeRegistration, SCHEMA_VERSION};

/// The port every simulated node listens on (the server's default port for
/// nodes that send no metadata).
pub const PEER_PORT: u16 = 4400;

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    pub identifier: String,
    /// The JSON body of its `/register` and `/node` requests, encoded once.
    pub body: Bytes,
    /// The `/config.yaml` it must receive.
    pub config: String,
}

/// N simulated nodes and the shared `/peers.yaml` they must all receive.
#[derive(Debug)]
pub struct Fleet {
    pub nodes: Vec<SimNode>,
    pub peers: String,
}

impl Fleet {
    /// Nodes `node-00000` … with IPs 10.0.0.1 …, identifiers zero-padded so that
    /// their sorted order (the peer list's order) is their index order.
    pub fn new(count: usize) -> anyhow::Result<Self> {
        let width = count.saturating_sub(1).to_string().len().max(5);
        let mut peers = String::from("peers:\n");
        let mut nodes = Vec::with_capacity(count);
        for index in 0..count {
            let identifier = format!("node-{index:0width$}");
            let ip = node_ip(index)?;
            let address = format!("{ip}:{PEER_PORT}");
            peers.push_str(&format!("  - id: {identifier}\n    addr: {address}\n"));
            let registration = NodeRegistration::new(identifier.clone(), ip);
            nodes.push(SimNode {
                config: format!("id: {identifier}\nindex: {index}\nlisten: {address}\n"),
                body: Bytes::from(serde_json::to_vec(&registration)?),
                identifier,
            });
        }
        Ok(Self { nodes, peers })
    }

    /// The registrations, as the server would hold them.
    pub fn registrations(&self) -> anyhow::Result<Vec<NodeRegistration>> {
        self.nodes
            .iter()
            .map(|n| Ok(serde_json::from_slice(&n.body)?))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Checks a `/node` body of node `index`: schema 1, exactly its own
    /// `/config.yaml` and the full `/peers.yaml`.
    pub fn verify(&self, index: usize, body: &[u8]) -> Result<(), String> {
        let node = self
            .nodes
            .get(index)
            .ok_or_else(|| format!("no node #{index}"))?;
        let payload: NodeArtifactsPayload =
            serde_json::from_slice(body).map_err(|e| format!("payload is not valid JSON: {e}"))?;
        if payload.schema_version != SCHEMA_VERSION {
            return Err(format!("schema_version {}", payload.schema_version));
        }
        if payload.files.len() != 2 {
            return Err(format!(
                "{}: expected 2 files, got {}",
                node.identifier,
                payload.files.len()
            ));
        }
        let content = |path: &str| {
            payload
                .files
                .get(path)
                .map(|f| f.content.as_str())
                .ok_or_else(|| format!("{}: no {path}", node.identifier))
        };
        if content("/config.yaml")? != node.config {
            return Err(format!("{}: wrong /config.yaml", node.identifier));
        }
        if content("/peers.yaml")? != self.peers {
            return Err(format!("{}: wrong /peers.yaml", node.identifier));
        }
        Ok(())
    }
}

fn node_ip(index: usize) -> anyhow::Result<IpAddr> {
    let offset = u32::try_from(index + 1)?;
    let base = u32::from(Ipv4Addr::new(10, 0, 0, 0));
    anyhow::ensure!(offset < 1 << 24, "at most 2^24 - 1 nodes");
    Ok(IpAddr::V4(Ipv4Addr::from(base + offset)))
}

#[cfg(test)]
mod tests {
    use cfgsync_adapter::{
        RegistrationSnapshot, RegistrationSnapshotMaterializer, SnapshotMaterialization,
    };
    use cfgsync_core::ServedPayload;
    use cfgsync_examples::peer_list::PeerListMaterializer;

    use super::*;

    async fn served_body(fleet: &Fleet, index: usize) -> Bytes {
        let snapshot = RegistrationSnapshot::new(1, fleet.registrations().unwrap());
        let materializer = PeerListMaterializer::new(fleet.len(), PEER_PORT);
        let SnapshotMaterialization::Ready(catalog) =
            materializer.materialize_snapshot(&snapshot).await.unwrap()
        else {
            panic!("ready with every node registered");
        };
        let files = catalog
            .payload_files(&fleet.nodes[index].identifier)
            .unwrap();
        ServedPayload::new(files).unwrap().body()
    }

    #[tokio::test]
    async fn verify_accepts_what_the_peer_list_materializer_serves() {
        let fleet = Fleet::new(12).unwrap();
        for index in [0, 7, 11] {
            let body = served_body(&fleet, index).await;
            assert_eq!(fleet.verify(index, &body), Ok(()));
        }
    }

    #[tokio::test]
    async fn verify_rejects_another_nodes_payload_and_a_short_peer_list() {
        let fleet = Fleet::new(12).unwrap();
        let other = served_body(&fleet, 3).await;
        assert!(
            fleet
                .verify(4, &other)
                .unwrap_err()
                .contains("/config.yaml")
        );

        let smaller = Fleet::new(11).unwrap();
        let short = served_body(&smaller, 4).await;
        assert!(fleet.verify(4, &short).unwrap_err().contains("/peers.yaml"));
    }
}
