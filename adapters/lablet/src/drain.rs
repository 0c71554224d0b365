//! Draining what earlier syncs left behind: kept catalog records (the
//! [outbox](crate::outbox)) first, then queued fan-out deliveries. Run by
//! [`LabletSync::retry_pending`] (`lablet-sync retry`, `serve`'s background
//! loop) and, for the other lablets, after every successful sync. Lablets being
//! synced right now are skipped.

use std::collections::BTreeMap;

use crate::catalog::{DeliveryStatus, SyncStatus};
use crate::error::{Error, Result};
use crate::fanout::{QueueError, QueuedDelivery};
use crate::lease::LockGuard;
use crate::outbox::{Drained, PendingRecord};
use crate::pipeline::LabletSync;

/// What draining the retry queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    /// Deliveries that went through and left the queue.
    pub delivered: usize,
    /// Deliveries still failing (still queued).
    pub still_pending: usize,
    /// Catalog records (of syncs whose record step failed) now recorded.
    pub recorded: usize,
    /// Catalog records still failing (still kept).
    pub records_pending: usize,
    /// Deliveries and records skipped because their lablet is being synced
    /// right now.
    pub skipped_locked: usize,
}

impl RetryReport {
    /// Whether anything is still waiting for its target or the catalog.
    pub fn anything_pending(&self) -> bool {
        self.still_pending > 0 || self.records_pending > 0
    }
}

fn queue_err(source: QueueError) -> Error {
    Error::Queue {
        lablet: "*".to_owned(),
        source,
    }
}

fn outbox_err(source: QueueError) -> Error {
    Error::Outbox {
        lablet: "*".to_owned(),
        source,
    }
}

/// `items` by lablet, leaving out `except`.
fn by_lablet<T>(
    items: Vec<T>,
    lablet: impl Fn(&T) -> &str,
    except: Option<&str>,
) -> BTreeMap<String, Vec<T>> {
    let mut out: BTreeMap<String, Vec<T>> = BTreeMap::new();
    for item in items {
        let name = lablet(&item);
        if except != Some(name) {
            out.entry(name.to_owned()).or_default().push(item);
        }
    }
    out
}

impl LabletSync {
    /// Try every kept record and queued delivery once. A lablet whose deliveries
    /// all went through is re-recorded as `synced` (same hash, so its content
    /// version is kept). Lablets being synced right now are skipped.
    pub async fn retry_pending(&self) -> Result<RetryReport> {
        self.drain(None).await
    }

    /// After a successful sync of `synced`: deliver and record what earlier
    /// syncs of the *other* lablets left (this lablet's were just done fresh).
    /// Best effort: the sync succeeded either way.
    pub(crate) async fn drain_other_lablets(&self, synced: &str) {
        if let Err(err) = self.drain(Some(synced)).await {
            tracing::warn!(error = %err, "draining the retry queue failed");
        }
    }

    async fn drain(&self, except: Option<&str>) -> Result<RetryReport> {
        let mut report = RetryReport::default();
        // records first, so a lablet's deliveries are marked on the record they
        // belong to
        self.drain_records(except, &mut report).await?;
        self.drain_deliveries(except, &mut report).await?;
        Ok(report)
    }

    async fn drain_records(&self, except: Option<&str>, report: &mut RetryReport) -> Result<()> {
        let kept = self.outbox().kept().await.map_err(outbox_err)?;
        for lablet in by_lablet(kept, PendingRecord::lablet, except).into_keys() {
            let Some(guard) = self.try_lock_lablet(&lablet).await? else {
                report.skipped_locked += 1;
                continue;
            };
            // read again under the lock: another replica may have drained
            // them between the listing and the lock
            let drained = match self.kept_records_of(&lablet).await {
                Ok(kept) if kept.is_empty() => Ok(Drained::Nothing),
                Ok(kept) => self
                    .outbox()
                    .drain_lablet(&lablet, kept, self.store(), &*self.catalog())
                    .await
                    .map_err(outbox_err),
                Err(e) => Err(e),
            };
            guard.release().await;
            match drained? {
                Drained::Recorded => report.recorded += 1,
                Drained::Pending => report.records_pending += 1,
                Drained::Nothing => {}
            }
        }
        Ok(())
    }

