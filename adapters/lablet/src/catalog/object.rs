//! [`ObjectCatalog`]: definitions as JSON objects in an object store (by
//! default the package store's own bucket), for deployments without CPA whose
//! replicas share one S3.
//!
//! **Layout**: one object per definition, `{prefix}{id}.json` (prefix
//! `LABLET_CATALOG_PREFIX`, default `_catalog/`, under the store URL's own
//! prefix), holding the [`LabletDefinition`] as JSON.
//!
//! **Writes** read the object and write it back conditionally: `PutMode::Create`
//! when there was none, `PutMode::Update` on the ETag/version read otherwise.
//! When another writer got there first (`AlreadyExists` / `Precondition`), the
//! write reads again and recomputes `content_version` from what is there now
//! (jittered backoff, bounded attempts and time) — the technique of the S3
//! registration store, so two replicas never lose a record or a version bump.
//!
//! **Change marker**: a digest of the prefix's listing (key, ETag, size and
//! modification time of every definition): any write anywhere changes it, and
//! nothing extra is written.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use futures::TryStreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use sha2::Digest;

use super::{
    Catalog, CatalogError, CatalogFilter, ContentSyncResult, KnownRecords, LabletDefinition,
    next_content_version,
};

/// Default prefix of the definitions under the store's prefix.
pub const DEFAULT_CATALOG_PREFIX: &str = "_catalog/";

/// Conditional writes one record may try while others keep winning.
const MAX_ATTEMPTS: usize = 50;

/// The catalog kept in an object store.
#[derive(Debug, Clone)]
pub struct ObjectCatalog {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
}

fn os_err(operation: &'static str, key: &Path) -> impl FnOnce(object_store::Error) -> CatalogError {
    let key = key.to_string();
    move |source| CatalogError::ObjectStore {
        operation,
        key,
        source: Box::new(source),
    }
}

impl ObjectCatalog {
    /// Definitions under `prefix` (e.g. `_catalog/`, or `tenant/_catalog/`) in
    /// `store`, which must support conditional writes (`PutMode::Create` and
    /// `PutMode::Update`): S3, RustFS, MinIO, in-memory.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
        }
    }

    fn key(&self, id: &str) -> Path {
        self.prefix
            .clone()
            .join(PathPart::from(format!("{id}.json")))
    }

    /// The stored definition at `key` and the version a conditional update needs.
    async fn read(
        &self,
        key: &Path,
    ) -> Result<Option<(LabletDefinition, UpdateVersion)>, CatalogError> {
        let got = match self.store.get(key).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err("get", key)(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got.bytes().await.map_err(os_err("get", key))?;
        let def = serde_json::from_slice(&bytes).map_err(|source| CatalogError::Decode {
            what: format!("stored definition {key}"),
            source,
        })?;
        Ok(Some((def, version)))
    }

    /// Writes `update(previous)` at `id`'s key conditionally, retrying when
    /// another writer won; returns what was written.
    async fn write(
        &self,
        id: &str,
        update: impl Fn(Option<&LabletDefinition>) -> LabletDefinition + Send + Sync,
    ) -> Result<LabletDefinition, CatalogError> {
        let key = self.key(id);
        let mut backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(2))
            .with_max_delay(Duration::from_millis(50))
            .with_jitter()
            .with_max_times(MAX_ATTEMPTS)
            .with_total_delay(Some(Duration::from_secs(10)))
            .build();
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let previous = self.read(&key).await?;
            let def = update(previous.as_ref().map(|(d, _)| d));
            let json = serde_json::to_vec(&def).map_err(|source| CatalogError::Decode {
                what: format!("definition {id}"),
                source,
            })?;
            let mode = match previous {
                None => PutMode::Create,
                Some((_, version)) => PutMode::Update(version),
            };
            match self
                .store
                .put_opts(&key, PutPayload::from(json), PutOptions::from(mode))
                .await
            {
                Ok(_) => return Ok(def),
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => match backoff.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => {
                        return Err(CatalogError::Contended {
                            key: key.to_string(),
                            attempts,
                        });
                    }
                },
                Err(e) => return Err(os_err("put", &key)(e)),
            }
        }
    }

    /// Every definition object under the prefix, with its listing metadata.
    async fn objects(&self) -> Result<Vec<object_store::ObjectMeta>, CatalogError> {
        let mut metas: Vec<_> = self
            .store
            .list(Some(&self.prefix))
            .try_collect()
            .await
            .map_err(os_err("list", &self.prefix))?;
        metas.retain(|m| m.location.as_ref().ends_with(".json"));
        metas.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(metas)
    }
}

#[async_trait]
impl Catalog for ObjectCatalog {
    async fn record(
        &self,
        id: &str,
        result: &ContentSyncResult,
    ) -> Result<LabletDefinition, CatalogError> {
        self.write(id, |previous| {
            let mut content = result.clone();
            content.content_version = next_content_version(previous, &content.content_package_hash);
            LabletDefinition {
                id: id.to_owned(),
                content,
            }
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<LabletDefinition>, CatalogError> {
        Ok(self.read(&self.key(id)).await?.map(|(def, _)| def))
    }

    async fn list(&self, filter: &CatalogFilter) -> Result<Vec<LabletDefinition>, CatalogError> {
        let mut out = Vec::new();
        for meta in self.objects().await? {
            // removed between the listing and the read: not there any more
            if let Some((def, _)) = self.read(&meta.location).await?
                && filter.matches(&def)
            {
                out.push(def);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn marker(&self) -> Result<Option<String>, CatalogError> {
        let mut digest = sha2::Sha256::new();
        for meta in self.objects().await? {
            let line = format!(
                "{}\t{}\t{}\t{}\t{}\n",
                meta.location,
                meta.e_tag.as_deref().unwrap_or("-"),
                meta.version.as_deref().unwrap_or("-"),
                meta.size,
                meta.last_modified.timestamp_nanos_opt().unwrap_or_default(),
            );
            digest.update(line.as_bytes());
        }
        Ok(Some(hex::encode(digest.finalize())))
    }
}

#[async_trait]
impl KnownRecords for ObjectCatalog {
    async fn remember(&self, definition: &LabletDefinition) -> Result<(), CatalogError> {
        self.write(&definition.id, |_| definition.clone())
            .await
            .map(drop)
    }
}
