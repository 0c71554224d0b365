//! Lablet content for nodes: a node registers with `{"lablet": "LAB-1.1.1"}` and
//! receives that lablet's `cml.yaml`, `devices.json` and a `content.json`
//! manifest, straight from the catalog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use cfgsync_adapter::{Error as AdapterError, NodeArtifactsMaterializer, NodeMaterialization};
use cfgsync_core::{ArtifactFile, ArtifactSet, ChangeNotifier, NodeRegistration};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::catalog::LabletDefinition;
use crate::pipeline::{LabletSync, validate_name};

/// Path of the CML topology in a node's payload.
pub const CML_PATH: &str = "cml.yaml";
/// Path of the device definitions (present when the package has them).
pub const DEVICES_PATH: &str = "devices.json";
/// Path of the manifest.
pub const MANIFEST_PATH: &str = "content.json";
/// The registration metadata key naming a node's lablet; `serve` scopes node
/// tokens by it (`cfgsync_core::AuthConfig::scope_key`).
pub const LABLET_METADATA_KEY: &str = "lablet";

/// What a node says about itself to get lablet content. Other metadata fields
/// are allowed and ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabletNodeMetadata {
    /// The lablet, e.g. `LAB-1.1.1`.
    pub lablet: String,
}

/// `content.json`: where the package is stored and which version the node got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentManifest {
    /// The lablet.
    pub lablet: String,
    /// The catalog definition id.
    pub definition_id: String,
    /// Bucket holding the package.
    pub bucket: String,
    /// Object key of the package.
    pub key: String,
    /// Full URL of the package.
    pub url: String,
    /// SHA-256 of the package zip.
    pub sha256: String,
    /// Content version (bumps when the package changes).
    pub version: u64,
    /// Mosaic's version of the content.
    pub upstream_version: Option<String>,
    /// When the package was synced (RFC 3339).
    pub synced_at: String,
    /// `synced`, or `stale` when a delivery target has not refreshed yet.
    pub status: String,
}

impl ContentManifest {
    /// The manifest of a catalog definition.
    pub fn of(definition: &LabletDefinition) -> Self {
        let content = &definition.content;
        Self {
            lablet: content.lablet.clone(),
            definition_id: definition.id.clone(),
            bucket: content.store.bucket.clone(),
            key: content.store.key.clone(),
            url: content.store.url.clone(),
            sha256: content.content_package_hash.clone(),
            version: content.content_version,
            upstream_version: content.upstream_version.clone(),
            synced_at: content.synced_at.clone(),
            status: content.status.as_str().to_owned(),
        }
    }
}

