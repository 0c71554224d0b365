//! The durable retry queue of fan-out deliveries: one pending delivery per
//! target and lablet (a newer one replaces an older one), kept where the
//! [`QueueStore`] keeps it (the local `redb` file `DATA_DIR/retry-queue.redb`
//! it shares with the record outbox, or objects in an S3 store).

use std::sync::Arc;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use super::{FanOutBody, QueueError};
use crate::db::Table;
use crate::queue_store::QueueStore;

/// The table (redb) or `_queue/` folder (S3) of pending deliveries.
pub(crate) const PENDING: Table = TableDefinition::new("pending_deliveries");

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
    fn key(&self) -> String {
        queue_key(&self.target, &self.body.lablet)
    }
}

fn queue_key(target: &str, lablet: &str) -> String {
    format!("{target}/{lablet}")
}

/// The durable retry queue: each change is durable on return (a committed
/// `redb` transaction, or an object written), so the queue survives a crash
/// or restart.
#[derive(Debug, Clone)]
pub(crate) struct RetryQueue {
    rows: Arc<dyn QueueStore>,
}

impl RetryQueue {
    /// The queue in `rows`.
    pub(crate) fn new(rows: Arc<dyn QueueStore>) -> Self {
        Self { rows }
    }

    /// Add or replace the pending delivery for its target and lablet.
    pub(crate) async fn push(&self, delivery: QueuedDelivery) -> Result<(), QueueError> {
        let key = delivery.key();
        let json = serde_json::to_string(&delivery).map_err(|source| QueueError::Decode {
            key: key.clone(),
            source,
        })?;
        self.rows.put(PENDING, key, json).await
    }

    /// Drop the pending delivery of `target` for `lablet`, if any.
    pub(crate) async fn remove(&self, target: &str, lablet: &str) -> Result<(), QueueError> {
        self.rows.remove(PENDING, queue_key(target, lablet)).await
    }

    /// All pending deliveries, ordered by target then lablet.
    pub(crate) async fn pending(&self) -> Result<Vec<QueuedDelivery>, QueueError> {
        self.rows
            .rows(PENDING)
            .await?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_str(&value).map_err(|source| QueueError::Decode { key, source })
            })
            .collect()
    }
}
