//! Sources that serve without registration: [`StaticConfigSource`] (a fixed
//! map) and [`BundleConfigSource`] (a bundle file).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cfgsync_artifacts::ArtifactSet;
use tokio::sync::watch;

use crate::document::{NodeArtifactsBundle, RegistrationArtifacts};
use crate::registration::validate_identifier;
use crate::{
    ChangeNotifier, ConfigResolveResponse, ConfigSource, Error, NodeRegistration, Result,
    ServedPayload, SharedFiles,
};

/// Per-node payloads built once from node files merged with shared files.
#[derive(Debug, Default)]
struct NodePayloads {
    shared: SharedFiles,
    nodes: HashMap<String, Arc<ServedPayload>>,
}

impl NodePayloads {
    fn new(shared: ArtifactSet) -> Result<Self> {
        Ok(Self {
            shared: SharedFiles::new(shared)?,
            nodes: HashMap::new(),
        })
    }

    fn set(&mut self, identifier: &str, files: ArtifactSet) -> Result<()> {
        validate_identifier(identifier)?;
        let payload = ServedPayload::merged(&files, &self.shared)?;
        self.nodes.insert(identifier.to_owned(), Arc::new(payload));
        Ok(())
    }

    fn get(&self, identifier: &str) -> Option<Arc<ServedPayload>> {
        self.nodes.get(identifier).cloned()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A fixed map of per-node files, served **after a node registers**: `425
/// not_ready` until then, `404 missing_config` for a registered node the map does
/// not know. The original's `registration` mode.
#[derive(Debug, Default)]
pub struct StaticConfigSource {
    payloads: RwLock<NodePayloads>,
    registered: RwLock<HashMap<String, NodeRegistration>>,
    changes: ChangeNotifier,
}

impl StaticConfigSource {
    /// A source with `shared` files merged into every node's payload.
    pub fn new(shared: ArtifactSet) -> Result<Self> {
        Ok(Self {
            payloads: RwLock::new(NodePayloads::new(shared)?),
            ..Self::default()
        })
    }

    /// Adds (or replaces) a node's own files.
    pub fn with_node(self, identifier: &str, files: ArtifactSet) -> Result<Self> {
        write(&self.payloads).set(identifier, files)?;
        Ok(self)
    }

    /// Builds the source from a [`RegistrationArtifacts`] document.
    pub fn from_artifacts(artifacts: RegistrationArtifacts) -> Result<Self> {
        let mut payloads = NodePayloads::new(artifacts.shared.files)?;
        for (identifier, list) in artifacts.nodes {
            payloads.set(&identifier, list.files)?;
        }
        Ok(Self {
            payloads: RwLock::new(payloads),
            ..Self::default()
        })
    }

    /// Loads an artifacts file (`nodes: {id: {files}}`, `shared: {files}`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_artifacts(RegistrationArtifacts::from_path(path)?)
    }

    /// Identifiers of the registered nodes, sorted.
    pub fn registered(&self) -> Vec<String> {
        let mut ids: Vec<String> = read(&self.registered).keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[async_trait]
impl ConfigSource for StaticConfigSource {
    async fn register(&self, registration: NodeRegistration) -> Result<()> {
        let previous =
            write(&self.registered).insert(registration.identifier.clone(), registration.clone());
        if previous.as_ref() != Some(&registration) {
            self.changes.notify();
        }
        Ok(())
    }

    async fn resolve(&self, registration: &NodeRegistration) -> Result<ConfigResolveResponse> {
        if !read(&self.registered).contains_key(&registration.identifier) {
            return Ok(ConfigResolveResponse::NotReady);
        }
        Ok(match read(&self.payloads).get(&registration.identifier) {
            Some(payload) => ConfigResolveResponse::Ready(payload),
            None => ConfigResolveResponse::Missing,
        })
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        write(&self.payloads).set(identifier, files)?;
        self.changes.notify();
        Ok(())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}

/// A precomputed bundle, served **without registration**: any node the bundle
/// names gets its files (merged with `shared_files`), any other gets `404
/// missing_config`. The original's `static`/`bundle` mode.
#[derive(Debug, Default)]
pub struct BundleConfigSource {
    payloads: RwLock<NodePayloads>,
    changes: ChangeNotifier,
}

impl BundleConfigSource {
    /// Builds the source from a bundle; fails on a duplicate identifier, a bad
    /// identifier or a duplicate path within a node.
    pub fn from_bundle(bundle: NodeArtifactsBundle) -> Result<Self> {
        let mut payloads = NodePayloads::new(bundle.shared_files)?;
        for entry in bundle.nodes {
            if payloads.nodes.contains_key(&entry.identifier) {
                return Err(Error::Invalid {
                    field: "nodes",
                    reason: format!("node {:?} appears twice in the bundle", entry.identifier),
                });
            }
            payloads.set(&entry.identifier, entry.files)?;
        }
        Ok(Self {
            payloads: RwLock::new(payloads),
            changes: ChangeNotifier::new(),
        })
    }

    /// Loads a bundle file (YAML, or JSON when the name ends in `.json`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_bundle(NodeArtifactsBundle::from_path(path)?).map_err(|e| match e {
            Error::Invalid { field, reason } => Error::ParseFile {
                path: path.to_path_buf(),
                what: "cfgsync bundle",
                message: format!("invalid {field}: {reason}"),
            },
            other => other,
        })
    }

    /// Identifiers the bundle serves, sorted.
    pub fn identifiers(&self) -> Vec<String> {
        let mut ids: Vec<String> = read(&self.payloads).nodes.keys().cloned().collect();
        ids.sort();
        ids
    }
}

#[async_trait]
impl ConfigSource for BundleConfigSource {
    async fn register(&self, _registration: NodeRegistration) -> Result<()> {
        // Bundle mode serves without registration; registering is accepted as the
        // original does and changes nothing.
        Ok(())
    }

    async fn resolve(&self, registration: &NodeRegistration) -> Result<ConfigResolveResponse> {
        Ok(match read(&self.payloads).get(&registration.identifier) {
            Some(payload) => ConfigResolveResponse::Ready(payload),
            None => ConfigResolveResponse::Missing,
        })
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        write(&self.payloads).set(identifier, files)?;
        self.changes.notify();
        Ok(())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }
}
