//! [`ObjectRegistrationStore`]: registrations in any `object_store`, shared by
//! server replicas through conditional writes (feature `object-store`).

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder as _, ExponentialBuilder};
use cfgsync_core::NodeRegistration;
use futures::{StreamExt, TryStreamExt};
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::view::RegistrationView;
use crate::{Error, RegistrationSnapshot, RegistrationStore, Result};

/// Settings of an [`ObjectRegistrationStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreOptions {
    /// How often a replica lists the shared log for others' writes.
    /// Default 500 ms.
    pub poll_interval: Duration,
    /// The least time between two extra listings made because a node this
    /// replica does not know asked for its files
    /// ([`RegistrationStore::refresh_unknown`]). Default 250 ms.
    pub unknown_refresh_interval: Duration,
    /// Conditional creates one commit may try while other replicas keep taking
    /// the next log number first, the first included. Default 50.
    pub max_commit_attempts: usize,
    /// Time one commit may spend retrying such conflicts. Default 10 s.
    pub max_commit_time: Duration,
}

impl Default for ObjectStoreOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            unknown_refresh_interval: Duration::from_millis(250),
            max_commit_attempts: 50,
            max_commit_time: Duration::from_secs(10),
        }
    }
}

impl ObjectStoreOptions {
    /// Sets how often a replica checks for others' writes.
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets the least time between two listings made for unknown nodes.
    #[must_use]
    pub fn with_unknown_refresh_interval(mut self, interval: Duration) -> Self {
        self.unknown_refresh_interval = interval;
        self
    }

    /// Bounds the conflict retries of one commit: at most `attempts`
    /// conditional creates (at least one) within `time`.
    #[must_use]
    pub fn with_commit_bounds(mut self, attempts: usize, time: Duration) -> Self {
        self.max_commit_attempts = attempts;
        self.max_commit_time = time;
        self
    }

    /// The delays between conflicting commits: exponential from 1 ms to 8 ms,
    /// each plus a random jitter of up to itself, so replicas that collided
    /// spread apart; bounded in attempts and in total delay.
    fn commit_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(8))
            .with_jitter()
            .with_max_times(self.max_commit_attempts.saturating_sub(1))
            .with_total_delay(Some(self.max_commit_time))
    }
}

/// Registrations in any [`ObjectStore`] (S3, RustFS, MinIO, ... anything with
/// conditional writes), shared by several server replicas.
///
/// Layout under the prefix: a **log** of commits, `log/<generation>.json`
/// (the generation as 20 digits, so keys sort by number), each holding the
/// registrations one replica committed together. A commit is one conditional
/// create (`PutMode::Create`) of the next number: when another replica took
/// it first, this one reads what that replica wrote and tries the number after
/// (jittered backoff, bounded by [`ObjectStoreOptions::max_commit_attempts`]
/// and [`ObjectStoreOptions::max_commit_time`]). The log's numbers are the
/// generations, so every replica sees the same changes in the same order.
///
/// **Group commit**: registrations that arrive while a commit is in flight on
/// a replica wait for it and then go out together in the next one, so a burst
/// of N registrations costs a few writes, not N.
///
/// **Reading**: a replica lists the log after the last number it applied
/// (`start-after`, so a listing returns only what is new) every
/// [`ObjectStoreOptions::poll_interval`], and also when a node it does not
/// know asks for its files ([`RegistrationStore::refresh_unknown`]: at most
/// once per [`ObjectStoreOptions::unknown_refresh_interval`], one listing
/// shared by every request that arrives meanwhile), so a node registered on
/// any replica is served by every replica on its first request.
///
/// **Upgrading** a prefix written by the previous layout (a `generation`
/// counter plus one `nodes/<identifier>.json` per node): a replica that opens
/// it and finds the log empty imports every legacy node object as log entry 1
/// with the same conditional create, so exactly one replica's import wins and
/// the others read it. Legacy objects are only read, never changed or
/// removed; one that does not decode is skipped with a warning naming its key.
#[derive(Debug)]
pub struct ObjectRegistrationStore {
    shared: Arc<Shared>,
    poller: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    store: Arc<dyn ObjectStore>,
    log_prefix: Path,
    /// Where the previous layout kept one object per node (`nodes/`), read
    /// once when the log is empty.
    legacy_prefix: Path,
    view: RegistrationView,
    options: ObjectStoreOptions,
    /// The last log number this replica applied to its view.
    applied: tokio::sync::Mutex<u64>,
    /// Registrations accepted by this replica and not yet committed.
    pending: std::sync::Mutex<Pending>,
    /// Held by the one commit in flight: the highest write sequence number
    /// committed so far.
    committed: tokio::sync::Mutex<u64>,
    /// When the last listing for an unknown node started.
    unknown: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

#[derive(Debug, Default)]
struct Pending {
    next_seq: u64,
    writes: Vec<PendingWrite>,
}

#[derive(Debug)]
struct PendingWrite {
    seq: u64,
    registration: Arc<NodeRegistration>,
}

/// One log entry.
#[derive(Debug, Serialize, Deserialize)]
struct Commit<R> {
    registrations: Vec<R>,
}

impl Drop for ObjectRegistrationStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl ObjectRegistrationStore {
    /// Opens the store under `prefix` of `store`, loads the current set, and starts
    /// polling for other replicas' writes.
    pub async fn open(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        options: ObjectStoreOptions,
    ) -> Result<Self> {
        let prefix = Path::from(prefix);
        let shared = Arc::new(Shared {
            name: format!("object store {store} /{prefix}"),
            log_prefix: prefix.clone().join("log"),
            legacy_prefix: prefix.join("nodes"),
            store,
            view: RegistrationView::new([], 0),
            options: options.clone(),
            applied: tokio::sync::Mutex::new(0),
            pending: std::sync::Mutex::new(Pending::default()),
            committed: tokio::sync::Mutex::new(0),
            unknown: tokio::sync::Mutex::new(None),
        });
        shared.load().await?;
        let poller = tokio::spawn(poll(Arc::downgrade(&shared), options.poll_interval));
        Ok(Self { shared, poller })
    }

