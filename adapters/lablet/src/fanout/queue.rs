use std::path::Path;
use std::sync::Arc;

use crate::db::{DbFile, DbStore, Table};

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::{FanOutBody, QueueError};

const PENDING: Table = TableDefinition::new("pending_deliveries");

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
