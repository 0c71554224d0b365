//! The S3 multipart uploads this data directory has started and not finished.
//!
//! An upload is written down before its first part and struck off once it is
//! completed or aborted. A process killed in between (`kill -9`, a power cut)
//! leaves the entry behind, and the next sync of that lablet, holding the
//! lablet's lock, aborts the upload, so its parts stop taking space in the
//! bucket instead of waiting for a lifecycle rule.

use std::path::Path;
use std::sync::Arc;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::db::{DbFile, DbStore, Table};

const UPLOADS: Table = TableDefinition::new("open_multipart_uploads");

/// One multipart upload that was started and not yet completed or aborted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OpenUpload {
    /// The lablet whose package it carries.
    pub(crate) lablet: String,
    /// Bucket of the upload.
    pub(crate) bucket: String,
    /// Object key of the upload.
    pub(crate) key: String,
    /// S3's upload id.
    pub(crate) upload_id: String,
}

/// The durable list of open uploads (`DATA_DIR/uploads.redb`).
#[derive(Debug, Clone)]
pub(crate) struct UploadJournal {
    db: Arc<DbFile>,
}

impl UploadJournal {
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let this = Self {
            db: Arc::new(DbFile::new(path)),
        };
        this.create_table(UPLOADS)?;
        Ok(this)
    }

    /// Writes `upload` down (committed and fsynced before it returns).
    pub(crate) async fn add(&self, upload: &OpenUpload) -> Result<(), StoreError> {
        let json = serde_json::to_string(upload).map_err(|e| StoreError::Io {
            what: "encode an upload journal entry".to_owned(),
            source: e.into(),
        })?;
        self.put_row(UPLOADS, upload.upload_id.clone(), json).await
    }

    /// Strikes `upload_id` off.
    pub(crate) async fn remove(&self, upload_id: &str) -> Result<(), StoreError> {
        self.remove_row(UPLOADS, upload_id.to_owned()).await
    }

    /// The open uploads of `lablet`.
    pub(crate) async fn of_lablet(&self, lablet: &str) -> Result<Vec<OpenUpload>, StoreError> {
        Ok(self
            .rows(UPLOADS)
            .await?
            .into_iter()
            // An entry that does not decode cannot be acted on; skip it.
            .filter_map(|(_, value)| serde_json::from_str::<OpenUpload>(&value).ok())
            .filter(|upload| upload.lablet == lablet)
            .collect())
    }
}

impl DbStore for UploadJournal {
    type Error = StoreError;

    fn file(&self) -> &DbFile {
        &self.db
    }

    fn db_error(path: &Path, source: redb::Error) -> StoreError {
        StoreError::Io {
            what: format!("upload journal {}", path.display()),
            source: std::io::Error::other(source),
        }
    }

    fn task_error(source: tokio::task::JoinError) -> StoreError {
        StoreError::Io {
            what: "upload journal task".to_owned(),
            source: std::io::Error::other(source),
        }
    }
}
