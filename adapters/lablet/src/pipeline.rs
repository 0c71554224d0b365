//! [`LabletSync`]: one sync, read top to bottom in [`LabletSync::sync_observed`]:
//! resolve, download, inspect, store, fan-out, record — six short stage methods,
//! each run through one stage helper ([`LabletSync::stage`]) that tells the
//! progress callback, opens the stage's span, times and counts it, and names the
//! lablet in its error.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::catalog::{
    Catalog, ContentSyncResult, CpaCatalog, DeliveryStatus, EmbeddedCatalog, LabletDefinition,
    ObjectCatalog, SyncStatus, TargetResult, next_content_version, now_rfc3339,
};
use crate::config::{CatalogKind, ConfigError, LabletSyncConfig};
use crate::db::DbFile;
use crate::error::{Error, Failure, Result, Stage};
use crate::fanout::{FanOutBody, FanOutClient, PENDING, QueuedDelivery, RetryQueue};
use crate::inspect::{InspectError, PackageInfo, inspect_package, inspect_source};
use crate::lease::{Claimed, LockGuard, Locks, claim};
use crate::metrics::Metrics;
use crate::mosaic::{DownloadError, DownloadedPackage, KeptFile, MosaicClient, Tee};
use crate::outbox::{Outbox, PendingRecord, RECORDS};
use crate::queue_store::{ObjectQueue, QueueStore, RedbQueue};
use crate::resolver::ResolverClient;
use crate::store::{
    FEED_CHUNKS, OverlappedUpload, PackageStore, StoreError, StoreLocation, StoredObject,
    UploadOutcome, Upstream,
};
use crate::template;

/// Progress callback: called when a stage starts.
pub type Progress<'a> = &'a (dyn Fn(Stage) + Send + Sync);

/// Byte progress callback of the download and store stages: `(stage, bytes
/// done, bytes in all when known)`.
pub type BytesProgress<'a> = &'a (dyn Fn(Stage, u64, Option<u64>) + Send + Sync);

/// Template variables of one sync: `{name}`, `{id}`, the service base URLs and,
/// after resolve, every resolved variable.
type Vars = BTreeMap<String, String>;

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

/// The content sync pipeline.
#[derive(Debug)]
pub struct LabletSync {
    config: LabletSyncConfig,
    resolver: ResolverClient,
    mosaic: MosaicClient,
    store: PackageStore,
    fanout: FanOutClient,
    queue: RetryQueue,
    outbox: Outbox,
    catalog: Arc<dyn Catalog>,
    locks: Locks,
    metrics: Metrics,
    tmp_dir: PathBuf,
}

/// One sync in flight: the lablet, its definition id, and who watches.
struct Run<'a> {
    name: &'a str,
    id: String,
    progress: Progress<'a>,
    bytes: BytesProgress<'a>,
}

/// The package a sync stores, fans out and records: its bytes and where they go.
struct Package {
    lablet: String,
    sha256: String,
    size: u64,
    location: StoreLocation,
    version: u64,
}

impl Package {
    /// The record of this package: `info` from inspect, the fan-out results.
    fn record(
        &self,
        info: PackageInfo,
        fanout: Vec<TargetResult>,
        status: SyncStatus,
    ) -> ContentSyncResult {
        ContentSyncResult {
            lablet: self.lablet.clone(),
            content_package_hash: self.sha256.clone(),
            content_package_size: self.size,
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
            status,
            store: self.location.clone(),
            fanout,
            content_version: self.version,
        }
    }

    /// The body LDS and SE receive.
    fn fan_out_body(&self) -> FanOutBody {
        FanOutBody {
            lablet: self.lablet.clone(),
            bucket: self.location.bucket.clone(),
            key: self.location.key.clone(),
            sha256: self.sha256.clone(),
            version: self.version,
        }
    }
}

