//! [`CatalogConfig`]: which catalog records sync results, how definitions are
//! named, and where CPA answers.

use serde::{Deserialize, Serialize};

use cfgsync_core::Secret;

/// Default CPA record URL template.
pub const DEFAULT_RECORD_URL: &str =
    "{cpa_url}/api/internal/lablet-definitions/{id}/content-synced";
/// Default CPA definition URL template (our assumed read contract).
pub const DEFAULT_DEFINITION_URL: &str = "{cpa_url}/api/internal/lablet-definitions/{id}";
/// Default CPA list URL template (our assumed list contract).
pub const DEFAULT_LIST_URL: &str = "{cpa_url}/api/internal/lablet-definitions";

/// Which catalog records sync results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CatalogKind {
    /// Embedded `redb` database in the data directory (default).
    #[default]
    Embedded,
    /// CPA over HTTP.
    Cpa,
    /// JSON objects in the object store (`s3://` stores only).
    Object,
}

/// The catalog part of [`LabletSyncConfig`](crate::LabletSyncConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CatalogConfig {
    /// Catalog kind (`LABLET_CATALOG` = `embedded` | `cpa` | `object`).
    pub kind: CatalogKind,
    /// Definition id template (`LABLET_ID_TEMPLATE`, default `{name}`).
    pub id_template: String,
    /// Base URL of CPA (`LABLET_CPA_URL`), needed for `kind = cpa`.
    pub cpa_url: Option<String>,
    /// Bearer token for CPA (`LABLET_CPA_TOKEN`); never serialized.
    #[serde(skip_serializing)]
    pub cpa_token: Option<Secret>,
    /// CPA record URL template (`LABLET_CPA_RECORD_URL`).
    pub cpa_record_url: String,
    /// CPA definition URL template (`LABLET_CPA_DEFINITION_URL`).
    pub cpa_definition_url: String,
    /// CPA list URL template (`LABLET_CPA_LIST_URL`).
    pub cpa_list_url: String,
    /// Seconds between two listings of CPA made to notice records made
    /// elsewhere (`LABLET_CATALOG_POLL_SECS`, default 1, at least 1).
    pub poll_secs: u64,
    /// Where the object catalog keeps definitions, under the store URL's
    /// prefix (`LABLET_CATALOG_PREFIX`, default `_catalog/`).
    pub object_prefix: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        Self {
            kind: CatalogKind::Embedded,
            id_template: "{name}".to_owned(),
            cpa_url: None,
            cpa_token: None,
            cpa_record_url: DEFAULT_RECORD_URL.to_owned(),
            cpa_definition_url: DEFAULT_DEFINITION_URL.to_owned(),
            cpa_list_url: DEFAULT_LIST_URL.to_owned(),
            poll_secs: 1,
            object_prefix: super::DEFAULT_CATALOG_PREFIX.to_owned(),
        }
    }
}

impl CatalogConfig {
    /// Builder: CPA base URL, and select the CPA catalog.
    pub fn with_cpa_url(mut self, url: impl Into<String>) -> Self {
        self.cpa_url = Some(url.into());
        self.kind = CatalogKind::Cpa;
        self
    }

    /// Builder: CPA bearer token.
    pub fn with_cpa_token(mut self, token: Secret) -> Self {
        self.cpa_token = Some(token);
        self
    }

    /// Builder: definition id template.
    pub fn with_id_template(mut self, template: impl Into<String>) -> Self {
        self.id_template = template.into();
        self
    }
}