    async fn kept_records_of(&self, lablet: &str) -> Result<Vec<PendingRecord>> {
        let kept = self.outbox().kept().await.map_err(outbox_err)?;
        Ok(kept.into_iter().filter(|r| r.lablet() == lablet).collect())
    }

    async fn drain_deliveries(&self, except: Option<&str>, report: &mut RetryReport) -> Result<()> {
        let pending = self.queue().pending().await.map_err(queue_err)?;
        for (lablet, listed) in by_lablet(pending, |d| d.body.lablet.as_str(), except) {
            let Some(guard) = self.try_lock_lablet(&lablet).await? else {
                report.skipped_locked += listed.len();
                continue;
            };
            let drained = self.drain_deliveries_of(&lablet, &guard, report).await;
            guard.release().await;
            drained?;
        }
        Ok(())
    }

    /// Delivers the queued deliveries of `lablet`, read again under its lock
    /// (another replica may have delivered them since the listing), each
    /// struck off once delivered; stops when the lock is lost.
    async fn drain_deliveries_of(
        &self,
        lablet: &str,
        guard: &LockGuard,
        report: &mut RetryReport,
    ) -> Result<()> {
        let pending = self.queue().pending().await.map_err(queue_err)?;
        let mut delivered = Vec::new();
        for mut d in pending.into_iter().filter(|d| d.body.lablet == lablet) {
            if guard.is_lost() {
                report.still_pending += 1;
                continue;
            }
            // one attempt each: the drain itself is the retry
            match self.fanout().post(&d.target, &d.url, &d.body).await {
                Ok(()) => {
                    self.queue()
                        .remove(&d.target, lablet)
                        .await
                        .map_err(queue_err)?;
                    report.delivered += 1;
                    delivered.push(d);
                }
                Err(err) => {
                    d.attempts = d.attempts.saturating_add(1);
                    d.last_error = err.to_string();
                    self.queue().push(d).await.map_err(queue_err)?;
                    report.still_pending += 1;
                }
            }
        }
        self.mark_delivered(lablet, &delivered).await
    }

    /// Update the catalog after queued deliveries of `lablet` went through.
    async fn mark_delivered(&self, lablet: &str, delivered: &[QueuedDelivery]) -> Result<()> {
        let Some(first) = delivered.first() else {
            return Ok(());
        };
        let record_err = |source| Error::Record {
            lablet: lablet.to_owned(),
            source,
        };
        let catalog = self.catalog();
        let Some(def) = catalog
            .get(&first.definition_id)
            .await
            .map_err(record_err)?
        else {
            return Ok(());
        };
        let mut content = def.content;
        if content.content_package_hash != first.body.sha256 {
            return Ok(()); // a newer sync recorded something else since
        }
        for d in delivered {
            if let Some(t) = content.fanout.iter_mut().find(|t| t.target == d.target) {
                t.status = DeliveryStatus::Delivered;
                t.attempts = t.attempts.saturating_add(1);
                t.error = None;
            }
        }
        if content
            .fanout
            .iter()
            .all(|t| t.status == DeliveryStatus::Delivered)
        {
            content.status = SyncStatus::Synced;
        }
        catalog
            .record(&first.definition_id, &content)
            .await
            .map_err(record_err)?;
        Ok(())
    }

    /// The lock of the lablet's storage key if nobody holds it (a drain
    /// skips busy lablets).
    async fn try_lock_lablet(&self, lablet: &str) -> Result<Option<LockGuard>> {
        let key = self.storage_key(lablet)?;
        self.locks()
            .try_lock(lablet, &key)
            .await
            .map_err(|source| Error::Lease {
                lablet: lablet.to_owned(),
                key: key.url.clone(),
                source,
            })
    }
}
