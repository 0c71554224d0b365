//! `LabletSync`: resolve -> download -> inspect -> store -> fan-out -> record.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use tracing::Instrument;

use crate::catalog::{
    Catalog, ContentSyncResult, CpaCatalog, DeliveryStatus, EmbeddedCatalog, LabletDefinition,
    SyncStatus, TargetResult, next_content_version,
};
use crate::config::{CatalogKind, ConfigError, LabletSyncConfig};
use crate::error::{Error, Result, Stage};
use crate::fanout::{FanOutBody, FanOutClient, PendingRecord, QueuedDelivery, RetryQueue};
use crate::inspect::{PackageInfo, inspect_package};
use crate::lock::LabletLocks;
use crate::metrics::Metrics;
use crate::mosaic::MosaicClient;
use crate::resolver::ResolverClient;
use crate::retry::RetryPolicy;
use crate::store::PackageStore;
use crate::template;

/// Progress callback: called when a stage starts.
pub type Progress<'a> = &'a (dyn Fn(Stage) + Send + Sync);

/// Byte progress callback of the download and store stages: `(stage, bytes
/// done, bytes in all when known)`.
pub type BytesProgress<'a> = &'a (dyn Fn(Stage, u64, Option<u64>) + Send + Sync);

/// What one sync did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    /// The definition as recorded in the catalog.
    pub definition: LabletDefinition,
    /// Whether the package was uploaded (`false`: the store already had it).
    pub uploaded: bool,
    /// Bytes uploaded (0 when skipped).
    pub uploaded_bytes: u64,
}

impl SyncReport {
    /// "catalog synced but delivery stale: ..." when a fan-out target is stale.
    pub fn stale_message(&self) -> Option<String> {
        self.definition.content.stale_message()
    }
}

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

/// The content sync pipeline.
#[derive(Debug)]
pub struct LabletSync {
    config: LabletSyncConfig,
    resolver: ResolverClient,
    mosaic: MosaicClient,
    store: PackageStore,
    fanout: FanOutClient,
    queue: RetryQueue,
    catalog: Arc<dyn Catalog>,
    locks: LabletLocks,
    metrics: Metrics,
    tmp_dir: PathBuf,
}

