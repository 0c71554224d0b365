//! [`StaticArtifactsMaterializer`]: fixed per-node files, served once a node
//! has registered.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{PoisonError, RwLock};

use async_trait::async_trait;
use cfgsync_artifacts::ArtifactSet;
use cfgsync_core::{ChangeNotifier, NodeRegistration, RegistrationArtifacts, validate_identifier};
use tokio::sync::watch;

use crate::{NodeArtifactsMaterializer, NodeMaterialization, Result};

/// A fixed map of per-node files plus shared files, as a one-node
/// materializer: a registered node the map names gets its files, any other
/// `404 missing_config`. The original's `registration` mode, over any
/// [`RegistrationStore`](crate::RegistrationStore). Supports `/node/replace`,
/// and replacing the whole map at once ([`replace_artifacts`](Self::replace_artifacts)).
#[derive(Debug, Default)]
pub struct StaticArtifactsMaterializer {
    map: RwLock<FixedMap>,
    changes: ChangeNotifier,
}

#[derive(Debug, Default)]
struct FixedMap {
    nodes: HashMap<String, ArtifactSet>,
    shared: ArtifactSet,
}

impl FixedMap {
    fn new(artifacts: RegistrationArtifacts) -> Result<Self> {
        let mut nodes = HashMap::with_capacity(artifacts.nodes.len());
        for (identifier, list) in artifacts.nodes {
            validate_identifier(&identifier)?;
            nodes.insert(identifier, list.files);
        }
        Ok(Self {
            nodes,
            shared: artifacts.shared.files,
        })
    }
}

impl StaticArtifactsMaterializer {
    /// From an artifacts document (`nodes: {id: {files}}`, `shared: {files}`).
    pub fn new(artifacts: RegistrationArtifacts) -> Result<Self> {
        Ok(Self {
            map: RwLock::new(FixedMap::new(artifacts)?),
            changes: ChangeNotifier::new(),
        })
    }

    /// Loads an artifacts file (YAML, or JSON when the name ends in `.json`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::new(RegistrationArtifacts::from_path(path)?).map_err(|e| {
            crate::Error::Core(cfgsync_core::Error::ParseFile {
                path: path.to_path_buf(),
                what: "cfgsync artifacts file",
                message: e.to_string(),
            })
        })
    }

    /// Serves `artifacts` instead of the current map, all at once: a request
    /// sees the old map or the new one, never a mix. On error (a bad
    /// identifier) the current map stays. Nodes whose files did not change keep
    /// their ETag; files set by `/node/replace` are dropped with the old map.
    pub fn replace_artifacts(&self, artifacts: RegistrationArtifacts) -> Result<()> {
        let map = FixedMap::new(artifacts)?;
        *self.map.write().unwrap_or_else(PoisonError::into_inner) = map;
        self.changes.notify();
        Ok(())
    }

    /// Identifiers the map names, sorted.
    pub fn identifiers(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .nodes
            .keys()
            .cloned()
            .collect();
        ids.sort();
        ids
    }
}

#[async_trait]
impl NodeArtifactsMaterializer for StaticArtifactsMaterializer {
    async fn materialize_node(&self, node: &NodeRegistration) -> Result<NodeMaterialization> {
        let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
        Ok(match map.nodes.get(&node.identifier) {
            Some(files) => {
                NodeMaterialization::Ready(files.clone().merged_with_shared(&map.shared))
            }
            None => NodeMaterialization::Missing,
        })
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        validate_identifier(identifier)?;
        self.map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .nodes
            .insert(identifier.to_owned(), files);
        self.changes.notify();
        Ok(())
    }
}
