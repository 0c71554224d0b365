//! Typed configuration: [`LabletSyncConfig`], composed of one part per service
//! (resolver, Mosaic, store, fan-out, catalog) plus the HTTP settings they share,
//! with defaults, `with_*` builders and `from_env()`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::catalog::{
    CatalogConfig, CatalogKind, DEFAULT_DEFINITION_URL, DEFAULT_LIST_URL, DEFAULT_RECORD_URL,
};
pub use crate::fanout::{DEFAULT_LDS_SYNC_URL, DEFAULT_SE_SYNC_URL, FanOutConfig};
pub use crate::inspect::InspectLimits;
pub use crate::mosaic::{DEFAULT_DOWNLOAD_URL, MosaicConfig};
pub use crate::resolver::{DEFAULT_RESOLVE_URL, ResolverConfig};
pub use crate::retry::RetryPolicy;
pub use crate::store::{BUCKET_PER_LABLET_LOCATION, DEFAULT_LOCATION, S3Options, StoreConfig};
pub use crate::template::TemplateError;

/// Configuration of one [`LabletSync`](crate::LabletSync): one part per service.
///
/// URL fields ending in `_url` that hold templates accept `{name}` (the lablet),
/// `{id}` (the definition id), `{resolver_url}`, `{lds_url}`, `{se_url}`,
/// `{cpa_url}` and, after resolve, every resolved variable such as
/// `{MOSAIC_BASE_URL}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabletSyncConfig {
    /// The form-environment-resolver.
    pub resolver: ResolverConfig,
    /// Mosaic's package download.
    pub mosaic: MosaicConfig,
    /// Where packages are stored.
    pub store: StoreConfig,
    /// The delivery targets LDS and SE.
    pub fanout: FanOutConfig,
    /// Where results are recorded.
    pub catalog: CatalogConfig,
    /// Timeouts and retries of every HTTP call (S3 included).
    pub http: HttpConfig,
    /// Inspect limits (`LABLET_MAX_ENTRIES`, `LABLET_MAX_ENTRY_BYTES`).
    pub inspect: InspectLimits,
    /// Work directory: temp downloads, locks, embedded catalog, retry queue and
    /// record outbox, upload journal (`LABLET_DATA_DIR`, default `.lablet-sync`).
    pub data_dir: PathBuf,
    /// Directory of the per-storage-key lock files of `file://` stores
    /// (`LABLET_LOCK_DIR`, default `{data_dir}/locks`). Point several processes
    /// with their own data dirs at one shared lock dir to serialize syncs of a
    /// lablet across them. S3 stores use leases in the store instead.
    pub lock_dir: Option<PathBuf>,
    /// Storage-key leases (S3 stores) and lock waits.
    pub lease: crate::lease::LeaseConfig,
}

impl Default for LabletSyncConfig {
    fn default() -> Self {
        Self {
            resolver: ResolverConfig::default(),
            mosaic: MosaicConfig::default(),
            store: StoreConfig::default(),
            fanout: FanOutConfig::default(),
            catalog: CatalogConfig::default(),
            http: HttpConfig::default(),
            inspect: InspectLimits::default(),
            data_dir: PathBuf::from(".lablet-sync"),
            lock_dir: None,
            lease: crate::lease::LeaseConfig::default(),
        }
    }
}

/// The HTTP settings every client shares (one `reqwest` client is built from
/// them and shared by all stages and drains; S3 calls follow them too).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Connect timeout in seconds (`LABLET_CONNECT_TIMEOUT_SECS`, default 10).
    pub connect_timeout_secs: u64,
    /// Read timeout (between bytes) in seconds (`LABLET_READ_TIMEOUT_SECS`,
    /// default 60).
    pub read_timeout_secs: u64,
    /// Retries of every call (`LABLET_RETRY_ATTEMPTS`, `LABLET_RETRY_BACKOFF_MS`,
    /// `LABLET_RETRY_MAX_BACKOFF_MS`).
    pub retry: RetryPolicy,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout_secs: 10,
            read_timeout_secs: 60,
            retry: RetryPolicy::default(),
        }
    }
}

impl HttpConfig {
    /// Builder: retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Builder: connect and read timeouts (whole seconds, at least 1).
    pub fn with_timeouts(mut self, connect: Duration, read: Duration) -> Self {
        self.connect_timeout_secs = connect.as_secs();
        self.read_timeout_secs = read.as_secs();
        self
    }

    /// The connect timeout in effect (at least 1 s).
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs.max(1))
    }

    /// The read timeout in effect (at least 1 s).
    pub(crate) fn read_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout_secs.max(1))
    }

    fn from_lookup(env: &EnvLookup<'_>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        if let Some(v) = env.number("LABLET_CONNECT_TIMEOUT_SECS")? {
            c.connect_timeout_secs = v;
        }
        if let Some(v) = env.number("LABLET_READ_TIMEOUT_SECS")? {
            c.read_timeout_secs = v;
        }
        if let Some(v) = env.number("LABLET_RETRY_ATTEMPTS")? {
            c.retry.max_attempts = usize::try_from(v).unwrap_or(usize::MAX).max(1);
        }
        if let Some(v) = env.number("LABLET_RETRY_BACKOFF_MS")? {
            c.retry.initial_backoff_ms = v;
        }
        if let Some(v) = env.number("LABLET_RETRY_MAX_BACKOFF_MS")? {
            c.retry.max_backoff_ms = v;
        }
        Ok(c)
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