/// Check a lablet name: it becomes part of object keys, file names and node
/// metadata. A valid name is also a valid cfgsync identifier
/// ([`cfgsync_core::validate_identifier`]), narrowed to what keys and file
/// names take: 1 to 128 of `A-Z a-z 0-9 - _ .`, not starting with `.`.
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
        || cfgsync_core::validate_identifier(name).is_err()
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
        let catalog: Arc<dyn Catalog> = match config.catalog.kind {
            CatalogKind::Embedded => Arc::new(
                EmbeddedCatalog::open(config.data_dir.join("catalog.redb"))
                    .map_err(Error::Catalog)?,
            ),
            CatalogKind::Cpa => {
                let cpa =
                    CpaCatalog::from_config(&config.catalog, http.clone()).ok_or_else(|| {
                        ConfigError::new("LABLET_CPA_URL", "required when LABLET_CATALOG=cpa")
                    })?;
                // our last known records, for a CPA that cannot be read back
                let known = EmbeddedCatalog::open(config.data_dir.join("catalog.redb"))
                    .map_err(Error::Catalog)?;
                Arc::new(
                    cpa.with_retry(config.http.retry.clone())
                        .with_known(Arc::new(known)),
                )
            }
            CatalogKind::Object => Arc::new(object_catalog(&config, &http)?),
        };
        Self::build(config, catalog, http)
    }

    /// Build the pipeline around any catalog.
    pub fn with_catalog(config: LabletSyncConfig, catalog: Arc<dyn Catalog>) -> Result<Self> {
        let http = http_client(&config)?;
        Self::build(config, catalog, http)
    }

    /// Every client from its own part of `config`, all sharing `http`.
    fn build(
        config: LabletSyncConfig,
        catalog: Arc<dyn Catalog>,
        http: reqwest::Client,
    ) -> Result<Self> {
        let tmp_dir = prepare_data_dir(&config.data_dir)?;
        let store =
            PackageStore::from_config(&config, http.clone()).map_err(|source| Error::Store {
                lablet: "*".to_owned(),
                source,
            })?;
        // the retry queue and the record outbox share one place: objects in
        // an S3 store (shared by replicas), else one local file
        let rows: Arc<dyn QueueStore> = if store.shared().replicated() {
            Arc::new(ObjectQueue::new(store.shared().clone()))
        } else {
            let db = Arc::new(DbFile::new(config.data_dir.join("retry-queue.redb")));
            Arc::new(
                RedbQueue::open(db, &[PENDING, RECORDS]).map_err(|source| Error::Queue {
                    lablet: "*".to_owned(),
                    source,
                })?,
            )
        };
        let queue = RetryQueue::new(Arc::clone(&rows));
        let outbox = Outbox::new(rows);
        let retry = &config.http.retry;
        let locks = Locks::new(store.shared(), config.lock_dir(), &config.lease);
        Ok(Self {
            resolver: ResolverClient::new(http.clone(), &config.resolver, retry.clone()),
            mosaic: MosaicClient::new(http.clone(), &config.mosaic, retry.clone()),
            fanout: FanOutClient::new(http, &config.fanout, retry.clone()),
            store,
            queue,
            outbox,
            catalog,
            locks,
            metrics: Metrics::default(),
            tmp_dir,
            config,
        })
    }

    /// The catalog results are recorded in.
    pub fn catalog(&self) -> Arc<dyn Catalog> {
        Arc::clone(&self.catalog)
    }

    /// The fan-out deliveries waiting in the durable retry queue.
    pub async fn pending_deliveries(&self) -> Result<Vec<QueuedDelivery>> {
        self.queue.pending().await.map_err(|source| Error::Queue {
            lablet: "*".to_owned(),
            source,
        })
    }

    /// The catalog records kept in the outbox until they land.
    pub async fn pending_records(&self) -> Result<Vec<PendingRecord>> {
        self.outbox.kept().await.map_err(|source| Error::Outbox {
            lablet: "*".to_owned(),
            source,
        })
    }

    /// The package store.
    pub fn store(&self) -> &PackageStore {
        &self.store
    }

    /// Uses `metrics` (e.g. [`Metrics::registered`] in a server's registry)
    /// instead of the pipeline's own.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The pipeline's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The configuration in effect.
    pub fn config(&self) -> &LabletSyncConfig {
        &self.config
    }

    pub(crate) fn queue(&self) -> &RetryQueue {
        &self.queue
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    pub(crate) fn fanout(&self) -> &FanOutClient {
        &self.fanout
    }

    pub(crate) fn locks(&self) -> &Locks {
        &self.locks
    }

    /// The catalog id of lablet `name` (`id_template`, default `{name}`). It
    /// must be a valid cfgsync identifier ([`cfgsync_core::validate_identifier`]):
    /// it travels in CPA URL paths, catalog keys and nodes' `content.json`.
    pub fn definition_id(&self, name: &str) -> Result<String> {
        let vars = Vars::from([("name".to_owned(), name.to_owned())]);
        let id = template::render(&self.config.catalog.id_template, &vars)
            .map_err(|e| Error::Config(ConfigError::new("LABLET_ID_TEMPLATE", e.to_string())))?;
        cfgsync_core::validate_identifier(&id).map_err(|e| {
            let reason = match e {
                cfgsync_core::Error::Invalid { reason, .. } => reason,
                other => other.to_string(),
            };
            Error::Config(ConfigError::new(
                "LABLET_ID_TEMPLATE",
                format!("the definition id of lablet {name} is not a valid identifier: {reason}"),
            ))
        })?;
        Ok(id)
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
        let run = Run {
            name,
            id: self.definition_id(name)?,
            progress,
            bytes,
        };
        let span = tracing::info_span!("lablet_sync", lablet = name, id = run.id.as_str());
        async {
            let started = Instant::now();
            let result = self.sync_locked(&run).await;
            if result.is_ok() {
                self.drain_other_lablets(name).await;
            }
            self.metrics.sync(&result, started.elapsed());
            result
        }
        .instrument(span)
        .await
    }

    /// The six stages. Resolve (a read-only query) runs first, so a name the
    /// resolver does not know claims nothing and leaves no lock behind; then
    /// the lablet's storage key is claimed (a key another lablet owns is
    /// refused here, before anything is stored) and locked; the other five
    /// stages run under the lock. An S3 lease lost mid-sync stops the sync at
    /// once, and before each visible step (store, fan-out, record).
    async fn sync_locked(&self, run: &Run<'_>) -> Result<SyncReport> {
        let vars = self.resolve(run).await?;
        let key = self.storage_key(run.name)?;
        self.claim_key(run.name, &key).await?;
        let guard = self.lock(run.name, &key).await?;
        // before this run opens an upload of its own (all in the journal)
        self.abort_abandoned_uploads(run.name).await;
        let result = tokio::select! {
            biased;
            () = guard.lost() => Err(lease_lost(run.name, &key)),
            result = self.run_stages(run, &vars, &key, &guard) => result,
        };
        guard.release().await;
        result
    }

    /// Download to record, holding `guard` on `key`. On S3 the upload may run
    /// during the download ([`OverlappedUpload`]); it is completed in the store
    /// stage, after inspect accepted the package, and aborted on every other
    /// way out (a dropped upload aborts itself, so a lost lease aborts it too).
    async fn run_stages(
        &self,
        run: &Run<'_>,
        vars: &Vars,
        key: &StoreLocation,
        guard: &LockGuard,
    ) -> Result<SyncReport> {
        let still_held = || {
            if guard.is_lost() {
                Err(lease_lost(run.name, key))
            } else {
                Ok(())
            }
        };
        let (mut download, mut overlapped) = self.download(run, vars).await?;
        let inspected = match self.inspect(run, vars, &mut download).await {
            Ok(info) => still_held().map(|()| info),
            Err(err) => Err(err),
        };
        let info = match inspected {
            Ok(info) => info,
            Err(err) => {
                if let Some(upload) = overlapped.as_mut() {
                    upload.abort().await;
                }
                return Err(err);
            }
        };
        let (package, upload) = self
            .store_package(run, vars, &download, &info, overlapped)
            .await?;
        drop(download); // the temp file
        still_held()?;
        let fanout = self.fan_out(run, vars, &package).await?;
        still_held()?;
        let definition = self.record(run, &package, info, fanout).await?;
        Ok(SyncReport {
            definition,
            uploaded: upload.uploaded,
            uploaded_bytes: upload.bytes,
        })
    }

    /// The storage key of lablet `name` (its location with `{sha256}`
    /// unrendered): the unit of locking and uniqueness.
    pub(crate) fn storage_key(&self, name: &str) -> Result<StoreLocation> {
        self.store
            .storage_key(&self.config.store.location, name)
            .map_err(|source| Error::Store {
                lablet: name.to_owned(),
                source,
            })
    }

    /// Claims `key` for lablet `name`, refusing a key another lablet owns.
    async fn claim_key(&self, name: &str, key: &StoreLocation) -> Result<()> {
        match claim(self.store.shared(), key, name).await {
            Ok(Claimed::Owned) => Ok(()),
            Ok(Claimed::Taken(owner)) => Err(Error::KeyTaken {
                lablet: name.to_owned(),
                key: key.url.clone(),
                owner,
                template: self.config.store.location.clone(),
            }),
            Err(source) => Err(Error::Lease {
                lablet: name.to_owned(),
                key: key.url.clone(),
                source,
            }),
        }
    }

    /// The stage helper: tells `progress` the stage started, runs `work` in the
    /// stage's span, counts and times the outcome, and turns a failure into the
    /// crate error naming the lablet. A failure counts under the stage its error
    /// names (the store stage asks the catalog first, and that fails as `record`).
    async fn stage<T>(
        &self,
        run: &Run<'_>,
        stage: Stage,
        work: impl Future<Output = Result<T, Failure>>,
    ) -> Result<T> {
        (run.progress)(stage);
        let started = Instant::now();
        let result = work
            .instrument(tracing::info_span!("stage", stage = stage.as_str()))
            .await
            .map_err(|failure| failure.named(run.name));
        let counted = result
            .as_ref()
            .err()
            .and_then(Error::stage)
            .unwrap_or(stage);
        self.metrics
            .stage(counted, result.is_ok(), started.elapsed());
        match &result {
            Ok(_) => tracing::info!(stage = stage.as_str(), "stage done"),
            Err(err) => tracing::warn!(stage = counted.as_str(), error = %err, "stage failed"),
        }
        result
    }

    /// Stage resolve: the resolver's variables on top of the base ones.
    async fn resolve(&self, run: &Run<'_>) -> Result<Vars> {
        self.stage(run, Stage::Resolve, async {
            let mut vars = self.base_vars(run);
            for (k, v) in self.resolver.resolve(&vars).await? {
                vars.entry(k).or_insert(v);
            }
            Ok(vars)
        })
        .await
    }

    /// Stage download: the package streamed to a temp file, hashed on the way;
    /// on S3, also fed to a multipart upload as it arrives when nothing is
    /// stored yet or the answer proves the package changed (see
    /// [`overlap_wanted`]). Returns that upload when all its parts landed.
    async fn download(
        &self,
        run: &Run<'_>,
        vars: &Vars,
    ) -> Result<(DownloadedPackage, Option<OverlappedUpload>)> {
        self.stage(run, Stage::Download, async {
            let (url, setting) = self.download_url(vars)?;
            let on_bytes = |done, total| (run.bytes)(Stage::Download, done, total);
            let Some((mut upload, prior)) = self.prepare_overlap(run).await? else {
                let package = self
                    .mosaic
                    .download(&url, &setting, &self.tmp_dir, &on_bytes, None)
                    .await?;
                self.metrics.downloaded(package.size);
                return Ok((package, None));
            };
            let wants = move |upstream: &Upstream| overlap_wanted(prior.as_ref(), upstream);
            let (sender, receiver) = tokio::sync::mpsc::channel(FEED_CHUNKS);
            let tee = Tee::new(sender, &wants);
            let on_sent = |done| (run.bytes)(Stage::Store, done, None);
            let (package, fed) = tokio::join!(
                self.mosaic
                    .download(&url, &setting, &self.tmp_dir, &on_bytes, Some(tee)),
                upload.feed(receiver, &on_sent),
            );
            // a failed download ended the feed without its end: aborted there
            let mut package = package?;
            fed?;
            self.metrics.downloaded(package.size);
            if !upload.is_ready() && package.kept.is_some() {
                // the store stage would upload the file: it must be whole
                package = self.download_whole(&url, &setting, &package).await?;
            }
            Ok((package, upload.is_ready().then_some(upload)))
        })
        .await
    }

    /// The rendered download URL and the setting it comes from.
    fn download_url(&self, vars: &Vars) -> Result<(String, String), DownloadError> {
        let url = template::render(&self.config.mosaic.download_url, vars)?;
        let setting = crate::http::setting_of(
            &self.config.mosaic.download_url,
            "{MOSAIC_BASE_URL}",
            "MOSAIC_BASE_URL from the resolver",
            "LABLET_DOWNLOAD_URL",
        );
        Ok((url, setting))
    }

    /// `first` downloaded again, whole, into a temp file of its own; its bytes
    /// must be `first`'s (the ones uploaded), else [`DownloadError::Changed`].
    async fn download_whole(
        &self,
        url: &str,
        setting: &str,
        first: &DownloadedPackage,
    ) -> Result<DownloadedPackage, DownloadError> {
        let whole = self
            .mosaic
            .download(url, setting, &self.tmp_dir, &|_, _| {}, None)
            .await?;
        if whole.sha256 != first.sha256 || whole.size != first.size {
            return Err(DownloadError::Changed {
                url: url.to_owned(),
                first: first.sha256.clone(),
                second: whole.sha256,
            });
        }
        Ok(whole)
    }

    /// The upload fed during the download and what is stored at its location
    /// now; `None` when the store takes whole files only (`file://`) or the
    /// location names the package's `{sha256}` (unknown before the download).
    async fn prepare_overlap(
        &self,
        run: &Run<'_>,
    ) -> Result<Option<(OverlappedUpload, Option<StoredObject>)>, StoreError> {
        let Ok(loc) = self.store.location(&self.config.store.location, run.name) else {
            return Ok(None);
        };
        let Some(upload) = self.store.overlapped(run.name, &loc).await? else {
            return Ok(None);
        };
        let prior = self.store.stored(&loc).await?;
        Ok(Some((upload, prior)))
    }

    /// Stage inspect: the ADR-025 fields, read on a blocking thread. A
    /// download that kept only what inspect reads (see `mosaic::kept`) is
    /// inspected as it is; should inspect read anything else, its verdict is
    /// dropped, the package downloaded again whole (replacing `download`;
    /// it must have the same bytes) and inspected whole.
    async fn inspect(
        &self,
        run: &Run<'_>,
        vars: &Vars,
        download: &mut DownloadedPackage,
    ) -> Result<PackageInfo> {
        let limits = self.config.inspect.clone();
        self.stage(run, Stage::Inspect, async move {
            if let Some(kept) = download.kept.clone() {
                let path = download.path.to_path_buf();
                let (size, limits) = (download.size, limits.clone());
                let missed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let seen = Arc::clone(&missed);
                let inspected = tokio::task::spawn_blocking(move || {
                    let file = std::fs::File::open(&path).map_err(InspectError::Io)?;
                    let source = KeptFile::new(file, kept, size, seen);
                    inspect_source(Box::new(source), &limits)
                })
                .await
                .map_err(|e| Failure::Local {
                    what: "inspect task".to_owned(),
                    source: std::io::Error::other(e),
                })?;
                if !missed.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(inspected?);
                }
                tracing::info!(
                    "inspect reads parts of the package the overlapped download did not keep: downloading it whole"
                );
                let (url, setting) = self.download_url(vars)?;
                *download = self.download_whole(&url, &setting, download).await?;
            }
            let path = download.path.to_path_buf();
            let inspected = tokio::task::spawn_blocking(move || inspect_package(&path, &limits))
                .await
                .map_err(|e| Failure::Local {
                    what: "inspect task".to_owned(),
                    source: std::io::Error::other(e),
                })?;
            Ok(inspected?)
        })
        .await
    }

    /// Stage store: ask the catalog for the content version, write the record
    /// down in the outbox, then complete the upload fed during the download, or
    /// upload now unless the store holds the bytes already.
    async fn store_package(
        &self,
        run: &Run<'_>,
        vars: &Vars,
        download: &DownloadedPackage,
        info: &PackageInfo,
        mut overlapped: Option<OverlappedUpload>,
    ) -> Result<(Package, UploadOutcome)> {
        self.stage(run, Stage::Store, async {
            let started = Instant::now();
            let intent = self.store_intent(run, vars, download, info).await;
            tracing::debug!(ms = started.elapsed().as_millis(), "outbox intent written");
            let package = match intent {
                Ok(package) => package,
                Err(failure) => {
                    if let Some(upload) = overlapped.as_mut() {
                        upload.abort().await;
                    }
                    return Err(failure);
                }
            };
            let sha256 = &package.sha256;
            let uploaded = match overlapped {
                Some(upload) => {
                    self.complete_overlapped(run, upload, &package, download)
                        .await
                }
                None => {
                    let on_bytes = |done| (run.bytes)(Stage::Store, done, Some(download.size));
                    self.store
                        .upload_observed(
                            run.name,
                            &package.location,
                            &download.path,
                            sha256,
                            &download.upstream,
                            &on_bytes,
                        )
                        .await
                }
            };
            if uploaded.is_err() {
                self.outbox.store_failed(run.name, sha256).await;
            }
            let upload = uploaded?;
            self.metrics.uploaded(upload.bytes, !upload.uploaded);
            Ok((package, upload))
        })
        .await
    }

    /// The package to store, its record written down in the outbox first. The
    /// catalog is asked before the store changes: an unreachable catalog fails
    /// the sync (as `record`) while the stored package still matches the record.
    async fn store_intent(
        &self,
        run: &Run<'_>,
        vars: &Vars,
        download: &DownloadedPackage,
        info: &PackageInfo,
    ) -> Result<Package, Failure> {
        let previous = self.catalog.get(&run.id).await?;
        let sha256 = &download.sha256;
        let package = Package {
            lablet: run.name.to_owned(),
            location: self.store.location_for(
                &self.config.store.location,
                run.name,
                Some(sha256),
            )?,
            sha256: sha256.clone(),
            size: download.size,
            version: next_content_version(previous.as_ref(), sha256),
        };
        let intent = package.record(
            info.clone(),
            self.not_yet_delivered(vars),
            SyncStatus::Stale,
        );
        self.outbox
            .write_intent(&run.id, intent)
            .await
            .map_err(Failure::Outbox)?;
        Ok(package)
    }

    /// Completes the upload fed during the download; aborts it instead when the
    /// store holds these bytes already (another writer stored them meanwhile).
    async fn complete_overlapped(
        &self,
        run: &Run<'_>,
        mut upload: OverlappedUpload,
        package: &Package,
        download: &DownloadedPackage,
    ) -> Result<UploadOutcome, StoreError> {
        let started = Instant::now();
        let stored = if upload.location() == &package.location {
            let stored = self.store.stored_sha256(&package.location).await;
            tracing::debug!(ms = started.elapsed().as_millis(), "stored digest read");
            stored
        } else {
            Err(StoreError::Config(format!(
                "the upload went to {}, the package belongs at {}",
                upload.location().url,
                package.location.url
            )))
        };
        match stored {
            Ok(Some(stored)) if stored == package.sha256 => {
                upload.abort().await;
                Ok(UploadOutcome {
                    uploaded: false,
                    bytes: 0,
                })
            }
            Ok(_) => {
                let bytes = upload.complete(&package.sha256, &download.upstream).await?;
                (run.bytes)(Stage::Store, bytes, Some(download.size));
                Ok(UploadOutcome {
                    uploaded: true,
                    bytes,
                })
            }
            Err(err) => {
                upload.abort().await;
                Err(err)
            }
        }
    }

    /// Stage fan-out: POST LDS and SE in parallel; queue whatever still fails.
    async fn fan_out(
        &self,
        run: &Run<'_>,
        vars: &Vars,
        package: &Package,
    ) -> Result<Vec<TargetResult>> {
        self.stage(run, Stage::FanOut, async {
            let body = package.fan_out_body();
            let targets = self.targets(vars)?;
            let attempts = targets.iter().map(|(target, url)| {
                let body = &body;
                async move { (*target, url, self.fanout.deliver(target, url, body).await) }
            });
            let mut results = Vec::new();
            for (target, url, (attempts, delivered)) in futures::future::join_all(attempts).await {
                let mut result = TargetResult {
                    target: target.to_owned(),
                    status: DeliveryStatus::Delivered,
                    attempts,
                    error: None,
                };
                match delivered {
                    // a fresh delivery supersedes anything queued for this target
                    Ok(()) => self.queue.remove(target, &body.lablet).await,
                    Err(err) => {
                        tracing::warn!(target, error = %err, "fan-out target failed; queued for retry");
                        result.status = DeliveryStatus::Queued;
                        result.error = Some(err.to_string());
                        self.queue
                            .push(QueuedDelivery {
                                target: target.to_owned(),
                                definition_id: run.id.clone(),
                                url: url.clone(),
                                body: body.clone(),
                                attempts,
                                last_error: err.to_string(),
                                queued_at: now_rfc3339(),
                            })
                            .await
                    }
                }
                .map_err(Failure::Queue)?;
                if result.status == DeliveryStatus::Queued {
                    self.metrics.queued();
                }
                results.push(result);
            }
            Ok(results)
        })
        .await
    }

    /// Stage record: the result on the catalog; the outbox settles with the
    /// outcome.
    async fn record(
        &self,
        run: &Run<'_>,
        package: &Package,
        info: PackageInfo,
        fanout: Vec<TargetResult>,
    ) -> Result<LabletDefinition> {
        self.stage(run, Stage::Record, async {
            let delivered = fanout.iter().all(|t| t.status == DeliveryStatus::Delivered);
            let status = if delivered {
                SyncStatus::Synced
            } else {
                SyncStatus::Stale
            };
            let content = package.record(info, fanout, status);
            let recorded = self.catalog.record(&run.id, &content).await;
            self.outbox
                .settle(&run.id, content, recorded.as_ref().err())
                .await;
            let definition = recorded?;
            if let Some(msg) = definition.content.stale_message() {
                tracing::warn!(lablet = run.name, "{msg}");
            }
            Ok(definition)
        })
        .await
    }

    /// Waits (bounded, `LABLET_LOCK_WAIT_SECS`) for the lock of `key`: two
    /// syncs of one storage key never interleave.
    async fn lock(&self, name: &str, key: &StoreLocation) -> Result<LockGuard> {
        let started = Instant::now();
        match self.locks.lock(name, key).await {
            Ok(Ok(guard)) => Ok(guard),
            Ok(Err(busy)) => Err(Error::Busy {
                lablet: name.to_owned(),
                key: key.url.clone(),
                holder: busy.holder,
                holder_lablet: busy.lablet,
                waited_secs: started.elapsed().as_secs(),
            }),
            Err(source) => Err(Error::Lease {
                lablet: name.to_owned(),
                key: key.url.clone(),
                source,
            }),
        }
    }

    /// Uploads of this lablet a killed run left open (we hold its lock, so none
    /// of them is live); best effort, the sync does not depend on it.
    async fn abort_abandoned_uploads(&self, name: &str) {
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
    }

    /// `{name}`, `{id}` and the base URLs of the configured services.
    fn base_vars(&self, run: &Run<'_>) -> Vars {
        let c = &self.config;
        let mut vars = Vars::from([
            ("name".to_owned(), run.name.to_owned()),
            ("id".to_owned(), run.id.clone()),
            (
                "resolver_url".to_owned(),
                c.resolver.url.trim_end_matches('/').to_owned(),
            ),
        ]);
        for (key, value) in [
            ("lds_url", &c.fanout.lds_url),
            ("se_url", &c.fanout.se_url),
            ("cpa_url", &c.catalog.cpa_url),
        ] {
            if let Some(v) = value {
                vars.insert(key.to_owned(), v.trim_end_matches('/').to_owned());
            }
        }
        vars
    }

    /// The configured targets with their rendered URLs.
    fn targets(&self, vars: &Vars) -> Result<Vec<(&'static str, String)>, ConfigError> {
        self.config
            .fanout
            .targets()
            .map(|(target, _, tpl)| {
                template::render(tpl, vars)
                    .map(|url| (target, url))
                    .map_err(|e| ConfigError::new(format!("{target}_sync_url"), e.to_string()))
            })
            .collect()
    }

    /// The fan-out results a record written before the fan-out carries.
    fn not_yet_delivered(&self, vars: &Vars) -> Vec<TargetResult> {
        self.targets(vars)
            .unwrap_or_default()
            .into_iter()
            .map(|(target, _)| TargetResult {
                target: target.to_owned(),
                status: DeliveryStatus::Queued,
                attempts: 0,
                error: Some("not delivered: the sync stopped before its fan-out".to_owned()),
            })
            .collect()
    }
}

