//! Typed configuration: [`LabletSyncConfig`], composed of one part per service
//! (resolver, Mosaic, store, fan-out, catalog) plus the HTTP settings they share,
//! with defaults, `with_*` builders and `from_env()`.

use std::path::PathBuf;
use std::time::Duration;

use cfgsync_core::Secret;
use cfgsync_runtime::settings::{
    self, Setting, SettingError, parse_bytes, parse_http_url, parse_millis, parse_number,
    parse_secs,
};
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

type S = Setting<LabletSyncConfig>;

/// Every `LABLET_*` setting of [`LabletSyncConfig`], declared once: the
/// variable, the `lablet-sync` flag, the default shown in `--help`, and how a
/// value is parsed. [`LabletSyncConfig::from_env`] reads this table;
/// `lablet-sync` builds its flags from it. To add a setting, add one row.
pub const LABLET_SETTINGS: &[Setting<LabletSyncConfig>] = &[
    S::new(
        "LABLET_RESOLVER_URL",
        "--resolver-url",
        "URL",
        "Base URL of the form-environment-resolver",
        |c, v| {
            c.resolver.url = parse_http_url(v)?;
            Ok(())
        },
    )
    .default("http://127.0.0.1:8080"),
    S::new(
        "LABLET_RESOLVE_URL",
        "--resolve-url",
        "TEMPLATE",
        "Resolve URL template",
        |c, v| {
            v.clone_into(&mut c.resolver.resolve_url);
            Ok(())
        },
    )
    .default(DEFAULT_RESOLVE_URL),
    S::new(
        "LABLET_DOWNLOAD_URL",
        "--download-url",
        "TEMPLATE",
        "Package download URL template",
        |c, v| {
            v.clone_into(&mut c.mosaic.download_url);
            Ok(())
        },
    )
    .default(DEFAULT_DOWNLOAD_URL),
    S::new(
        "LABLET_MAX_PACKAGE_BYTES",
        "--max-package-bytes",
        "SIZE",
        "Largest package downloaded (bytes, or 512MiB, 4GiB)",
        |c, v| {
            c.mosaic.max_package_bytes = parse_bytes(v)?;
            Ok(())
        },
    )
    .default("4GiB"),
    S::new(
        "LABLET_LDS_URL",
        "--lds-url",
        "URL",
        "Base URL of LDS; unset: LDS is not notified",
        |c, v| {
            c.fanout.lds_url = Some(parse_http_url(v)?);
            Ok(())
        },
    ),
    S::new(
        "LABLET_LDS_SYNC_URL",
        "--lds-sync-url",
        "TEMPLATE",
        "LDS sync URL template",
        |c, v| {
            v.clone_into(&mut c.fanout.lds_sync_url);
            Ok(())
        },
    )
    .default(DEFAULT_LDS_SYNC_URL),
    S::new(
        "LABLET_SE_URL",
        "--se-url",
        "URL",
        "Base URL of SE; unset: SE is not notified",
        |c, v| {
            c.fanout.se_url = Some(parse_http_url(v)?);
            Ok(())
        },
    ),
    S::new(
        "LABLET_SE_SYNC_URL",
        "--se-sync-url",
        "TEMPLATE",
        "SE sync URL template",
        |c, v| {
            v.clone_into(&mut c.fanout.se_sync_url);
            Ok(())
        },
    )
    .default(DEFAULT_SE_SYNC_URL),
    S::new(
        "LABLET_CATALOG",
        "--catalog",
        "KIND",
        "Catalog that records results: embedded, cpa or object (JSON objects in the S3 store)",
        |c, v| {
            c.catalog.kind = match v.trim() {
                "embedded" => CatalogKind::Embedded,
                "cpa" => CatalogKind::Cpa,
                "object" => CatalogKind::Object,
                _ => return Err("expected `embedded`, `cpa` or `object`".into()),
            };
            Ok(())
        },
    )
    .default("embedded"),
    S::new(
        "LABLET_CATALOG_PREFIX",
        "--catalog-prefix",
        "PREFIX",
        "Key prefix of the object catalog's definitions, under the store's prefix",
        |c, v| {
            v.clone_into(&mut c.catalog.object_prefix);
            Ok(())
        },
    )
    .default("_catalog/"),
    S::new(
        "LABLET_CATALOG_POLL_SECS",
        "--catalog-poll-secs",
        "DURATION",
        "Least time between two listings of CPA that serve makes to notice records made elsewhere",
        |c, v| {
            c.catalog.poll_secs = parse_secs(v)?.max(1);
            Ok(())
        },
    )
    .default("1"),
    S::new(
        "LABLET_CPA_URL",
        "--cpa-url",
        "URL",
        "Base URL of CPA (required for the cpa catalog)",
        |c, v| {
            c.catalog.cpa_url = Some(parse_http_url(v)?);
            Ok(())
        },
    ),
    S::new(
        "LABLET_CPA_TOKEN",
        "--cpa-token",
        "TOKEN",
        "Bearer token for CPA (never shown)",
        |c, v| {
            c.catalog.cpa_token = Some(Secret::new(v));
            Ok(())
        },
    )
    .secret(),
    S::new(
        "LABLET_CPA_RECORD_URL",
        "--cpa-record-url",
        "TEMPLATE",
        "CPA record URL template",
        |c, v| {
            v.clone_into(&mut c.catalog.cpa_record_url);
            Ok(())
        },
    )
    .default(DEFAULT_RECORD_URL),
    S::new(
        "LABLET_CPA_DEFINITION_URL",
        "--cpa-definition-url",
        "TEMPLATE",
        "CPA definition URL template",
        |c, v| {
            v.clone_into(&mut c.catalog.cpa_definition_url);
            Ok(())
        },
    )
    .default(DEFAULT_DEFINITION_URL),
    S::new(
        "LABLET_CPA_LIST_URL",
        "--cpa-list-url",
        "TEMPLATE",
        "CPA list URL template",
        |c, v| {
            v.clone_into(&mut c.catalog.cpa_list_url);
            Ok(())
        },
    )
    .default(DEFAULT_LIST_URL),
    S::new(
        "LABLET_ID_TEMPLATE",
        "--id-template",
        "TEMPLATE",
        "Definition id template",
        |c, v| {
            v.clone_into(&mut c.catalog.id_template);
            Ok(())
        },
    )
    .default("{name}"),
    S::new(
        "LABLET_STORE",
        "--store",
        "URL",
        "Package store: file:///DIR or s3://BUCKET[/PREFIX]",
        |c, v| {
            let scheme = v.split_once("://").map(|(scheme, _)| scheme);
            if !matches!(scheme, Some("file" | "s3")) {
                return Err("expected file:///DIR or s3://BUCKET[/PREFIX]".into());
            }
            c.store.url = Some(v.trim().to_owned());
            Ok(())
        },
    )
    .default("file://DATA_DIR/store"),
    S::new(
        "LABLET_LOCATION",
        "--location",
        "TEMPLATE",
        "Location template BUCKET/KEY (lablet-{slug}/package.zip: a bucket per lablet)",
        |c, v| {
            v.clone_into(&mut c.store.location);
            Ok(())
        },
    )
    .default(DEFAULT_LOCATION),
    S::new(
        "LABLET_S3_ENDPOINT",
        "--s3-endpoint",
        "URL",
        "S3 endpoint (RustFS, MinIO); credentials from AWS_*",
        |c, v| {
            c.store.s3.endpoint = Some(parse_http_url(v)?);
            Ok(())
        },
    )
    .default("AWS_ENDPOINT_URL"),
    S::new(
        "LABLET_DATA_DIR",
        "--data-dir",
        "DIR",
        "Work directory: temp downloads, locks, catalog, retry queue",
        |c, v| {
            c.data_dir = PathBuf::from(v);
            Ok(())
        },
    )
    .default(".lablet-sync"),
    S::new(
        "LABLET_LOCK_DIR",
        "--lock-dir",
        "DIR",
        "Per-lablet lock files (share it between processes)",
        |c, v| {
            c.lock_dir = Some(PathBuf::from(v));
            Ok(())
        },
    )
    .default("DATA_DIR/locks"),
    S::new(
        "LABLET_LEASE_TTL_SECS",
        "--lease-ttl-secs",
        "DURATION",
        "S3 stores: lease time-to-live of a sync on its storage key (renewed every third of it)",
        |c, v| {
            let secs = parse_secs(v)?;
            if secs == 0 {
                return Err("must be at least 1 second".into());
            }
            c.lease.ttl_secs = secs;
            Ok(())
        },
    )
    .default("30"),
    S::new(
        "LABLET_LOCK_WAIT_SECS",
        "--lock-wait-secs",
        "DURATION",
        "How long a sync waits for a storage key another sync holds before failing as busy",
        |c, v| {
            c.lease.wait_secs = parse_secs(v)?;
            Ok(())
        },
    )
    .default("300"),
    S::new(
        "LABLET_CONNECT_TIMEOUT_SECS",
        "--connect-timeout-secs",
        "DURATION",
        "HTTP connect timeout (every service, S3 included): seconds, or 10s, 1m",
        |c, v| {
            c.http.connect_timeout_secs = at_least_one(parse_secs(v)?)?;
            Ok(())
        },
    )
    .default("10"),
    S::new(
        "LABLET_READ_TIMEOUT_SECS",
        "--read-timeout-secs",
        "DURATION",
        "HTTP read timeout between bytes: seconds, or 60s, 2m",
        |c, v| {
            c.http.read_timeout_secs = at_least_one(parse_secs(v)?)?;
            Ok(())
        },
    )
    .default("60"),
    S::new(
        "LABLET_RETRY_ATTEMPTS",
        "--retry-attempts",
        "N",
        "Attempts per HTTP call, the first included",
        |c, v| {
            c.http.retry.max_attempts = at_least_one(parse_number(v)?)?;
            Ok(())
        },
    )
    .default("3"),
    S::new(
        "LABLET_RETRY_BACKOFF_MS",
        "--retry-backoff-ms",
        "DURATION",
        "First retry backoff: milliseconds, or 200ms, 1s",
        |c, v| {
            c.http.retry.initial_backoff_ms = parse_millis(v)?;
            Ok(())
        },
    )
    .default("200"),
    S::new(
        "LABLET_RETRY_MAX_BACKOFF_MS",
        "--retry-max-backoff-ms",
        "DURATION",
        "Longest retry backoff: milliseconds, or 5s",
        |c, v| {
            c.http.retry.max_backoff_ms = parse_millis(v)?;
            Ok(())
        },
    )
    .default("5000"),
    S::new(
        "LABLET_MAX_ENTRIES",
        "--max-entries",
        "N",
        "Inspect: most zip entries",
        |c, v| {
            c.inspect.max_entries = parse_number(v)?;
            Ok(())
        },
    )
    .default("100000"),
    S::new(
        "LABLET_MAX_ENTRY_BYTES",
        "--max-entry-bytes",
        "SIZE",
        "Inspect: most bytes read from one entry (bytes, or 8MiB)",
        |c, v| {
            c.inspect.max_read_entry_bytes = parse_bytes(v)?;
            Ok(())
        },
    )
    .default("8MiB"),
];