/// The `LABLET_*` variables as each part reads them: an empty value counts as
/// unset.
pub(crate) struct EnvLookup<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl EnvLookup<'_> {
    /// The value of `key`, when set and not empty.
    pub(crate) fn text(&self, key: &str) -> Option<String> {
        (self.get)(key).filter(|v| !v.is_empty())
    }

    /// Overwrites `target` with the value of `key`, when set.
    pub(crate) fn set(&self, key: &str, target: &mut String) {
        if let Some(v) = self.text(key) {
            *target = v;
        }
    }

    /// The value of `key` as a number, when set.
    pub(crate) fn number(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        self.text(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|e| ConfigError::new(key, format!("not a number ({e}): {v:?}")))
            })
            .transpose()
    }
}

fn inspect_from_lookup(env: &EnvLookup<'_>) -> Result<InspectLimits, ConfigError> {
    let mut c = InspectLimits::default();
    if let Some(v) = env.number("LABLET_MAX_ENTRIES")? {
        c.max_entries = usize::try_from(v).unwrap_or(usize::MAX);
    }
    if let Some(v) = env.number("LABLET_MAX_ENTRY_BYTES")? {
        c.max_read_entry_bytes = v;
    }
    Ok(c)
}

impl LabletSyncConfig {
    /// Defaults overridden by the `LABLET_*` variables (see the crate README).
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// Like [`LabletSyncConfig::from_env`] with a custom variable lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = EnvLookup { get: &get };
        // parts in the order their variables are checked
        let resolver = ResolverConfig::from_lookup(&env)?;
        let fanout = FanOutConfig::from_lookup(&env)?;
        let catalog = CatalogConfig::from_lookup(&env)?;
        let store = StoreConfig::from_lookup(&env)?;
        Ok(Self {
            resolver,
            fanout,
            catalog,
            store,
            data_dir: env
                .text("LABLET_DATA_DIR")
                .map_or_else(|| Self::default().data_dir, PathBuf::from),
            lock_dir: env.text("LABLET_LOCK_DIR").map(PathBuf::from),
            lease: crate::lease::LeaseConfig::from_lookup(&env)?,
            mosaic: MosaicConfig::from_lookup(&env)?,
            http: HttpConfig::from_lookup(&env)?,
            inspect: inspect_from_lookup(&env)?,
        })
    }

    /// Builder: resolver base URL.
    pub fn with_resolver_url(mut self, url: impl Into<String>) -> Self {
        self.resolver.url = url.into();
        self
    }

    /// Builder: LDS base URL.
    pub fn with_lds_url(mut self, url: impl Into<String>) -> Self {
        self.fanout.lds_url = Some(url.into());
        self
    }

    /// Builder: SE base URL.
    pub fn with_se_url(mut self, url: impl Into<String>) -> Self {
        self.fanout.se_url = Some(url.into());
        self
    }

    /// Builder: CPA base URL, and select the CPA catalog.
    pub fn with_cpa_url(mut self, url: impl Into<String>) -> Self {
        self.catalog = self.catalog.with_cpa_url(url);
        self
    }

    /// Builder: store URL (`file:///dir` or `s3://bucket[/prefix]`).
    pub fn with_store(mut self, url: impl Into<String>) -> Self {
        self.store.url = Some(url.into());
        self
    }

    /// Builder: location template.
    pub fn with_location(mut self, template: impl Into<String>) -> Self {
        self.store.location = template.into();
        self
    }

    /// Builder: work directory.
    pub fn with_data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = dir.into();
        self
    }

    /// Builder: retry policy of every HTTP call.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.http.retry = retry;
        self
    }

    /// Builder: S3 overrides.
    pub fn with_s3(mut self, s3: S3Options) -> Self {
        self.store.s3 = s3;
        self
    }

    /// Builder: largest package accepted.
    pub fn with_max_package_bytes(mut self, bytes: u64) -> Self {
        self.mosaic.max_package_bytes = bytes;
        self
    }

    /// The store URL in effect.
    pub fn store_url(&self) -> String {
        match &self.store.url {
            Some(url) => url.clone(),
            None => {
                let dir = self.data_dir.join("store");
                let dir = std::path::absolute(&dir).unwrap_or(dir);
                format!("file://{}", dir.display())
            }
        }
    }

    /// The lock directory in effect.
    pub(crate) fn lock_dir(&self) -> PathBuf {
        self.lock_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("locks"))
    }

    /// The HTTP client all stages share, with the configured connect and read
    /// timeouts.
    pub fn http_client(&self) -> reqwest::Result<reqwest::Client> {
        crate::http::client(self.http.connect_timeout(), self.http.read_timeout())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfgsync_core::Secret;
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
        assert_eq!(c.resolver.url, "http://r");
        assert_eq!(c.catalog.kind, CatalogKind::Cpa);
        assert_eq!(c.mosaic.max_package_bytes, 1024);
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
        // serialized, the config carries no secret at all (Secret has no
        // Serialize; the fields holding one are skipped)
        let json = serde_json::to_string(&with_s3).unwrap();
        assert!(
            !json.contains("s3-secret-xyz") && !json.contains("tok-123"),
            "{json}"
        );
        assert!(!json.contains("cpa_token") && !json.contains("secret_access_key"));

        let bad = HashMap::from([("LABLET_MAX_PACKAGE_BYTES", "lots")]);
        let err =
            LabletSyncConfig::from_lookup(|k| bad.get(k).map(|v| (*v).to_owned())).unwrap_err();
        assert_eq!(err.key, "LABLET_MAX_PACKAGE_BYTES");
    }
}
