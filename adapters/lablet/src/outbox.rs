//! The catalog-record outbox: a sync's catalog record, kept until the catalog
//! holds it, so the catalog catches up with the store without a re-sync.
//!
//! **Protocol** (each step taken by the sync holding the lock of the lablet's
//! storage key; kept where the retry queue is kept — `DATA_DIR/retry-queue.redb`
//! for `file://` stores, objects under `_queue/pending_records/` for S3 stores
//! (see `queue_store.rs`) — one entry per lablet and package SHA-256, each
//! change durable on return):
//!
//! 1. **Written down before the store.** Before the upload, the sync writes down
//!    the record it means to make (status `stale`, every target "not delivered:
//!    the sync stopped before its fan-out"). A run that dies between upload and
//!    record leaves it behind for a drain.
//! 2. **Struck off when the store fails**: nothing new was stored, nothing to
//!    record.
//! 3. **Replaced with the real outcome if the record fails** (the catalog is down
//!    or refuses it): the package is stored and the targets told, so the catalog
//!    must catch up with what the sync really did.
//! 4. **Struck off once recorded**: a record that lands supersedes every record
//!    kept for its lablet.
//!
//! **Drain** (after every successful sync, for the *other* lablets, and on
//! `retry` / `serve`'s background loop), per lablet nobody is syncing right now:
//! the kept records are tried newest first. One whose package the store does not
//! hold — checked by SHA-256 against the stored object (its run died before the
//! upload finished, or a later sync overwrote the key) — is dropped, never
//! recorded. The first one the store holds is recorded: once it lands, every
//! record kept for the lablet is dropped; if it fails again it stays kept with
//! one more attempt (and so do the older ones). A store that cannot be asked
//! keeps them all for the next drain.

use std::sync::Arc;

use redb::TableDefinition;
use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, CatalogError, ContentSyncResult};
use crate::db::Table;
use crate::fanout::QueueError;
use crate::queue_store::QueueStore;
use crate::store::PackageStore;

/// The table (redb) or `_queue/` folder (S3) of kept records.
pub(crate) const RECORDS: Table = TableDefinition::new("pending_records");

/// A catalog record kept until it lands (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecord {
    /// Definition id to record under.
    pub definition_id: String,
    /// What to record.
    pub content: ContentSyncResult,
    /// Attempts made so far (0: written down before the store, not tried yet).
    pub attempts: u32,
    /// Last error.
    pub last_error: String,
    /// When first kept (RFC 3339).
    pub queued_at: String,
}

impl PendingRecord {
    /// The lablet it belongs to.
    pub fn lablet(&self) -> &str {
        &self.content.lablet
    }

    fn sha256(&self) -> &str {
        &self.content.content_package_hash
    }
}

/// Lablet names hold no `/` (see `validate_name`), so the prefix is exact.
fn record_key(lablet: &str, sha256: &str) -> String {
    format!("{lablet}/{sha256}")
}

/// What draining one lablet's kept records did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// A kept record landed (and every other one of the lablet was dropped).
    Recorded,
    /// Records are still kept (the record failed again, or the store could not
    /// be asked).
    Pending,
    /// Nothing left to record (every kept record was dropped).
    Nothing,
}

/// The outbox, kept where the fan-out retry queue is kept.
#[derive(Debug, Clone)]
pub(crate) struct Outbox {
    rows: Arc<dyn QueueStore>,
}

impl Outbox {
    /// The outbox in `rows`.
    pub(crate) fn new(rows: Arc<dyn QueueStore>) -> Self {
        Self { rows }
    }

    /// Step 1: write down `intent`, the record a sync means to make, before its
    /// upload.
    pub(crate) async fn write_intent(
        &self,
        definition_id: &str,
        intent: ContentSyncResult,
    ) -> Result<(), QueueError> {
        self.keep(&PendingRecord {
            definition_id: definition_id.to_owned(),
            content: intent,
            attempts: 0,
            last_error: "the sync has not recorded it yet".to_owned(),
            queued_at: crate::catalog::now_rfc3339(),
        })
        .await
    }