/// Whether to upload while downloading, decided on Mosaic's answer: when
/// nothing is stored at the location, its digest is unknown, or the answer
/// proves the package differs from the stored one (another `Content-Length`
/// than the object's size, or another strong `ETag` than the one the sidecar
/// kept). Otherwise the package is downloaded whole and compared first, so an
/// unchanged package uploads nothing.
fn overlap_wanted(prior: Option<&StoredObject>, upstream: &Upstream) -> bool {
    let Some(prior) = prior else {
        return true;
    };
    if prior.sha256.is_none() || upstream.content_length.is_some_and(|len| len != prior.size) {
        return true;
    }
    let strong = |etag: &str| !etag.starts_with("W/");
    match (prior.upstream_etag.as_deref(), upstream.etag.as_deref()) {
        (Some(old), Some(new)) => strong(old) && strong(new) && old != new,
        _ => false,
    }
}

/// Partial downloads untouched for this long belong to a crashed run.
const STALE_DOWNLOAD_AGE: Duration = Duration::from_secs(3600);

/// Creates the data and temp directories and removes the downloads a crashed
/// run left (an active download, here or in another process sharing the data
/// dir, writes at least once per read timeout); returns the temp directory.
fn prepare_data_dir(data_dir: &Path) -> Result<PathBuf> {
    let local = |what: String| move |source| Error::Local { what, source };
    std::fs::create_dir_all(data_dir)
        .map_err(local(format!("create data dir {}", data_dir.display())))?;
    let tmp_dir = data_dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(local("create temp dir".to_owned()))?;
    remove_stale_downloads(&tmp_dir, STALE_DOWNLOAD_AGE);
    Ok(tmp_dir)
}