/// Check a lablet name: it becomes part of object keys and file names.
pub fn validate_name(name: &str) -> Result<()> {
    let reject = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() || name.len() > 128 {
        return reject("must be 1 to 128 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return reject("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    if name.starts_with('.') {
        return reject("must not start with '.'");
    }
    Ok(())
}

impl LabletSync {
    /// Build the pipeline with the catalog the config selects (embedded by default,
    /// `DATA_DIR/catalog.redb`).
    pub fn from_config(config: LabletSyncConfig) -> Result<Self> {
        let http = http_client(&config)?;
        let catalog: Arc<dyn Catalog> = match config.catalog {
            CatalogKind::Cpa => {
                Arc::new(CpaCatalog::from_config(&config, http).ok_or_else(|| {
                    Error::Config(ConfigError::new(
                        "LABLET_CPA_URL",
                        "required when LABLET_CATALOG=cpa",
                    ))
                })?)
            }
            _ => Arc::new(
                EmbeddedCatalog::open(config.data_dir.join("catalog.redb"))
                    .map_err(Error::Catalog)?,
            ),
        };
        Self::with_catalog(config, catalog)
    }

    /// Build the pipeline around any catalog.
    pub fn with_catalog(config: LabletSyncConfig, catalog: Arc<dyn Catalog>) -> Result<Self> {
        let http = http_client(&config)?;
        let local = |what: &str| {
            let what = what.to_owned();
            move |source| Error::Local { what, source }
        };
        std::fs::create_dir_all(&config.data_dir).map_err(local(&format!(
            "create data dir {}",
            config.data_dir.display()
        )))?;
        let tmp_dir = config.data_dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(local("create temp dir"))?;
        let store =
            PackageStore::from_config(&config, http.clone()).map_err(|source| Error::Store {
                lablet: "*".to_owned(),
                source,
            })?;
        let queue =
            RetryQueue::open(config.data_dir.join("retry-queue.redb")).map_err(|source| {
                Error::Queue {
                    lablet: "*".to_owned(),
                    source,
                }
            })?;
        // leftover downloads of a crashed run (an active download, here or in another
        // process sharing the data dir, writes at least once per read timeout)
        remove_stale_downloads(&tmp_dir, STALE_DOWNLOAD_AGE);
        Ok(Self {
            resolver: ResolverClient::new(
                http.clone(),
                config.resolve_url.clone(),
                config.retry.clone(),
            ),
            mosaic: MosaicClient::new(http.clone(), config.retry.clone(), config.max_package_bytes),
            fanout: FanOutClient::new(http, config.retry.clone()),
            store,
            queue,
            catalog,
            locks: LabletLocks::new(
                config
                    .lock_dir
                    .clone()
                    .unwrap_or_else(|| config.data_dir.join("locks")),
            ),
            metrics: Metrics::default(),
            tmp_dir,
            config,
        })
    }

    /// The catalog results are recorded in.
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::clone(&self.catalog)
    }

    /// The durable fan-out retry queue.
    pub fn retry_queue(&self) -> &RetryQueue {
        &self.queue
    }

    /// The package store.
    pub fn store(&self) -> &PackageStore {
        &self.store
    }

    /// Uses `metrics` (e.g. [`Metrics::registered`] in a server's registry)
    /// instead of the pipeline's own counters.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The pipeline's counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration in effect.
    pub fn config(&self) -> &LabletSyncConfig {
        &self.config
    }

    /// The catalog id of lablet `name` (`id_template`, default `{name}`).
    pub fn definition_id(&self, name: &str) -> Result<String> {
        let vars = BTreeMap::from([("name".to_owned(), name.to_owned())]);
        template::render(&self.config.id_template, &vars)
            .map_err(|e| Error::Config(ConfigError::new("id_template", e.to_string())))
    }

    fn base_vars(&self, name: &str, id: &str) -> BTreeMap<String, String> {
        let c = &self.config;
        let mut vars = BTreeMap::from([
            ("name".to_owned(), name.to_owned()),
            ("id".to_owned(), id.to_owned()),
            (
                "resolver_url".to_owned(),
                c.resolver_url.trim_end_matches('/').to_owned(),
            ),
        ]);
        for (key, value) in [
            ("lds_url", &c.lds_url),
            ("se_url", &c.se_url),
            ("cpa_url", &c.cpa_url),
        ] {
            if let Some(v) = value {
                vars.insert(key.to_owned(), v.trim_end_matches('/').to_owned());
            }
        }
        vars
    }

    /// Sync lablet `name` end to end.
    pub async fn sync(&self, name: &str) -> Result<SyncReport> {
        self.sync_with_progress(name, &|_| {}).await
    }

    /// [`LabletSync::sync`], calling `progress` as each stage starts.
    pub async fn sync_with_progress(
        &self,
        name: &str,
        progress: Progress<'_>,
    ) -> Result<SyncReport> {
        self.sync_observed(name, progress, &|_, _, _| {}).await
    }

    /// As [`sync_with_progress`](Self::sync_with_progress), also reporting the
    /// bytes downloaded and uploaded as they move.
    pub async fn sync_observed(
        &self,
        name: &str,
        progress: Progress<'_>,
        bytes: BytesProgress<'_>,
    ) -> Result<SyncReport> {
        validate_name(name)?;
        let id = self.definition_id(name)?;
        let span = tracing::info_span!("lablet_sync", lablet = name, id = id.as_str());
        async {
            let guard = self.locks.lock(name).await.map_err(|source| Error::Local {
                what: format!("lock lablet {name}"),
                source,
            })?;
            let result = self.sync_locked(name, &id, progress, bytes).await;
            drop(guard);
            if result.is_ok() {
                // opportunistically deliver what earlier syncs of other lablets left
                // queued (this lablet's deliveries were just attempted)
                if let Err(err) = self.drain(Some(name)).await {
                    tracing::warn!(error = %err, "draining the retry queue failed");
                }
            }
            result
        }
        .instrument(span)
        .await
    }

    fn stage_result<T>(&self, stage: Stage, result: Result<T>) -> Result<T> {
        self.metrics.stage(stage, result.is_ok());
        match &result {
            Ok(_) => tracing::info!(stage = stage.as_str(), "stage done"),
            Err(err) => tracing::warn!(stage = stage.as_str(), error = %err, "stage failed"),
        }
        result
    }

    async fn sync_locked(
        &self,
        name: &str,
        id: &str,
        progress: Progress<'_>,
        bytes: BytesProgress<'_>,
    ) -> Result<SyncReport> {
        let lablet = || name.to_owned();

        progress(Stage::Resolve);
        let mut vars = self.base_vars(name, id);
        let resolved = self
            .resolver
            .resolve(&vars)
            .instrument(tracing::info_span!("resolve"))
            .await
            .map_err(|source| Error::Resolve {
                lablet: lablet(),
                source,
            });
        let resolved = self.stage_result(Stage::Resolve, resolved)?;
        for (k, v) in resolved {
            vars.entry(k).or_insert(v);
        }

        progress(Stage::Download);
        let download = async {
            let url = template::render(&self.config.download_url, &vars).map_err(|e| {
                Error::Download {
                    lablet: lablet(),
                    source: e.into(),
                }
            })?;
            self.mosaic
                .download_observed(&url, &self.tmp_dir, &|done, total| {
                    bytes(Stage::Download, done, total)
                })
                .await
                .map_err(|source| Error::Download {
                    lablet: lablet(),
                    source,
                })
        }
        .instrument(tracing::info_span!("download"))
        .await;
        let package = self.stage_result(Stage::Download, download)?;
        self.metrics.downloaded(package.size);

        progress(Stage::Inspect);
        let path = package.path.to_path_buf();
        let limits = self.config.inspect.clone();
        let info = tokio::task::spawn_blocking(move || inspect_package(&path, &limits))
            .instrument(tracing::info_span!("inspect"))
            .await
            .map_err(|e| Error::Local {
                what: "inspect task".to_owned(),
                source: std::io::Error::other(e),
            })
            .and_then(|r| {
                r.map_err(|source| Error::Inspect {
                    lablet: lablet(),
                    source,
                })
            });
        let info = self.stage_result(Stage::Inspect, info)?;

        // ask the catalog before the store changes: an unreachable catalog fails the
        // sync while the stored package still matches the recorded one
        let previous = self.catalog.get(id).await.map_err(|source| Error::Record {
            lablet: lablet(),
            source,
        });
        let previous = match previous {
            Ok(previous) => previous,
            Err(err) => return self.stage_result(Stage::Record, Err(err)),
        };

        progress(Stage::Store);
        // Uploads of this lablet a killed run left open (we hold its lock, so
        // none of them is live); best effort, the sync does not depend on it.
        match self.store.abort_abandoned_uploads(name).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                lablet = name,
                aborted = n,
                "aborted uploads a killed run left open"
            ),
            Err(e) => {
                tracing::warn!(lablet = name, error = %e, "cannot abort uploads a killed run left open")
            }
        }
        let location = self
            .store
            .location_for(&self.config.location, name, Some(&package.sha256))
            .map_err(|source| Error::Store {
                lablet: lablet(),
                source,
            });
        let location = self.stage_result(Stage::Store, location)?;
        let sha256 = package.sha256.clone();
        let size = package.size;
        let version = next_content_version(previous.as_ref(), &sha256);
        // Written down before the store changes: should this run die between
        // the store and the record, the drain records it (once it finds these
        // bytes stored), so the catalog does not stay behind the store.
        let not_yet = self
            .targets(&vars)
            .unwrap_or_default()
            .into_iter()
            .map(|(target, _)| TargetResult {
                target: target.to_owned(),
                status: DeliveryStatus::Queued,
                attempts: 0,
                error: Some("not delivered: the sync stopped before its fan-out".to_owned()),
            })
            .collect();
        let intent = content_result(
            name,
            &sha256,
            size,
            info.clone(),
            location.clone(),
            not_yet,
            version,
            false,
        );
        self.queue
            .push_record(&PendingRecord {
                definition_id: id.to_owned(),
                content: intent,
                attempts: 0,
                last_error: "the sync has not recorded it yet".to_owned(),
                queued_at: now_rfc3339(),
            })
            .await
            .map_err(|source| Error::Queue {
                lablet: lablet(),
                source,
            })?;
        let stored = self
            .store
            .upload_observed(name, &location, &package.path, &sha256, &|done| {
                bytes(Stage::Store, done, Some(size))
            })
            .instrument(tracing::info_span!("store"))
            .await
            .map_err(|source| Error::Store {
                lablet: lablet(),
                source,
            });
        if stored.is_err()
            && let Err(e) = self.queue.remove_record(name, &sha256).await
        {
            tracing::warn!(lablet = name, error = %e, "cannot drop the record kept for a failed store");
        }
        let outcome = self.stage_result(Stage::Store, stored)?;
        self.metrics.uploaded(outcome.bytes, !outcome.uploaded);
        drop(package);

        progress(Stage::FanOut);
        let body = FanOutBody {
            lablet: name.to_owned(),
            bucket: location.bucket.clone(),
            key: location.key.clone(),
            sha256: sha256.clone(),
            version,
        };
        let fanout = self
            .fan_out(id, &vars, &body)
            .instrument(tracing::info_span!("fan_out"))
            .await;
        let fanout = self.stage_result(Stage::FanOut, fanout)?;
        let all_delivered = fanout.iter().all(|t| t.status == DeliveryStatus::Delivered);

        progress(Stage::Record);
        let result = content_result(
            name,
            &sha256,
            size,
            info,
            location,
            fanout,
            version,
            all_delivered,
        );
        let recorded = self
            .catalog
            .record(id, &result)
            .instrument(tracing::info_span!("record"))
            .await;
        self.keep_pending_record(id, result, recorded.as_ref().err())
            .await;
        let recorded = recorded.map_err(|source| Error::Record {
            lablet: lablet(),
            source,
        });
        let definition = self.stage_result(Stage::Record, recorded)?;
        if let Some(msg) = definition.content.stale_message() {
            tracing::warn!(lablet = name, "{msg}");
        }
        Ok(SyncReport {
            definition,
            uploaded: outcome.uploaded,
            uploaded_bytes: outcome.bytes,
        })
    }

    /// After the record step: a record that failed is kept for the retry drain
    /// (the package is stored and the targets told, so the catalog must catch
    /// up); one that succeeded supersedes whatever an earlier failure kept.
    /// Best effort: the sync's outcome is the record's.
    async fn keep_pending_record(
        &self,
        id: &str,
        content: ContentSyncResult,
        failed: Option<&crate::catalog::CatalogError>,
    ) {
        let lablet = content.lablet.clone();
        let kept = match failed {
            Some(err) => {
                self.queue
                    .push_record(&PendingRecord {
                        definition_id: id.to_owned(),
                        content,
                        attempts: 1,
                        last_error: err.to_string(),
                        queued_at: now_rfc3339(),
                    })
                    .await
            }
            None => self.queue.remove_records_of(&lablet).await,
        };
        if let Err(e) = kept {
            tracing::warn!(lablet, error = %e, "cannot update the pending record of this lablet");
        }
    }

    /// The configured targets with their rendered URLs.
    fn targets(&self, vars: &BTreeMap<String, String>) -> Result<Vec<(&'static str, String)>> {
        let mut out = Vec::new();
        let c = &self.config;
        for (target, base, tpl) in [
            ("lds", &c.lds_url, &c.lds_sync_url),
            ("se", &c.se_url, &c.se_sync_url),
        ] {
            if base.is_some() {
                let url = template::render(tpl, vars).map_err(|e| {
                    Error::Config(ConfigError::new(
                        format!("{target}_sync_url"),
                        e.to_string(),
                    ))
                })?;
                out.push((target, url));
            }
        }
        Ok(out)
    }

    /// POST LDS and SE in parallel; queue whatever still fails.
    async fn fan_out(
        &self,
        id: &str,
        vars: &BTreeMap<String, String>,
        body: &FanOutBody,
    ) -> Result<Vec<TargetResult>> {
        let targets = self.targets(vars)?;
        let deliver = |target: Option<&(&'static str, String)>| {
            let target = target.cloned();
            async move {
                match target {
                    Some((name, url)) => {
                        let (attempts, result) = self.fanout.deliver(&url, body).await;
                        Some((name, url, attempts, result))
                    }
                    None => None,
                }
            }
        };
        let (first, second) = tokio::join!(deliver(targets.first()), deliver(targets.get(1)));
        let mut results = Vec::new();
        for (target, url, attempts, result) in [first, second].into_iter().flatten() {
            let queue_err = |source| Error::Queue {
                lablet: body.lablet.clone(),
                source,
            };
            match result {
                Ok(()) => {
                    // a fresh delivery supersedes anything queued for this target
                    self.queue
                        .remove(target, &body.lablet)
                        .await
                        .map_err(queue_err)?;
                    results.push(TargetResult {
                        target: target.to_owned(),
                        status: DeliveryStatus::Delivered,
                        attempts,
                        error: None,
                    });
                }
                Err(err) => {
                    tracing::warn!(target, error = %err, "fan-out target failed; queued for retry");
                    self.queue
                        .push(QueuedDelivery {
                            target: target.to_owned(),
                            definition_id: id.to_owned(),
                            url,
                            body: body.clone(),
                            attempts,
                            last_error: err.to_string(),
                            queued_at: now_rfc3339(),
                        })
                        .await
                        .map_err(queue_err)?;
                    self.metrics.queued();
                    results.push(TargetResult {
                        target: target.to_owned(),
                        status: DeliveryStatus::Queued,
                        attempts,
                        error: Some(err.to_string()),
                    });
                }
            }
        }
        Ok(results)
    }

    /// Try every queued delivery once. A lablet whose deliveries all went through is
    /// re-recorded as `synced` (same hash, so its content version is kept). Lablets
    /// being synced right now are skipped.
    pub async fn retry_pending(&self) -> Result<RetryReport> {
        self.drain(None).await
    }

    async fn drain(&self, except: Option<&str>) -> Result<RetryReport> {
        let queue_err = |source| Error::Queue {
            lablet: "*".to_owned(),
            source,
        };
        let pending = self.queue.pending().await.map_err(queue_err)?;
        let mut by_lablet: BTreeMap<String, Vec<QueuedDelivery>> = BTreeMap::new();
        for d in pending {
            if except == Some(d.body.lablet.as_str()) {
                continue;
            }
            by_lablet.entry(d.body.lablet.clone()).or_default().push(d);
        }
        let mut report = RetryReport::default();
        self.drain_records(except, &mut report).await?;
        let single = FanOutClient::new(
            http_client(&self.config)?,
            RetryPolicy::default().with_max_attempts(1),
        );
        for (lablet, deliveries) in by_lablet {
            let guard = self.try_lock_lablet(&lablet)?;
            let Some(_guard) = guard else {
                report.skipped_locked += deliveries.len();
                continue;
            };
            let mut delivered = Vec::new();
            for mut d in deliveries {
                match single.post(&d.url, &d.body).await {
                    Ok(()) => {
                        self.queue
                            .remove(&d.target, &lablet)
                            .await
                            .map_err(queue_err)?;
                        report.delivered += 1;
                        delivered.push(d);
                    }
                    Err(err) => {
                        d.attempts = d.attempts.saturating_add(1);
                        d.last_error = err.to_string();
                        self.queue.push(d).await.map_err(queue_err)?;
                        report.still_pending += 1;
                    }
                }
            }
            self.mark_delivered(&lablet, &delivered).await?;
        }
        Ok(report)
    }

    /// The lablet's lock if nobody holds it (a drain skips busy lablets).
    fn try_lock_lablet(&self, lablet: &str) -> Result<Option<crate::lock::LabletGuard>> {
        self.locks.try_lock(lablet).map_err(|source| Error::Local {
            what: format!("lock lablet {lablet}"),
            source,
        })
    }

    /// Try the kept records once (before the deliveries, so a lablet's
    /// deliveries are marked on the record they belong to). Per lablet, the
    /// newest kept record whose package the store holds is recorded and the
    /// rest dropped; a kept record whose bytes are not stored (its run died
    /// before the upload finished, or a later one overwrote the key) is never
    /// recorded.
    async fn drain_records(&self, except: Option<&str>, report: &mut RetryReport) -> Result<()> {
        let queue_err = |source| Error::Queue {
            lablet: "*".to_owned(),
            source,
        };
        let mut by_lablet: BTreeMap<String, Vec<PendingRecord>> = BTreeMap::new();
        for kept in self.queue.pending_records().await.map_err(queue_err)? {
            if except != Some(kept.lablet()) {
                by_lablet
                    .entry(kept.lablet().to_owned())
                    .or_default()
                    .push(kept);
            }
        }
        for (lablet, mut kept) in by_lablet {
            let guard = self.try_lock_lablet(&lablet)?;
            let Some(_guard) = guard else {
                report.skipped_locked += 1;
                continue;
            };
            kept.sort_by(|a, b| b.queued_at.cmp(&a.queued_at));
            for mut candidate in kept {
                let sha = candidate.content.content_package_hash.clone();
                let stored = match self.store.stored_sha256(&candidate.content.store).await {
                    Ok(stored) => stored,
                    Err(e) => {
                        // cannot tell now: keep it for the next drain
                        tracing::warn!(lablet, error = %e, "cannot check a kept record against the store");
                        report.records_pending += 1;
                        break;
                    }
                };
                if stored.as_ref() != Some(&sha) {
                    tracing::info!(
                        lablet,
                        kept = sha.as_str(),
                        stored = stored.as_deref().unwrap_or("nothing"),
                        "dropping a kept record: the store does not hold its package"
                    );
                    self.queue
                        .remove_record(&lablet, &sha)
                        .await
                        .map_err(queue_err)?;
                    continue;
                }
                match self
                    .catalog
                    .record(&candidate.definition_id, &candidate.content)
                    .await
                {
                    Ok(_) => {
                        self.queue
                            .remove_records_of(&lablet)
                            .await
                            .map_err(queue_err)?;
                        report.recorded += 1;
                    }
                    Err(err) => {
                        candidate.attempts = candidate.attempts.saturating_add(1);
                        candidate.last_error = err.to_string();
                        self.queue
                            .push_record(&candidate)
                            .await
                            .map_err(queue_err)?;
                        report.records_pending += 1;
                    }
                }
                break;
            }
        }
        Ok(())
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
        let Some(def) = self
            .catalog
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
        self.catalog
            .record(&first.definition_id, &content)
            .await
            .map_err(record_err)?;
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn content_result(
    name: &str,
    sha256: &str,
    size: u64,
    info: PackageInfo,
    store: crate::store::StoreLocation,
    fanout: Vec<TargetResult>,
    version: u64,
    all_delivered: bool,
) -> ContentSyncResult {
    ContentSyncResult {
        lablet: name.to_owned(),
        content_package_hash: sha256.to_owned(),
        content_package_size: size,
        upstream_version: info.meta.version,
        upstream_date_published: info.meta.date_published,
        upstream_instance_name: info.meta.instance_name,
        upstream_form_id: info.meta.form_id,
        grade_xml_path: info.grade_xml_path,
        cml_yaml_path: info.cml_yaml_path,
        cml_yaml_content: info.cml_yaml_content,
        cml_yaml_hash: info.cml_yaml_hash,
        devices_json: info.devices_json,
        synced_at: now_rfc3339(),
        status: if all_delivered {
            SyncStatus::Synced
        } else {
            SyncStatus::Stale
        },
        store,
        fanout,
        content_version: version,
    }
}

/// Partial downloads untouched for this long belong to a crashed run.
const STALE_DOWNLOAD_AGE: std::time::Duration = std::time::Duration::from_secs(3600);

fn remove_stale_downloads(tmp_dir: &std::path::Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(tmp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|elapsed| elapsed > age);
        if old
            && path.extension().is_some_and(|e| e == "part")
            && let Err(err) = std::fs::remove_file(&path)
        {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove stale download");
        }
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn http_client(config: &LabletSyncConfig) -> Result<reqwest::Client> {
    config
        .http_client()
        .map_err(|e| Error::Config(ConfigError::new("http client", e.to_string())))
}
