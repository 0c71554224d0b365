//! Typed configuration: [`LabletSyncConfig`], with defaults and `from_env()`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inspect::InspectLimits;
use crate::retry::RetryPolicy;
use cfgsync_core::Secret;

/// Default resolve URL template.
pub const DEFAULT_RESOLVE_URL: &str = "{resolver_url}/resolve/{name}";
/// Default download URL template.
pub const DEFAULT_DOWNLOAD_URL: &str = "{MOSAIC_BASE_URL}/package.zip";
/// Default LDS sync URL template.
pub const DEFAULT_LDS_SYNC_URL: &str = "{lds_url}/sync";
/// Default SE sync URL template.
pub const DEFAULT_SE_SYNC_URL: &str = "{se_url}/sync_content";
/// Default CPA record URL template.
pub const DEFAULT_RECORD_URL: &str =
    "{cpa_url}/api/internal/lablet-definitions/{id}/content-synced";
/// Default CPA definition URL template (our assumed read contract).
pub const DEFAULT_DEFINITION_URL: &str = "{cpa_url}/api/internal/lablet-definitions/{id}";
/// Default CPA list URL template (our assumed list contract).
pub const DEFAULT_LIST_URL: &str = "{cpa_url}/api/internal/lablet-definitions";
/// Default location: prefix per lablet in the store's bucket.
pub const DEFAULT_LOCATION: &str = "{bucket}/lablets/{name}/package.zip";
/// Bucket-per-lablet location.
pub const BUCKET_PER_LABLET_LOCATION: &str = "lablet-{slug}/package.zip";

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
}

/// S3 settings that override the standard `AWS_*` variables.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Options {
    /// Endpoint override (RustFS/MinIO); else `AWS_ENDPOINT_URL` / `AWS_ENDPOINT`.
    pub endpoint: Option<String>,
    /// Region; else `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Access key id; else `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// Secret access key; else `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// Allow plain `http://` endpoints; else `AWS_ALLOW_HTTP`. Always allowed for a
    /// loopback endpoint.
    pub allow_http: Option<bool>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &self.secret_access_key)
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// Configuration of one [`LabletSync`](crate::LabletSync).
///
/// URL fields ending in `_url` that hold templates accept `{name}` (the lablet),
/// `{id}` (the definition id), `{resolver_url}`, `{lds_url}`, `{se_url}`,
/// `{cpa_url}` and, after resolve, every resolved variable such as
/// `{MOSAIC_BASE_URL}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabletSyncConfig {
    /// Base URL of the form-environment-resolver (`LABLET_RESOLVER_URL`).
    pub resolver_url: String,
    /// Resolve URL template (`LABLET_RESOLVE_URL`).
    pub resolve_url: String,
    /// Package download URL template (`LABLET_DOWNLOAD_URL`).
    pub download_url: String,
    /// Base URL of LDS (`LABLET_LDS_URL`); unset = LDS is not notified.
    pub lds_url: Option<String>,
    /// LDS sync URL template (`LABLET_LDS_SYNC_URL`).
    pub lds_sync_url: String,
    /// Base URL of SE (`LABLET_SE_URL`); unset = SE is not notified.
    pub se_url: Option<String>,
    /// SE sync URL template (`LABLET_SE_SYNC_URL`).
    pub se_sync_url: String,
    /// Catalog kind (`LABLET_CATALOG` = `embedded` | `cpa`).
    pub catalog: CatalogKind,
    /// Base URL of CPA (`LABLET_CPA_URL`), needed for `catalog = cpa`.
    pub cpa_url: Option<String>,
    /// Bearer token for CPA (`LABLET_CPA_TOKEN`).
    pub cpa_token: Option<Secret>,
    /// CPA record URL template (`LABLET_CPA_RECORD_URL`).
    pub cpa_record_url: String,
    /// CPA definition URL template (`LABLET_CPA_DEFINITION_URL`).
    pub cpa_definition_url: String,
    /// CPA list URL template (`LABLET_CPA_LIST_URL`).
    pub cpa_list_url: String,
    /// Definition id template (`LABLET_ID_TEMPLATE`, default `{name}`).
    pub id_template: String,
    /// Store URL (`LABLET_STORE`): `file:///dir` or `s3://bucket[/prefix]`;
    /// unset = `file://{data_dir}/store`.
    pub store: Option<String>,
    /// Location template (`LABLET_LOCATION`): `BUCKET/KEY` with `{bucket}` (the store's
    /// bucket), `{name}` and `{slug}`. Default `{bucket}/lablets/{name}/package.zip`;
    /// `lablet-{slug}/package.zip` gives a bucket per lablet (S3 only).
    pub location: String,
    /// Work directory: temp downloads, locks, embedded catalog, retry queue
    /// (`LABLET_DATA_DIR`, default `.lablet-sync`).
    pub data_dir: PathBuf,
    /// Directory of the per-lablet lock files (`LABLET_LOCK_DIR`, default
    /// `{data_dir}/locks`). Point several processes with their own data dirs at one
    /// shared lock dir to serialize syncs of a lablet across them.
    pub lock_dir: Option<PathBuf>,
    /// Largest package accepted, in bytes (`LABLET_MAX_PACKAGE_BYTES`, default 4 GiB).
    pub max_package_bytes: u64,
    /// HTTP connect timeout in seconds (`LABLET_CONNECT_TIMEOUT_SECS`, default 10).
    pub connect_timeout_secs: u64,
    /// HTTP read timeout (between bytes) in seconds (`LABLET_READ_TIMEOUT_SECS`,
    /// default 60).
    pub read_timeout_secs: u64,
    /// Retries of HTTP calls (`LABLET_RETRY_ATTEMPTS`, `LABLET_RETRY_BACKOFF_MS`,
    /// `LABLET_RETRY_MAX_BACKOFF_MS`).
    pub retry: RetryPolicy,
    /// Inspect limits (`LABLET_MAX_ENTRIES`, `LABLET_MAX_ENTRY_BYTES`).
    pub inspect: InspectLimits,
    /// S3 overrides of the `AWS_*` variables.
    pub s3: S3Options,
}

