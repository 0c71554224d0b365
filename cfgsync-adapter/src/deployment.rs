//! [`DeploymentAdapter`]: config derived from a deployment model, served
//! through [`DeploymentMaterializer`].

use async_trait::async_trait;
use cfgsync_artifacts::{ArtifactFile, ArtifactSet};
use cfgsync_core::NodeRegistration;
use serde::Serialize;

use crate::{
    Error, NodeArtifacts, NodeArtifactsCatalog, RegistrationSnapshot,
    RegistrationSnapshotMaterializer, Result, SnapshotMaterialization,
};

/// Policy for apps whose config derives from a deployment model: build the
/// model from the registered set (or say it is not ready), then derive each
/// node's config and the shared files from it. Wrap it in a
/// [`DeploymentMaterializer`] to serve it.
pub trait DeploymentAdapter: Send + Sync + std::fmt::Debug + 'static {
    /// The deployment model (topology, peer list, genesis, ...).
    type Model: Send + Sync;

    /// The model for these registrations; `Ok(None)` while not ready.
    fn build_model(&self, snapshot: &RegistrationSnapshot) -> Result<Option<Self::Model>>;

    /// One node's own files.
    fn node_files(&self, model: &Self::Model, node: &NodeRegistration) -> Result<ArtifactSet>;

    /// Files every node receives (none by default).
    fn shared_files(&self, model: &Self::Model) -> Result<ArtifactSet> {
        let _ = model;
        Ok(ArtifactSet::new())
    }

    /// Serializes `value` as a YAML file — a helper for `node_files` and
    /// `shared_files`.
    fn yaml_file<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<ArtifactFile>
    where
        Self: Sized,
    {
        let text = serde_yaml_ng::to_string(value)
            .map_err(|e| Error::materialize(format!("cannot encode {path} as YAML"), e))?;
        Ok(ArtifactFile::new(path, text))
    }

    /// Serializes `value` as a pretty JSON file.
    fn json_file<T: Serialize + ?Sized>(&self, path: &str, value: &T) -> Result<ArtifactFile>
    where
        Self: Sized,
    {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| Error::materialize(format!("cannot encode {path} as JSON"), e))?;
        Ok(ArtifactFile::new(path, text))
    }
}

/// Serves a [`DeploymentAdapter`] as a [`RegistrationSnapshotMaterializer`].
#[derive(Debug)]
pub struct DeploymentMaterializer<A>(pub A);

#[async_trait]
impl<A: DeploymentAdapter> RegistrationSnapshotMaterializer for DeploymentMaterializer<A> {
    async fn materialize_snapshot(
        &self,
        snapshot: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization> {
        let Some(model) = self.0.build_model(snapshot)? else {
            return Ok(SnapshotMaterialization::NotReady);
        };
        let nodes = snapshot
            .iter()
            .map(|node| {
                Ok(NodeArtifacts::new(
                    node.identifier.clone(),
                    self.0.node_files(&model, node)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SnapshotMaterialization::Ready(
            NodeArtifactsCatalog::new(nodes).with_shared(self.0.shared_files(&model)?),
        ))
    }
}