    /// Re-reads the shared state now instead of waiting for the next poll.
    pub async fn refresh(&self) -> Result<()> {
        self.shared.refresh().await
    }
}

async fn poll(shared: Weak<Shared>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if let Err(error) = shared.refresh().await {
            tracing::warn!(store = %shared.name, %error, "registration refresh failed");
        }
    }
}

impl Shared {
    fn error(&self, operation: &'static str, source: object_store::Error) -> Error {
        Error::store(self.name.clone(), operation, source)
    }

    fn entry_path(&self, generation: u64) -> Path {
        self.log_prefix
            .clone()
            .join(PathPart::from(format!("{generation:020}.json")))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn refresh(&self) -> Result<()> {
        let mut applied = self.applied.lock().await;
        self.catch_up(&mut applied).await
    }

    /// The first read when opening: the log, or, when it is empty, the
    /// legacy node objects imported as its first entry.
    async fn load(&self) -> Result<()> {
        let mut applied = self.applied.lock().await;
        self.catch_up(&mut applied).await?;
        if *applied == 0 {
            self.import_legacy(&mut applied).await?;
        }
        Ok(())
    }

    /// Imports the previous layout's `nodes/*.json` objects as log entry 1
    /// (a conditional create: when another replica imported first, reads its
    /// entry instead). Objects that do not decode are skipped with a warning.
    async fn import_legacy(&self, applied: &mut u64) -> Result<()> {
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.legacy_prefix))
            .try_collect()
            .await
            .map_err(|e| self.error("list legacy", e))?;
        let read: Vec<Option<NodeRegistration>> = futures::stream::iter(metas)
            .filter(|meta| {
                std::future::ready(
                    meta.location
                        .filename()
                        .is_some_and(|name| name.ends_with(".json")),
                )
            })
            .map(|meta| async move {
                let bytes = match self.store.get(&meta.location).await {
                    Ok(found) => found.bytes().await.map_err(|e| self.error("get legacy", e))?,
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(self.error("get legacy", e)),
                };
                match serde_json::from_slice::<NodeRegistration>(&bytes) {
                    Ok(registration) => Ok(Some(registration)),
                    Err(error) => {
                        tracing::warn!(store = %self.name, key = %meta.location, %error, "legacy registration object does not decode; skipped");
                        Ok(None)
                    }
                }
            })
            .buffered(16)
            .try_collect()
            .await?;
        let mut registrations: Vec<NodeRegistration> = read.into_iter().flatten().collect();
        if registrations.is_empty() {
            return Ok(());
        }
        registrations.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        registrations.dedup_by(|a, b| a.identifier == b.identifier);
        let body = serde_json::to_vec(&Commit {
            registrations: registrations.iter().collect(),
        })
        .map_err(|e| Error::Store {
            store: self.name.clone(),
            operation: "import legacy",
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        let put = self
            .store
            .put_opts(
                &self.entry_path(1),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => {
                tracing::info!(store = %self.name, nodes = registrations.len(), "imported legacy registrations as log entry 1");
                self.view
                    .insert_all(registrations.into_iter().map(Arc::new), 1);
                *applied = 1;
                Ok(())
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => self.probe(applied).await,
            Err(e) => Err(self.error("import legacy", e)),
        }
    }

    /// Lists the log after `applied`, reads the new entries in order and
    /// applies them to the view.
    async fn catch_up(&self, applied: &mut u64) -> Result<()> {
        let offset = self.entry_path(*applied);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list_with_offset(Some(&self.log_prefix), &offset)
            .try_collect()
            .await
            .map_err(|e| self.error("list", e))?;
        let mut entries: Vec<(u64, Path)> = metas
            .into_iter()
            .filter_map(|meta| {
                let number = meta
                    .location
                    .filename()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                (number > *applied).then_some((number, meta.location))
            })
            .collect();
        entries.sort_unstable_by_key(|(number, _)| *number);
        // Numbers are taken one after another; read only a gapless run (a gap
        // is a listing that raced a create, filled by the next listing).
        let mut expected = *applied + 1;
        entries.retain(|(number, _)| {
            let keep = *number == expected;
            expected += u64::from(keep);
            keep
        });
        let Some(&(last, _)) = entries.last() else {
            return Ok(());
        };
        let commits: Vec<Commit<NodeRegistration>> = futures::stream::iter(entries)
            .map(|(_, path)| async move {
                self.read_entry(&path).await?.ok_or_else(|| Error::Store {
                    store: self.name.clone(),
                    operation: "get",
                    message: format!("{path} was listed but is gone"),
                    source: None,
                })
            })
            .buffered(16)
            .try_collect()
            .await?;
        self.view.insert_all(
            commits
                .into_iter()
                .flat_map(|commit| commit.registrations)
                .map(Arc::new),
            last,
        );
        *applied = last;
        Ok(())
    }

    /// One log entry (`None` when there is none at `path`).
    async fn read_entry(&self, path: &Path) -> Result<Option<Commit<NodeRegistration>>> {
        let bytes = match self.store.get(path).await {
            Ok(found) => found.bytes().await.map_err(|e| self.error("get", e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("get", e)),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Store {
                store: self.name.clone(),
                operation: "get",
                message: format!("{path} is not a registration log entry: {e}"),
                source: Some(Box::new(e)),
            })
    }

    /// Reads the entries after `applied` one by one until one is missing: the
    /// cheap catch-up after losing a number to another replica, which has
    /// just written one or a few entries (a known key costs one `GET`, a
    /// listing walks the log).
    async fn probe(&self, applied: &mut u64) -> Result<()> {
        loop {
            let Some(commit) = self.read_entry(&self.entry_path(*applied + 1)).await? else {
                return Ok(());
            };
            *applied += 1;
            self.view
                .insert_all(commit.registrations.into_iter().map(Arc::new), *applied);
        }
    }

    /// Makes write number `seq` part of the shared log: either a commit that
    /// finished while this one waited already covered it, or this call commits
    /// every write pending at that moment as one log entry.
    async fn commit(&self, seq: u64) -> Result<()> {
        let mut committed = self.committed.lock().await;
        if *committed >= seq {
            return Ok(());
        }
        let mut writes = std::mem::take(&mut self.pending().writes);
        match self.append(&mut writes).await {
            Ok(()) => {
                let covered = writes.iter().map(|w| w.seq).max().unwrap_or(seq);
                *committed = covered.max(seq);
                Ok(())
            }
            Err(error) => {
                // Leave the writes, before any newer ones, for the next put to
                // commit.
                let mut pending = self.pending();
                let newer = std::mem::replace(&mut pending.writes, writes);
                pending.writes.extend(newer);
                Err(error)
            }
        }
    }

    /// The body of one log entry.
    fn entry_body(&self, writes: &[PendingWrite]) -> Result<PutPayload> {
        let body = serde_json::to_vec(&Commit {
            registrations: writes.iter().map(|w| &*w.registration).collect(),
        })
        .map_err(|e| Error::Store {
            store: self.name.clone(),
            operation: "commit",
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        Ok(PutPayload::from(body))
    }

    /// Appends one log entry holding `writes` at the next free number. After
    /// losing a number to another replica, the retry also carries the writes
    /// that arrived meanwhile, so contention makes batches larger, not more.
    async fn append(&self, writes: &mut Vec<PendingWrite>) -> Result<()> {
        let mut payload = self.entry_body(writes)?;
        let mut applied = self.applied.lock().await;
        let started = Instant::now();
        let mut delays = self.options.commit_backoff().build();
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let number = *applied + 1;
            let put = self
                .store
                .put_opts(
                    &self.entry_path(number),
                    payload.clone(),
                    PutOptions::from(PutMode::Create),
                )
                .await;
            let conflict = match put {
                Ok(_) => {
                    self.view
                        .insert_all(writes.iter().map(|w| w.registration.clone()), number);
                    *applied = number;
                    return Ok(());
                }
                Err(
                    conflict @ (object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }),
                ) => conflict,
                Err(e) => return Err(self.error("commit", e)),
            };
            // Another replica took this number: read what it wrote (so the
            // next attempt aims past it), then try again.
            self.probe(&mut applied).await?;
            match delays.next() {
                Some(delay) if started.elapsed() < self.options.max_commit_time => {
                    tracing::debug!(store = %self.name, ?delay, "log number taken by another writer; retrying");
                    tokio::time::sleep(delay).await;
                    let arrived = std::mem::take(&mut self.pending().writes);
                    if !arrived.is_empty() {
                        writes.extend(arrived);
                        payload = self.entry_body(writes)?;
                    }
                }
                _ => {
                    return Err(Error::Store {
                        store: self.name.clone(),
                        operation: "commit",
                        message: format!(
                            "gave up after {attempts} attempt(s) in {:?}: other writers took the next number under {} first every time",
                            started.elapsed(),
                            self.log_prefix
                        ),
                        source: Some(Box::new(conflict)),
                    });
                }
            }
        }
    }
}

#[async_trait]
impl RegistrationStore for ObjectRegistrationStore {
    async fn put(&self, registration: NodeRegistration) -> Result<bool> {
        let shared = &self.shared;
        if !shared.view.differs(&registration) {
            return Ok(false);
        }
        let seq = {
            let mut pending = shared.pending();
            pending.next_seq += 1;
            let seq = pending.next_seq;
            pending.writes.push(PendingWrite {
                seq,
                registration: Arc::new(registration),
            });
            seq
        };
        shared.commit(seq).await?;
        Ok(true)
    }

    async fn snapshot(&self) -> Result<Arc<RegistrationSnapshot>> {
        Ok(self.shared.view.snapshot())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.view.subscribe()
    }

    async fn check(&self) -> Result<()> {
        let shared = &self.shared;
        let offset = shared.entry_path(shared.view.generation());
        match shared
            .store
            .list_with_offset(Some(&shared.log_prefix), &offset)
            .next()
            .await
        {
            Some(Err(e)) => Err(shared.error("list", e)),
            _ => Ok(()),
        }
    }

    /// One listing at most per [`ObjectStoreOptions::unknown_refresh_interval`],
    /// shared: callers queue behind the listing in flight (or the interval's
    /// end), and each that then finds a listing started after it asked uses
    /// that one's result. So a node registered on another replica is known
    /// here on its first request, which waits at most one interval plus one
    /// listing; a storm of unknown names costs one listing per interval.
    async fn refresh_unknown(&self, identifier: &str) -> Result<()> {
        let shared = &self.shared;
        let asked = tokio::time::Instant::now();
        let mut last = shared.unknown.lock().await;
        if shared.view.contains(identifier) {
            return Ok(());
        }
        if let Some(started) = *last {
            if started >= asked {
                return Ok(());
            }
            tokio::time::sleep_until(started + shared.options.unknown_refresh_interval).await;
        }
        *last = Some(tokio::time::Instant::now());
        shared.refresh().await
    }
}