impl Default for LabletSyncConfig {
    fn default() -> Self {
        Self {
            resolver_url: "http://127.0.0.1:8080".to_owned(),
            resolve_url: DEFAULT_RESOLVE_URL.to_owned(),
            download_url: DEFAULT_DOWNLOAD_URL.to_owned(),
            lds_url: None,
            lds_sync_url: DEFAULT_LDS_SYNC_URL.to_owned(),
            se_url: None,
            se_sync_url: DEFAULT_SE_SYNC_URL.to_owned(),
            catalog: CatalogKind::Embedded,
            cpa_url: None,
            cpa_token: None,
            cpa_record_url: DEFAULT_RECORD_URL.to_owned(),
            cpa_definition_url: DEFAULT_DEFINITION_URL.to_owned(),
            cpa_list_url: DEFAULT_LIST_URL.to_owned(),
            id_template: "{name}".to_owned(),
            store: None,
            location: DEFAULT_LOCATION.to_owned(),
            data_dir: PathBuf::from(".lablet-sync"),
            lock_dir: None,
            max_package_bytes: 4 * 1024 * 1024 * 1024,
            connect_timeout_secs: 10,
            read_timeout_secs: 60,
            retry: RetryPolicy::default(),
            inspect: InspectLimits::default(),
            s3: S3Options::default(),
        }
    }
}

