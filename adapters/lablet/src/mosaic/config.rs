//! [`MosaicConfig`]: where packages are downloaded from, and how large they may be.

use serde::{Deserialize, Serialize};

/// Default download URL template.
pub const DEFAULT_DOWNLOAD_URL: &str = "{MOSAIC_BASE_URL}/package.zip";

/// The Mosaic part of [`LabletSyncConfig`](crate::LabletSyncConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MosaicConfig {
    /// Package download URL template (`LABLET_DOWNLOAD_URL`).
    pub download_url: String,
    /// Largest package accepted, in bytes (`LABLET_MAX_PACKAGE_BYTES`, default 4 GiB).
    pub max_package_bytes: u64,
}

impl Default for MosaicConfig {
    fn default() -> Self {
        Self {
            download_url: DEFAULT_DOWNLOAD_URL.to_owned(),
            max_package_bytes: 4 * 1024 * 1024 * 1024,
        }
    }
}

impl MosaicConfig {
    /// Builder: download URL template.
    pub fn with_download_url(mut self, template: impl Into<String>) -> Self {
        self.download_url = template.into();
        self
    }

    /// Builder: largest package accepted.
    pub fn with_max_package_bytes(mut self, bytes: u64) -> Self {
        self.max_package_bytes = bytes;
        self
    }
}
