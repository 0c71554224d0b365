//! [`FanOutConfig`]: which delivery targets (LDS, SE) are told, and where.

use serde::{Deserialize, Serialize};

/// Default LDS sync URL template.
pub const DEFAULT_LDS_SYNC_URL: &str = "{lds_url}/sync";
/// Default SE sync URL template.
pub const DEFAULT_SE_SYNC_URL: &str = "{se_url}/sync_content";

/// The fan-out part of [`LabletSyncConfig`](crate::LabletSyncConfig). A target
/// whose base URL is unset is not called.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FanOutConfig {
    /// Base URL of LDS (`LABLET_LDS_URL`); unset = LDS is not notified.
    pub lds_url: Option<String>,
    /// LDS sync URL template (`LABLET_LDS_SYNC_URL`).
    pub lds_sync_url: String,
    /// Base URL of SE (`LABLET_SE_URL`); unset = SE is not notified.
    pub se_url: Option<String>,
    /// SE sync URL template (`LABLET_SE_SYNC_URL`).
    pub se_sync_url: String,
}

impl Default for FanOutConfig {
    fn default() -> Self {
        Self {
            lds_url: None,
            lds_sync_url: DEFAULT_LDS_SYNC_URL.to_owned(),
            se_url: None,
            se_sync_url: DEFAULT_SE_SYNC_URL.to_owned(),
        }
    }
}

impl FanOutConfig {
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

    /// The configured targets: `(name, base URL, sync URL template)`.
    pub(crate) fn targets(&self) -> impl Iterator<Item = (&'static str, &str, &str)> {
        [
            ("lds", &self.lds_url, &self.lds_sync_url),
            ("se", &self.se_url, &self.se_sync_url),
        ]
        .into_iter()
        .filter_map(|(target, base, tpl)| Some((target, base.as_deref()?, tpl.as_str())))
    }
}