fn remove_stale_downloads(tmp_dir: &Path, age: Duration) {
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

/// The object catalog in the package store's own bucket, under the store
/// URL's prefix and `object_prefix`.
fn object_catalog(config: &LabletSyncConfig, http: &reqwest::Client) -> Result<ObjectCatalog> {
    let store = PackageStore::from_config(config, http.clone()).map_err(|source| Error::Store {
        lablet: "*".to_owned(),
        source,
    })?;
    let area = store.shared();
    if !area.replicated() {
        return Err(Error::Config(ConfigError::new(
            "LABLET_CATALOG",
            format!(
                "`object` keeps definitions in an s3:// store (conditional writes), but the store is {}; use `embedded` with a file:// store",
                config.store_url()
            ),
        )));
    }
    let prefix = format!(
        "{}/{}",
        area.prefix(),
        config.catalog.object_prefix.trim_matches('/')
    );
    Ok(ObjectCatalog::new(area.store().clone(), &prefix))
}

fn lease_lost(lablet: &str, key: &StoreLocation) -> Error {
    Error::LeaseLost {
        lablet: lablet.to_owned(),
        key: key.url.clone(),
    }
}

fn http_client(config: &LabletSyncConfig) -> Result<reqwest::Client> {
    config
        .http_client()
        .map_err(|e| Error::Config(ConfigError::new("http client", e.to_string())))
}
