//! The digest sidecar of an S3 object: `KEY.sha256.json`, written after the
//! object is complete, because an overlapped upload learns the package's SHA-256
//! only after its multipart upload was created (when S3 fixes the object's
//! metadata).
//!
//! The sidecar names the object's S3 ETag, and vouches for the object only while
//! that ETag (and size) is still the object's: a sidecar left over from an older
//! object, or one not yet rewritten after a new object completed, describes
//! nothing, so a reader never trusts a digest for bytes it does not describe.

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use super::{StoreError, os_err};

/// Suffix of a sidecar's key: `lablets/LAB-1/package.zip.sha256.json`.
pub const SIDECAR_SUFFIX: &str = ".sha256.json";

/// The contents of `KEY.sha256.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sidecar {
    /// SHA-256 (lower-case hex) of the object's bytes.
    pub(crate) sha256: String,
    /// Object size in bytes.
    pub(crate) size: u64,
    /// The S3 ETag of the object described.
    pub(crate) object_etag: String,
    /// The `ETag` Mosaic sent with the package, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream_etag: Option<String>,
    /// The `Last-Modified` Mosaic sent with the package, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstream_last_modified: Option<String>,
}

impl Sidecar {
    /// Whether this sidecar describes the object with `etag` and `size`.
    pub(crate) fn describes(&self, etag: Option<&str>, size: u64) -> bool {
        etag == Some(self.object_etag.as_str()) && size == self.size && is_sha256(&self.sha256)
    }
}

/// A lower-case hex SHA-256.
pub(crate) fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The sidecar key of object `key`.
pub(crate) fn sidecar_path(key: &str) -> Path {
    Path::from(format!("{key}{SIDECAR_SUFFIX}"))
}

/// The sidecar of `key`, `None` when missing or unreadable as one (a reader then
/// knows no digest, so the object is uploaded again: the safe side).
pub(crate) async fn read(
    store: &dyn ObjectStore,
    key: &str,
    url: &str,
) -> Result<Option<Sidecar>, StoreError> {
    let path = sidecar_path(key);
    match store.get(&path).await {
        Ok(result) => {
            let bytes = result.bytes().await.map_err(os_err("read sidecar", url))?;
            Ok(serde_json::from_slice(&bytes).ok())
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(os_err("read sidecar", url)(e)),
    }
}

/// Write the sidecar of `key` (a single small PUT, atomic on S3).
pub(crate) async fn write(
    store: &dyn ObjectStore,
    key: &str,
    url: &str,
    sidecar: &Sidecar,
) -> Result<(), StoreError> {
    let json = serde_json::to_vec(sidecar).map_err(|e| StoreError::Io {
        what: format!("encode the sidecar of {url}"),
        source: e.into(),
    })?;
    store
        .put(&sidecar_path(key), PutPayload::from(json))
        .await
        .map(|_| ())
        .map_err(os_err("write sidecar", url))
}
