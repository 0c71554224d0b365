use std::path::Path;
use std::sync::Arc;

use crate::db::{DbFile, DbStore};

use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{FanOutBody, QueueError};

const PENDING: TableDefinition<'_, &str, &str> = TableDefinition::new("pending_deliveries");

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
        Ok(this)
    }

    /// Add or replace the pending delivery for its target and lablet.
    pub async fn push(&self, delivery: QueuedDelivery) -> Result<(), QueueError> {
        self.blocking(move |this, db| {
            let key = delivery.key();
            let json = serde_json::to_string(&delivery).map_err(|source| QueueError::Decode {
                key: key.clone(),
                source,
            })?;
            let tx = db.begin_write().map_err(|e| this.err(e))?;
            {
                let mut table = tx.open_table(PENDING).map_err(|e| this.err(e))?;
                table
                    .insert(key.as_str(), json.as_str())
                    .map_err(|e| this.err(e))?;
            }
            tx.commit().map_err(|e| this.err(e))
        })
        .await
    }

    /// Drop the pending delivery of `target` for `lablet`, if any.
    pub async fn remove(&self, target: &str, lablet: &str) -> Result<(), QueueError> {
        let key = queue_key(target, lablet);
        self.blocking(move |this, db| {
            let tx = db.begin_write().map_err(|e| this.err(e))?;
            {
                let mut table = tx.open_table(PENDING).map_err(|e| this.err(e))?;
                table.remove(key.as_str()).map_err(|e| this.err(e))?;
            }
            tx.commit().map_err(|e| this.err(e))
        })
        .await
    }

    /// All pending deliveries, ordered by target then lablet.
    pub async fn pending(&self) -> Result<Vec<QueuedDelivery>, QueueError> {
        self.blocking(|this, db| {
            let tx = db.begin_read().map_err(|e| this.err(e))?;
            let table = tx.open_table(PENDING).map_err(|e| this.err(e))?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| this.err(e))? {
                let (key, value) = row.map_err(|e| this.err(e))?;
                let delivery =
                    serde_json::from_str(value.value()).map_err(|source| QueueError::Decode {
                        key: key.value().to_owned(),
                        source,
                    })?;
                out.push(delivery);
            }
            Ok(out)
        })
        .await
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
