//! The policy traits: [`RegistrationSnapshotMaterializer`] (whole set) and
//! [`NodeArtifactsMaterializer`] (one node).

use async_trait::async_trait;
use cfgsync_artifacts::ArtifactSet;
use cfgsync_core::NodeRegistration;
use tokio::sync::watch;

use crate::{Error, NodeArtifactsCatalog, RegistrationSnapshot, Result};

/// What a [`RegistrationSnapshotMaterializer`] makes of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SnapshotMaterialization {
    /// The policy is not met yet (e.g. fewer nodes than expected): every node
    /// gets `425 not_ready`.
    NotReady,
    /// Files for the nodes; a registered node the catalog leaves out gets `404
    /// missing_config`.
    Ready(NodeArtifactsCatalog),
}

/// Whole-snapshot policy: use it when readiness or content depends on the full
/// registered set (peer lists, "wait for N nodes").
#[async_trait]
pub trait RegistrationSnapshotMaterializer: Send + Sync + std::fmt::Debug + 'static {
    /// Turns the registered set into files.
    async fn materialize_snapshot(
        &self,
        snapshot: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization>;

    /// Checks a registration before it is stored (`POST /register`): an error
    /// here answers that node `400` and keeps its registration out of the store,
    /// so one node's bad metadata never fails the others. Accepts all by default.
    fn validate_registration(&self, registration: &NodeRegistration) -> Result<()> {
        let _ = registration;
        Ok(())
    }

    /// A receiver that changes when this materializer's own inputs change
    /// (content re-synced, a file edited): cached results are dropped and
    /// long-polling nodes wake. `None` when only registrations matter.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }
}

/// What a [`NodeArtifactsMaterializer`] makes of one registration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeMaterialization {
    /// Not ready yet (`425`).
    NotReady,
    /// The node's files (`200`).
    Ready(ArtifactSet),
    /// No config exists for this node (`404`).
    Missing,
}

/// One-node policy: each node's files depend only on its own registration (and
/// on the materializer's inputs), not on the other nodes.
#[async_trait]
pub trait NodeArtifactsMaterializer: Send + Sync + std::fmt::Debug + 'static {
    /// The files of one registered node.
    async fn materialize_node(
        &self,
        registration: &NodeRegistration,
    ) -> Result<NodeMaterialization>;

    /// Checks a registration before it is stored (`POST /register`): an error
    /// here answers that node `400` and keeps its registration out of the store.
    /// Accepts all by default.
    fn validate_registration(&self, registration: &NodeRegistration) -> Result<()> {
        let _ = registration;
        Ok(())
    }

    /// As [`RegistrationSnapshotMaterializer::changes`].
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Why a node this materializer answered `NotReady` is waiting, for people
    /// (e.g. "X has not been published yet"): the node's `425` message and the
    /// status page carry it. `None` (the default) gives a generic reason.
    fn not_ready_reason(&self, registration: &NodeRegistration) -> Option<String> {
        let _ = registration;
        None
    }

    /// Replaces what one node is served (`POST /node/replace`); most
    /// materializers derive files from policy and do not support it.
    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        let _ = (identifier, files);
        Err(Error::Core(cfgsync_core::Error::Unsupported {
            operation: "replacing a node's files",
        }))
    }
}

#[async_trait]
impl<M: RegistrationSnapshotMaterializer + ?Sized> RegistrationSnapshotMaterializer
    for std::sync::Arc<M>
{
    async fn materialize_snapshot(
        &self,
        snapshot: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization> {
        (**self).materialize_snapshot(snapshot).await
    }

    fn validate_registration(&self, registration: &NodeRegistration) -> Result<()> {
        (**self).validate_registration(registration)
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        (**self).changes()
    }
}

#[async_trait]
impl<M: NodeArtifactsMaterializer + ?Sized> NodeArtifactsMaterializer for std::sync::Arc<M> {
    async fn materialize_node(
        &self,
        registration: &NodeRegistration,
    ) -> Result<NodeMaterialization> {
        (**self).materialize_node(registration).await
    }

    fn validate_registration(&self, registration: &NodeRegistration) -> Result<()> {
        (**self).validate_registration(registration)
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        (**self).changes()
    }

    fn not_ready_reason(&self, registration: &NodeRegistration) -> Option<String> {
        (**self).not_ready_reason(registration)
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        (**self).replace(identifier, files).await
    }
}
