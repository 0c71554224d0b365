//! The catalog of lablet definitions: where sync results are recorded.
//!
//! [`Catalog`] is small, async and object-safe (`Arc<dyn Catalog>`). Two
//! implementations pass the same behaviour suite:
//! [`EmbeddedCatalog`] (a durable `redb` file, the default), [`ObjectCatalog`]
//! (JSON objects in the object store, for replicas sharing one S3) and
//! [`CpaCatalog`] (CPA over HTTP).
//!
//! **Content version.** Each definition carries a `content_version` that starts at 1
//! and increments whenever a recorded package hash differs from the previous one; a
//! record with the same hash keeps it. The embedded catalog computes it; CPA is
//! expected to do the same (the value we send is our proposal).

mod config;
mod cpa;
mod embedded;
mod error;
mod object;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use config::{
    CatalogConfig, CatalogKind, DEFAULT_DEFINITION_URL, DEFAULT_LIST_URL, DEFAULT_RECORD_URL,
};
pub use cpa::CpaCatalog;
pub use embedded::EmbeddedCatalog;
pub use error::CatalogError;
pub use object::{DEFAULT_CATALOG_PREFIX, ObjectCatalog};

use crate::store::StoreLocation;

/// Overall result of a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SyncStatus {
    /// Stored, every fan-out target refreshed, recorded.
    Synced,
    /// Stored and recorded, but at least one fan-out target did not refresh: the
    /// delivery is queued for retry ("catalog synced but delivery stale").
    Stale,
}

impl SyncStatus {
    /// `synced` / `stale`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Synced => "synced",
            Self::Stale => "stale",
        }
    }
}

/// What happened to one fan-out target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeliveryStatus {
    /// The target answered 2xx.
    Delivered,
    /// The target kept failing; the delivery waits in the retry queue.
    Queued,
}

/// Per-target fan-out result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetResult {
    /// `lds` or `se`.
    pub target: String,
    /// Outcome.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// Last error, when not delivered.
    pub error: Option<String>,
}

/// The ADR-025 fields plus sync bookkeeping, as recorded (snake_case JSON; this is
/// the body of CPA's `content-synced` call).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentSyncResult {
    /// Lablet name.
    pub lablet: String,
    /// SHA-256 (hex) of the whole zip.
    pub content_package_hash: String,
    /// Size of the zip in bytes.
    pub content_package_size: u64,
    /// `mosaic_meta.json` `Version`.
    pub upstream_version: Option<String>,
    /// `mosaic_meta.json` `DatePublished`.
    pub upstream_date_published: Option<String>,
    /// `mosaic_meta.json` `InstanceName`.
    pub upstream_instance_name: Option<String>,
    /// `mosaic_meta.json` `FormId`.
    pub upstream_form_id: Option<String>,
    /// Relative path of `grade.xml` in the zip.
    pub grade_xml_path: Option<String>,
    /// Relative path of `cml.yaml`/`cml.yml` in the zip.
    pub cml_yaml_path: String,
    /// Full CML YAML.
    pub cml_yaml_content: String,
    /// SHA-256 (hex) of the CML YAML.
    pub cml_yaml_hash: String,
    /// Full `devices.json`, when present.
    pub devices_json: Option<String>,
    /// When the sync finished (RFC 3339, UTC).
    pub synced_at: String,
    /// `synced` or `stale`.
    pub status: SyncStatus,
    /// Where the package is stored.
    pub store: StoreLocation,
    /// Per-target fan-out results.
    pub fanout: Vec<TargetResult>,
    /// Content version: the catalog's answer on reads, our proposal on writes.
    pub content_version: u64,
}

impl ContentSyncResult {
    /// "catalog synced but delivery stale: ..." when a target is stale.
    pub fn stale_message(&self) -> Option<String> {
        let stale: Vec<&str> = self
            .fanout
            .iter()
            .filter(|t| t.status != DeliveryStatus::Delivered)
            .map(|t| t.target.as_str())
            .collect();
        if self.status == SyncStatus::Stale || !stale.is_empty() {
            Some(format!(
                "catalog synced but delivery stale: {} did not refresh (queued for retry)",
                stale.join(", ")
            ))
        } else {
            None
        }
    }
}

/// A catalog entry: the definition id and its last recorded sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabletDefinition {
    /// Definition id (by default the lablet name).
    pub id: String,
    /// The last recorded sync result.
    #[serde(flatten)]
    pub content: ContentSyncResult,
}

/// Filter for [`Catalog::list`]; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogFilter {
    /// Only definitions from this Mosaic instance.
    pub upstream_instance_name: Option<String>,
    /// Only definitions with this status.
    pub status: Option<SyncStatus>,
}

impl CatalogFilter {
    /// Whether `def` passes the filter.
    pub fn matches(&self, def: &LabletDefinition) -> bool {
        self.upstream_instance_name
            .as_ref()
            .is_none_or(|n| def.content.upstream_instance_name.as_ref() == Some(n))
            && self.status.is_none_or(|s| def.content.status == s)
    }
}

/// Where sync results are recorded.
#[async_trait]
pub trait Catalog: Send + Sync + std::fmt::Debug {
    /// Record a sync result for definition `id`; returns the definition as stored
    /// (with the catalog's `content_version`).
    async fn record(
        &self,
        id: &str,
        result: &ContentSyncResult,
    ) -> Result<LabletDefinition, CatalogError>;

    /// The definition `id`, if any sync was recorded.
    async fn get(&self, id: &str) -> Result<Option<LabletDefinition>, CatalogError>;

    /// All definitions passing `filter`, ordered by id.
    async fn list(&self, filter: &CatalogFilter) -> Result<Vec<LabletDefinition>, CatalogError>;

    /// A cheap change marker: any value that differs whenever a definition
    /// changed, whoever changed it (this process, another process on the same
    /// data dir, another replica on the same store). `serve` polls it and
    /// reloads the lablets its nodes hold when it moves. `None`: this catalog
    /// has no marker, so readers cannot cache it and only learn about changes
    /// made in their own process.
    async fn marker(&self) -> Result<Option<String>, CatalogError> {
        Ok(None)
    }
}

/// Where the CPA catalog keeps its last known record of each definition (what
/// it last posted and CPA accepted): CPA guarantees only the record call, so
/// this is what nodes are served from when CPA cannot be read back.
#[async_trait]
pub(crate) trait KnownRecords: Catalog {
    /// Keep `definition` as it is (its `content_version` included).
    async fn remember(&self, definition: &LabletDefinition) -> Result<(), CatalogError>;
}

/// The version a record of `hash` gets after `previous`.
pub fn next_content_version(previous: Option<&LabletDefinition>, hash: &str) -> u64 {
    match previous {
        None => 1,
        Some(p) if p.content.content_package_hash == hash => p.content.content_version.max(1),
        Some(p) => p.content.content_version.saturating_add(1),
    }
}

/// Now, as recorded in `synced_at` and the queues (RFC 3339, UTC, milliseconds).
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
