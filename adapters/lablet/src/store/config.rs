//! [`StoreConfig`]: where package bytes go (`file://` or `s3://`), under which
//! key, and the S3 overrides of the `AWS_*` variables.

use serde::{Deserialize, Serialize};

use cfgsync_core::Secret;

/// Default location: prefix per lablet in the store's bucket.
pub const DEFAULT_LOCATION: &str = "{bucket}/lablets/{name}/package.zip";
/// Bucket-per-lablet location.
pub const BUCKET_PER_LABLET_LOCATION: &str = "lablet-{slug}/package.zip";

/// The store part of [`LabletSyncConfig`](crate::LabletSyncConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Store URL (`LABLET_STORE`): `file:///dir` or `s3://bucket[/prefix]`;
    /// unset = `file://{data_dir}/store`.
    pub url: Option<String>,
    /// Location template (`LABLET_LOCATION`): `BUCKET/KEY` with `{bucket}` (the store's
    /// bucket), `{name}`, `{slug}` and `{sha256}`. Default
    /// `{bucket}/lablets/{name}/package.zip`; `lablet-{slug}/package.zip` gives a
    /// bucket per lablet (S3 only).
    pub location: String,
    /// S3 overrides of the `AWS_*` variables.
    pub s3: S3Options,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            location: DEFAULT_LOCATION.to_owned(),
            s3: S3Options::default(),
        }
    }
}

impl StoreConfig {
    /// Builder: store URL (`file:///dir` or `s3://bucket[/prefix]`).
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = Some(url.into());
        self
    }

    /// Builder: location template.
    pub fn with_location(mut self, template: impl Into<String>) -> Self {
        self.location = template.into();
        self
    }

    /// Builder: S3 overrides.
    pub fn with_s3(mut self, s3: S3Options) -> Self {
        self.s3 = s3;
        self
    }
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
    /// Secret access key; else `AWS_SECRET_ACCESS_KEY`. Never serialized.
    #[serde(skip_serializing)]
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