/// Serves lablet content to nodes through the cfgsync contract. Use it with
/// [`cfgsync_adapter::MaterializingConfigSource`]: `425 not_ready` until the
/// node's lablet has been synced, then its files; a registration without
/// usable `{"lablet": NAME}` metadata is refused at `/register` with `400`.
///
/// **Freshness.** Each lablet's definition is read from the catalog once and
/// kept; [`refresh`](Self::refresh) reads the kept ones again and, when any
/// differs, drops the cached payloads and wakes long-polling nodes (their ETag
/// changes only if their files did). `serve` calls it after its own syncs and
/// drains, and whenever the catalog's change marker
/// ([`Catalog::marker`](crate::Catalog::marker)) moves — so a sync by the CLI,
/// a cron job or another replica reaches nodes too.
#[derive(Debug)]
pub struct LabletMaterializer {
    sync: Arc<LabletSync>,
    changes: ChangeNotifier,
    /// Definitions by id as last read (`None`: not synced yet).
    definitions: Mutex<HashMap<String, Option<LabletDefinition>>>,
    /// Bumped by every refresh: a read that overlapped one is not kept.
    epoch: AtomicU64,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl LabletMaterializer {
    /// Serves the catalog of `sync`.
    pub fn new(sync: Arc<LabletSync>) -> Self {
        Self {
            sync,
            changes: ChangeNotifier::new(),
            definitions: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    /// Reads every definition nodes were served from again; when one changed,
    /// drops the cached payloads and wakes the waiting nodes. Returns whether
    /// anything changed. A definition that cannot be read keeps what was read
    /// before (logged), so a catalog outage does not take content from nodes.
    pub async fn refresh(&self) -> bool {
        let _one = self.refreshing.lock().await;
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let kept: Vec<(String, Option<LabletDefinition>)> = self
            .kept()
            .iter()
            .map(|(id, def)| (id.clone(), def.clone()))
            .collect();
        let mut changed = false;
        for (id, before) in kept {
            match self.sync.catalog().get(&id).await {
                Ok(now) if now != before => {
                    self.kept().insert(id, now);
                    changed = true;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(id, %error, "cannot re-read a definition"),
            }
        }
        if changed {
            self.changes.notify();
        }
        changed
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<LabletDefinition>>> {
        self.definitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The definition `id`, as kept or read now.
    async fn definition(
        &self,
        id: &str,
    ) -> Result<Option<LabletDefinition>, crate::catalog::CatalogError> {
        if let Some(def) = self.kept().get(id) {
            return Ok(def.clone());
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let read = self.sync.catalog().get(id).await?;
        if self.epoch.load(Ordering::SeqCst) == epoch {
            self.kept().entry(id.to_owned()).or_insert(read.clone());
        } else {
            // a refresh ran meanwhile and may have missed this read: keep
            // nothing, and have waiting nodes ask again
            self.changes.notify();
        }
        Ok(read)
    }

    /// The lablet a node registered for (its `{"lablet": NAME}` metadata).
    pub(crate) fn lablet_of(node: &NodeRegistration) -> Result<String, AdapterError> {
        let invalid = |reason: String| AdapterError::InvalidMetadata {
            identifier: node.identifier.clone(),
            reason,
        };
        let meta: LabletNodeMetadata = node
            .metadata()
            .map_err(|e| invalid(format!("expected {{\"lablet\": NAME}}: {e}")))?
            .ok_or_else(|| invalid("no metadata; expected {\"lablet\": NAME}".into()))?;
        validate_name(&meta.lablet).map_err(|e| invalid(e.to_string()))?;
        Ok(meta.lablet)
    }
}

/// A node's files for a synced lablet.
pub fn lablet_files(definition: &LabletDefinition) -> Result<ArtifactSet, AdapterError> {
    let content = &definition.content;
    let manifest = serde_json::to_string_pretty(&ContentManifest::of(definition))
        .map_err(|e| AdapterError::materialize("cannot encode content.json", e))?;
    let mut files = vec![
        ArtifactFile::new(CML_PATH, content.cml_yaml_content.clone()),
        ArtifactFile::new(MANIFEST_PATH, manifest + "\n"),
    ];
    if let Some(devices) = &content.devices_json {
        files.insert(1, ArtifactFile::new(DEVICES_PATH, devices.clone()));
    }
    ArtifactSet::from_files(files).map_err(|source| AdapterError::Artifacts {
        context: format!("files of lablet {}", content.lablet),
        source,
    })
}

#[async_trait]
impl NodeArtifactsMaterializer for LabletMaterializer {
    fn validate_registration(&self, node: &NodeRegistration) -> Result<(), AdapterError> {
        Self::lablet_of(node).map(drop)
    }

    async fn materialize_node(
        &self,
        node: &NodeRegistration,
    ) -> Result<NodeMaterialization, AdapterError> {
        let lablet = Self::lablet_of(node)?;
        let id = self
            .sync
            .definition_id(&lablet)
            .map_err(|e| AdapterError::materialize(format!("definition id of {lablet}"), e))?;
        let definition = self
            .definition(&id)
            .await
            .map_err(|e| AdapterError::materialize(format!("catalog read of {lablet}"), e))?;
        Ok(match definition {
            None => NodeMaterialization::NotReady,
            Some(definition) => NodeMaterialization::Ready(lablet_files(&definition)?),
        })
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    /// A node is not ready only while its lablet has no catalog record.
    fn not_ready_reason(&self, node: &NodeRegistration) -> Option<String> {
        let lablet = Self::lablet_of(node).ok()?;
        Some(format!("lablet {lablet} has not been synced yet"))
    }
}