/// A configuration value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// The variable or field.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl LabletSyncConfig {
    /// Defaults overridden by the `LABLET_*` variables (see the crate README).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`LabletSyncConfig::from_env`] with a custom variable lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let s = |key: &str| get(key).filter(|v| !v.is_empty());
        if let Some(v) = s("LABLET_RESOLVER_URL") {
            c.resolver_url = v;
        }
        if let Some(v) = s("LABLET_RESOLVE_URL") {
            c.resolve_url = v;
        }
        if let Some(v) = s("LABLET_DOWNLOAD_URL") {
            c.download_url = v;
        }
        c.lds_url = s("LABLET_LDS_URL");
        if let Some(v) = s("LABLET_LDS_SYNC_URL") {
            c.lds_sync_url = v;
        }
        c.se_url = s("LABLET_SE_URL");
        if let Some(v) = s("LABLET_SE_SYNC_URL") {
            c.se_sync_url = v;
        }
        if let Some(v) = s("LABLET_CATALOG") {
            c.catalog = match v.as_str() {
                "embedded" => CatalogKind::Embedded,
                "cpa" => CatalogKind::Cpa,
                other => {
                    return Err(ConfigError::new(
                        "LABLET_CATALOG",
                        format!("expected `embedded` or `cpa`, got {other:?}"),
                    ));
                }
            };
        }
        c.cpa_url = s("LABLET_CPA_URL");
        c.cpa_token = s("LABLET_CPA_TOKEN").map(Secret::new);
        if let Some(v) = s("LABLET_CPA_RECORD_URL") {
            c.cpa_record_url = v;
        }
        if let Some(v) = s("LABLET_CPA_DEFINITION_URL") {
            c.cpa_definition_url = v;
        }
        if let Some(v) = s("LABLET_CPA_LIST_URL") {
            c.cpa_list_url = v;
        }
        if let Some(v) = s("LABLET_ID_TEMPLATE") {
            c.id_template = v;
        }
        c.store = s("LABLET_STORE");
        if let Some(v) = s("LABLET_LOCATION") {
            c.location = v;
        }
        if let Some(v) = s("LABLET_DATA_DIR") {
            c.data_dir = PathBuf::from(v);
        }
        c.lock_dir = s("LABLET_LOCK_DIR").map(PathBuf::from);
        let num = |key: &str| -> Result<Option<u64>, ConfigError> {
            s(key)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|e| ConfigError::new(key, format!("not a number ({e}): {v:?}")))
                })
                .transpose()
        };
        if let Some(v) = num("LABLET_MAX_PACKAGE_BYTES")? {
            c.max_package_bytes = v;
        }
        if let Some(v) = num("LABLET_CONNECT_TIMEOUT_SECS")? {
            c.connect_timeout_secs = v;
        }
        if let Some(v) = num("LABLET_READ_TIMEOUT_SECS")? {
            c.read_timeout_secs = v;
        }
        if let Some(v) = num("LABLET_RETRY_ATTEMPTS")? {
            c.retry.max_attempts = usize::try_from(v).unwrap_or(usize::MAX).max(1);
        }
        if let Some(v) = num("LABLET_RETRY_BACKOFF_MS")? {
            c.retry.initial_backoff_ms = v;
        }
        if let Some(v) = num("LABLET_RETRY_MAX_BACKOFF_MS")? {
            c.retry.max_backoff_ms = v;
        }
        if let Some(v) = num("LABLET_MAX_ENTRIES")? {
            c.inspect.max_entries = usize::try_from(v).unwrap_or(usize::MAX);
        }
        if let Some(v) = num("LABLET_MAX_ENTRY_BYTES")? {
            c.inspect.max_read_entry_bytes = v;
        }
        c.s3.endpoint = s("LABLET_S3_ENDPOINT");
        Ok(c)
    }

    /// Builder: resolver base URL.
    pub fn with_resolver_url(mut self, url: impl Into<String>) -> Self {
        self.resolver_url = url.into();
        self
    }

    /// Builder: LDS base URL.
    pub fn with_lds_url(mut self, url: impl Into<String>) -> Self {
        self.lds_url = Some(url.into());
        self
    }

    /// Builder: SE base URL.
    pub fn with_se_url(mut self, url: impl Into<String>) -> Self {
        self.se_url = Some(url.into());
        self
    }

    /// Builder: CPA base URL, and select the CPA catalog.
    pub fn with_cpa_url(mut self, url: impl Into<String>) -> Self {
        self.cpa_url = Some(url.into());
        self.catalog = CatalogKind::Cpa;
        self
    }

    /// Builder: store URL (`file:///dir` or `s3://bucket[/prefix]`).
    pub fn with_store(mut self, url: impl Into<String>) -> Self {
        self.store = Some(url.into());
        self
    }

    /// Builder: location template.
    pub fn with_location(mut self, template: impl Into<String>) -> Self {
        self.location = template.into();
        self
    }

    /// Builder: work directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Builder: retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Builder: S3 overrides.
    pub fn with_s3(mut self, s3: S3Options) -> Self {
        self.s3 = s3;
        self
    }

    /// Builder: largest package accepted.
    pub fn with_max_package_bytes(mut self, bytes: u64) -> Self {
        self.max_package_bytes = bytes;
        self
    }

    /// The store URL in effect.
    pub fn store_url(&self) -> String {
        match &self.store {
            Some(url) => url.clone(),
            None => {
                let dir = self.data_dir.join("store");
                let dir = std::path::absolute(&dir).unwrap_or(dir);
                format!("file://{}", dir.display())
            }
        }
    }

    /// The HTTP client all stages share, with the configured connect and read
    /// timeouts.
    pub fn http_client(&self) -> reqwest::Result<reqwest::Client> {
        crate::http::client(
            Duration::from_secs(self.connect_timeout_secs.max(1)),
            Duration::from_secs(self.read_timeout_secs.max(1)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn from_env_reads_variables_and_hides_secrets() {
        let env = HashMap::from([
            ("LABLET_RESOLVER_URL", "http://r"),
            ("LABLET_CATALOG", "cpa"),
            ("LABLET_CPA_URL", "http://cpa"),
            ("LABLET_CPA_TOKEN", "tok-123"),
            ("LABLET_MAX_PACKAGE_BYTES", "1024"),
            ("LABLET_STORE", "s3://b/p"),
        ]);
        let c = LabletSyncConfig::from_lookup(|k| env.get(k).map(|v| (*v).to_owned())).unwrap();
        assert_eq!(c.resolver_url, "http://r");
        assert_eq!(c.catalog, CatalogKind::Cpa);
        assert_eq!(c.max_package_bytes, 1024);
        assert_eq!(c.store_url(), "s3://b/p");
        assert!(!format!("{c:?}").contains("tok-123"));
        let with_s3 = c.with_s3(S3Options {
            secret_access_key: Some(Secret::new("s3-secret-xyz")),
            ..S3Options::default()
        });
        let debug = format!("{with_s3:?}");
        assert!(
            !debug.contains("s3-secret-xyz") && debug.contains("***"),
            "{debug}"
        );

        let bad = HashMap::from([("LABLET_MAX_PACKAGE_BYTES", "lots")]);
        let err =
            LabletSyncConfig::from_lookup(|k| bad.get(k).map(|v| (*v).to_owned())).unwrap_err();
        assert_eq!(err.key, "LABLET_MAX_PACKAGE_BYTES");
    }
}
