//! [`ResolverConfig`]: where the form-environment-resolver answers.

use serde::{Deserialize, Serialize};

/// Default resolve URL template.
pub const DEFAULT_RESOLVE_URL: &str = "{resolver_url}/resolve/{name}";

/// The resolver part of [`LabletSyncConfig`](crate::LabletSyncConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResolverConfig {
    /// Base URL of the form-environment-resolver (`LABLET_RESOLVER_URL`), the
    /// `{resolver_url}` placeholder.
    pub url: String,
    /// Resolve URL template (`LABLET_RESOLVE_URL`).
    pub resolve_url: String,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080".to_owned(),
            resolve_url: DEFAULT_RESOLVE_URL.to_owned(),
        }
    }
}

impl ResolverConfig {
    /// Builder: base URL.
    pub fn with_url(mut self, url: impl Into<String>) -> Self {
        self.url = url.into();
        self
    }

    /// Builder: resolve URL template.
    pub fn with_resolve_url(mut self, template: impl Into<String>) -> Self {
        self.resolve_url = template.into();
        self
    }
}
