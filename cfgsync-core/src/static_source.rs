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
use crate::status::{NodeAnswer, SourceNode, SourceStatus};
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

    fn from_bundle(bundle: NodeArtifactsBundle) -> Result<Self> {
        let mut payloads = Self::new(bundle.shared_files)?;
        for entry in bundle.nodes {
            if payloads.nodes.contains_key(&entry.identifier) {
                return Err(Error::Invalid {
                    field: "nodes",
                    reason: format!("node {:?} appears twice in the bundle", entry.identifier),
                });
            }
            payloads.set(&entry.identifier, entry.files)?;
        }
        Ok(payloads)
    }

    fn ready(payload: &ServedPayload) -> NodeAnswer {
        NodeAnswer::Ready {
            etag: payload.etag().to_owned(),
            files: payload.file_count(),
        }
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

    async fn registration(&self, identifier: &str) -> Result<Option<NodeRegistration>> {
        Ok(read(&self.registered).get(identifier).cloned())
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        write(&self.payloads).set(identifier, files)?;
        self.changes.notify();
        Ok(())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    async fn status(&self) -> Result<SourceStatus> {
        let registered = read(&self.registered).clone();
        let payloads = read(&self.payloads);
        let waiting: Vec<SourceNode> = payloads
            .nodes
            .keys()
            .filter(|id| !registered.contains_key(*id))
            .map(|id| {
                SourceNode::new(
                    id.clone(),
                    NodeAnswer::NotReady {
                        reason: "not registered yet".into(),
                    },
                )
            })
            .collect();
        let mut nodes: Vec<SourceNode> = registered
            .into_values()
            .map(|registration| {
                let answer = match payloads.get(&registration.identifier) {
                    Some(payload) => NodePayloads::ready(&payload),
                    None => NodeAnswer::Missing {
                        reason: "registered, but the source has no files for it".into(),
                    },
                };
                SourceNode::new(registration.identifier.clone(), answer)
                    .with_registration(registration)
            })
            .collect();
        nodes.extend(waiting);
        Ok(SourceStatus::new("registration")
            .with_generation(self.changes.generation())
            .with_nodes(nodes))
    }
}

/// Maps a document's validation error to one naming the file.
fn invalid_file(error: Error, path: &Path, what: &'static str) -> Error {
    match error {
        Error::Invalid { field, reason } => Error::ParseFile {
            path: path.to_path_buf(),
            what,
            message: format!("invalid {field}: {reason}"),
        },
        other => other,
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
        Ok(Self {
            payloads: RwLock::new(NodePayloads::from_bundle(bundle)?),
            changes: ChangeNotifier::new(),
        })
    }

    /// Loads a bundle file (YAML, or JSON when the name ends in `.json`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_bundle(NodeArtifactsBundle::from_path(path)?)
            .map_err(|e| invalid_file(e, path, "cfgsync bundle"))
    }

    /// Serves `bundle` instead of the current set, all at once: requests see
    /// either the old set or the new one, never a mix. Checked as
    /// [`from_bundle`](Self::from_bundle) does; on error the current set stays.
    /// Waiting long-polls look again: nodes whose payload changed are answered,
    /// the others (same ETag) stay held. Files set by
    /// [`replace`](ConfigSource::replace) are dropped with the old set.
    pub fn replace_bundle(&self, bundle: NodeArtifactsBundle) -> Result<()> {
        let payloads = NodePayloads::from_bundle(bundle)?;
        *write(&self.payloads) = payloads;
        self.changes.notify();
        Ok(())
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

    async fn status(&self) -> Result<SourceStatus> {
        let nodes = read(&self.payloads)
            .nodes
            .iter()
            .map(|(id, payload)| SourceNode::new(id.clone(), NodePayloads::ready(payload)))
            .collect();
        Ok(SourceStatus::new("bundle")
            .with_generation(self.changes.generation())
            .with_nodes(nodes))
    }
}
