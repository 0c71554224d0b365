//! [`SharedArea`]: the state kept in the store beside the packages, under
//! `_`-prefixed keys of the store's own bucket and prefix: key claims
//! (`_claims/`) on every store; leases (`_leases/`) and the retry queue
//! (`_queue/`) when the store is S3, so replicas on several machines share them.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::path::{Path, PathPart};

/// Where a store keeps its shared state.
#[derive(Clone)]
pub(crate) struct SharedArea {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    url: String,
    replicated: bool,
}

impl std::fmt::Debug for SharedArea {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedArea")
            .field("url", &self.url)
            .field("replicated", &self.replicated)
            .finish_non_exhaustive()
    }
}

impl SharedArea {
    /// The area under `prefix` of `store`; `url` names it in messages;
    /// `replicated`: replicas on other machines reach it too (S3).
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        prefix: impl Into<String>,
        url: impl Into<String>,
        replicated: bool,
    ) -> Self {
        Self {
            store,
            prefix: prefix.into().trim_matches('/').to_owned(),
            url: url.into().trim_end_matches('/').to_owned(),
            replicated,
        }
    }

    /// The key prefix of the area (the store URL's prefix, no slashes around).
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The object store holding the area.
    pub(crate) fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Whether replicas on other machines share it (an S3 store): leases and
    /// the retry queue live here then; on `file://` they stay local.
    pub(crate) fn replicated(&self) -> bool {
        self.replicated
    }

    /// The object at `relative` (`/`-separated; each part escaped as
    /// `object_store` needs, so `{` or `*` in a key are fine).
    pub(crate) fn path(&self, relative: &str) -> Path {
        let parts = self
            .prefix
            .split('/')
            .chain(relative.split('/'))
            .filter(|p| !p.is_empty())
            .map(PathPart::from);
        Path::from_iter(parts)
    }

    /// The URL of `path` for messages.
    pub(crate) fn url_of(&self, path: &Path) -> String {
        let relative = path.as_ref();
        let relative = relative
            .strip_prefix(self.prefix.as_str())
            .unwrap_or(relative)
            .trim_start_matches('/');
        format!("{}/{relative}", self.url)
    }
}