    /// Step 2: the upload of `sha256` failed; strike its intent off. Best
    /// effort: the sync fails with the store's error either way.
    pub(crate) async fn store_failed(&self, lablet: &str, sha256: &str) {
        if let Err(e) = self.remove(lablet, sha256).await {
            tracing::warn!(lablet, error = %e, "cannot drop the record kept for a failed store");
        }
    }

    /// Steps 3 and 4, after the record call: a record that failed is kept with
    /// the real outcome; one that landed strikes off everything kept for its
    /// lablet. Best effort: the sync's outcome is the record's.
    pub(crate) async fn settle(
        &self,
        definition_id: &str,
        content: ContentSyncResult,
        failed: Option<&CatalogError>,
    ) {
        let lablet = content.lablet.clone();
        let settled = match failed {
            Some(err) => {
                self.keep(&PendingRecord {
                    definition_id: definition_id.to_owned(),
                    content,
                    attempts: 1,
                    last_error: err.to_string(),
                    queued_at: crate::catalog::now_rfc3339(),
                })
                .await
            }
            None => self.remove_all_of(&lablet).await,
        };
        if let Err(e) = settled {
            tracing::warn!(lablet, error = %e, "cannot update the pending record of this lablet");
        }
    }

    /// Drain one lablet's kept records by the rules in the module docs (the
    /// caller holds the lablet's lock).
    pub(crate) async fn drain_lablet(
        &self,
        lablet: &str,
        mut kept: Vec<PendingRecord>,
        store: &PackageStore,
        catalog: &dyn Catalog,
    ) -> Result<Drained, QueueError> {
        kept.sort_by(|a, b| b.queued_at.cmp(&a.queued_at));
        for mut candidate in kept {
            let stored = match store.stored_sha256(&candidate.content.store).await {
                Ok(stored) => stored,
                Err(e) => {
                    // cannot tell now: keep them for the next drain
                    tracing::warn!(lablet, error = %e, "cannot check a kept record against the store");
                    return Ok(Drained::Pending);
                }
            };
            if stored.as_deref() != Some(candidate.sha256()) {
                tracing::info!(
                    lablet,
                    kept = candidate.sha256(),
                    stored = stored.as_deref().unwrap_or("nothing"),
                    "dropping a kept record: the store does not hold its package"
                );
                self.remove(lablet, candidate.sha256()).await?;
                continue;
            }
            return match catalog
                .record(&candidate.definition_id, &candidate.content)
                .await
            {
                Ok(_) => {
                    self.remove_all_of(lablet).await?;
                    Ok(Drained::Recorded)
                }
                Err(err) => {
                    candidate.attempts = candidate.attempts.saturating_add(1);
                    candidate.last_error = err.to_string();
                    self.keep(&candidate).await?;
                    Ok(Drained::Pending)
                }
            };
        }
        Ok(Drained::Nothing)
    }

    /// All kept records, ordered by lablet.
    pub(crate) async fn kept(&self) -> Result<Vec<PendingRecord>, QueueError> {
        self.rows
            .rows(RECORDS)
            .await?
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_str(&value).map_err(|source| QueueError::Decode { key, source })
            })
            .collect()
    }

    /// Keep `record` (a newer one of the same lablet and package replaces it).
    async fn keep(&self, record: &PendingRecord) -> Result<(), QueueError> {
        let key = record_key(record.lablet(), record.sha256());
        let json = serde_json::to_string(record).map_err(|source| QueueError::Decode {
            key: key.clone(),
            source,
        })?;
        self.rows.put(RECORDS, key, json).await
    }

    /// Drop the kept record of `lablet` for package `sha256`, if any.
    async fn remove(&self, lablet: &str, sha256: &str) -> Result<(), QueueError> {
        self.rows.remove(RECORDS, record_key(lablet, sha256)).await
    }

    /// Drop every kept record of `lablet`.
    async fn remove_all_of(&self, lablet: &str) -> Result<(), QueueError> {
        let prefix = record_key(lablet, "");
        for (key, _) in self.rows.rows(RECORDS).await? {
            if key.starts_with(&prefix) {
                self.rows.remove(RECORDS, key).await?;
            }
        }
        Ok(())
    }
}