fn at_least_one<T: PartialOrd + From<u8>>(n: T) -> Result<T, String> {
    if n < T::from(1) {
        return Err("expected at least 1".into());
    }
    Ok(n)
}

impl From<SettingError> for ConfigError {
    fn from(e: SettingError) -> Self {
        Self::new(e.name, format!("invalid value {:?}: {}", e.value, e.reason))
    }
}

impl LabletSyncConfig {
    /// Defaults overridden by the `LABLET_*` variables of [`LABLET_SETTINGS`]
    /// (see the crate README); an empty variable counts as unset.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_values(settings::from_process_env())
    }

    /// Like [`LabletSyncConfig::from_env`] with a custom variable lookup (tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::from_values(settings::from_vars(get))
    }

    /// Defaults overridden by the values `value_of` gives for the settings of
    /// [`LABLET_SETTINGS`] (e.g. `lablet-sync`'s parsed flags, through
    /// `cfgsync_runtime::settings::cli::values`); a bad value is named as
    /// given (flag or variable).
    pub fn from_values(
        value_of: impl Fn(&Setting<Self>) -> Option<settings::Given>,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        settings::apply_settings(&mut config, LABLET_SETTINGS, value_of)?;
        Ok(config)
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
    use std::collections::HashMap;

    #[test]
    fn the_defaults_shown_in_help_are_the_defaults_in_effect() {
        // Defaults that describe rather than give a value.
        let described = ["LABLET_STORE", "LABLET_S3_ENDPOINT", "LABLET_LOCK_DIR"];
        for setting in LABLET_SETTINGS {
            let Some(shown) = setting.default else {
                continue;
            };
            if described.contains(&setting.var) {
                continue;
            }
            let mut config = LabletSyncConfig::default();
            (setting.apply)(&mut config, shown).unwrap();
            assert_eq!(config, LabletSyncConfig::default(), "{}", setting.var);
        }
    }

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
