use std::path::Path;
use std::sync::Arc;

use crate::db::{DbFile, DbStore, Table};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::{FanOutBody, QueueError};
use crate::catalog::ContentSyncResult;

const PENDING: Table = TableDefinition::new("pending_deliveries");
const RECORDS: Table = TableDefinition::new("pending_records");

/// A delivery waiting for its target to come back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedDelivery {
    /// `lds` or `se`.
    pub target: String,
    /// Definition id the delivery belongs to.
    pub definition_id: String,
    /// URL to POST to.
    pub url: String,
    /// Body to POST.
    pub body: FanOutBody,
    /// Attempts made so far.
    pub attempts: u32,
    /// Last error.
    pub last_error: String,
    /// When first queued (RFC 3339).
    pub queued_at: String,
}

impl QueuedDelivery {
    /// Queue key: one pending delivery per target and lablet (a newer one replaces
    /// an older one).
    pub fn key(&self) -> String {
        queue_key(&self.target, &self.body.lablet)
    }
}

/// A catalog record kept until it lands. A sync writes it down before the
/// store changes and strikes it off once the catalog took the record; when the
/// record failed (the catalog was down or refused it) or the run died after
/// the store, the drain records it — if the store holds its package — so the
/// catalog catches up with the store without a re-sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Definition id to record under.
    pub definition_id: String,
    /// What to record (the failed sync's result).
    pub content: ContentSyncResult,
    /// Attempts made so far.
    pub attempts: u32,
    /// Last error.
    pub last_error: String,
    /// When first queued (RFC 3339).
    pub queued_at: String,
}

impl PendingRecord {
    /// The lablet it belongs to (one pending record per lablet).
    pub fn lablet(&self) -> &str {
        &self.content.lablet
    }
}

/// Lablet names hold no `/` (see `validate_name`), so the prefix is exact.
fn record_key(lablet: &str, sha256: &str) -> String {
    format!("{lablet}/{sha256}")
}

fn queue_key(target: &str, lablet: &str) -> String {
    format!("{target}/{lablet}")
}

/// The durable retry queue: a `redb` file (each change is a committed, fsynced
/// transaction, so the queue survives a crash or restart), opened per operation so
/// several processes can share it.
#[derive(Debug, Clone)]
pub struct RetryQueue {
    db: Arc<DbFile>,
}

impl RetryQueue {
    /// Open (or create) the queue file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, QueueError> {
        let this = Self {
            db: Arc::new(DbFile::new(path)),
        };
        this.create_table(PENDING)?;
        this.create_table(RECORDS)?;
        Ok(this)
    }

    /// Add or replace the pending delivery for its target and lablet.
    pub async fn push(&self, delivery: QueuedDelivery) -> Result<(), QueueError> {
        let key = delivery.key();
        let json = serde_json::to_string(&delivery).map_err(|source| QueueError::Decode {
            key: key.clone(),
            source,
        })?;
        self.put_row(PENDING, key, json).await
    }

    /// Drop the pending delivery of `target` for `lablet`, if any.
    pub async fn remove(&self, target: &str, lablet: &str) -> Result<(), QueueError> {
        self.remove_row(PENDING, queue_key(target, lablet)).await
    }

    /// Keep `record` until it is recorded (one per lablet and package hash;
    /// a newer one of the same package replaces it).
    pub async fn push_record(&self, record: &PendingRecord) -> Result<(), QueueError> {
        let key = record_key(record.lablet(), &record.content.content_package_hash);
        let json = serde_json::to_string(record).map_err(|source| QueueError::Decode {
            key: key.clone(),
            source,
        })?;
        self.put_row(RECORDS, key, json).await
    }

    /// Drop the kept record of `lablet` for package `sha256`, if any.
    pub async fn remove_record(&self, lablet: &str, sha256: &str) -> Result<(), QueueError> {
        self.remove_row(RECORDS, record_key(lablet, sha256)).await
    }

    /// Drop every kept record of `lablet`.
    pub async fn remove_records_of(&self, lablet: &str) -> Result<(), QueueError> {
        let prefix = record_key(lablet, "");
        for (key, _) in self.rows(RECORDS).await? {
            if key.starts_with(&prefix) {
                self.remove_row(RECORDS, key).await?;
            }
        }
        Ok(())
    }

    /// All kept records, ordered by lablet.
    pub async fn pending_records(&self) -> Result<Vec<PendingRecord>, QueueError> {
        self.rows(RECORDS)
            .await?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_str(&value).map_err(|source| QueueError::Decode { key, source })
            })
            .collect()
    }

    /// All pending deliveries, ordered by target then lablet.
    pub async fn pending(&self) -> Result<Vec<QueuedDelivery>, QueueError> {
        self.rows(PENDING)
            .await?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_str(&value).map_err(|source| QueueError::Decode { key, source })
            })
            .collect()
    }
}

impl DbStore for RetryQueue {
    type Error = QueueError;

    fn file(&self) -> &DbFile {
        &self.db
    }

    fn db_error(path: &Path, source: redb::Error) -> QueueError {
        QueueError::Db {
            path: path.display().to_string(),
            source: Box::new(source),
        }
    }

    fn task_error(source: tokio::task::JoinError) -> QueueError {
        QueueError::Task(source)
    }
}
