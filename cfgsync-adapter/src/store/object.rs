//! [`ObjectRegistrationStore`]: registrations in any `object_store`, shared by
//! server replicas through per-writer log streams and snapshots (feature
//! `object-store`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

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
    /// Conditional creates one commit may try while the next number of this
    /// replica's own stream is taken (only another process using the same
    /// [`writer_id`](Self::writer_id) does that), the first included.
    /// Default 50.
    pub max_commit_attempts: usize,
    /// Time one commit may spend retrying such conflicts. Default 10 s.
    pub max_commit_time: Duration,
    /// This replica's writer id: the name of its own log stream,
    /// `v2/writers/<id>/`. `None` (the default) makes a new one for each
    /// opened store (process id + 64 random bits), which is what a fleet of
    /// replicas wants. A fixed id (letters, digits, `.`, `_`, `-`; at most 64)
    /// continues its stream after a restart; no two running stores may share
    /// one.
    pub writer_id: Option<String>,
    /// Compact when this many log entries (every writer's, legacy ones
    /// included) follow the latest snapshot: the replica's poller writes a
    /// snapshot of the whole set and deletes the entries it covers. Default
    /// 256; 0 turns automatic compaction off
    /// ([`ObjectRegistrationStore::compact`] still works).
    pub compact_after_entries: u64,
    /// ... or when those entries hold this many bytes. Default 8 MiB; 0 turns
    /// this trigger off.
    pub compact_after_bytes: u64,
}

impl Default for ObjectStoreOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            unknown_refresh_interval: Duration::from_millis(250),
            max_commit_attempts: 50,
            max_commit_time: Duration::from_secs(10),
            writer_id: None,
            compact_after_entries: 256,
            compact_after_bytes: 8 << 20,
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

    /// Sets a fixed writer id (see [`writer_id`](Self::writer_id)).
    #[must_use]
    pub fn with_writer_id(mut self, id: impl Into<String>) -> Self {
        self.writer_id = Some(id.into());
        self
    }

    /// Whether `id` can be a [`writer_id`](Self::writer_id): `Err` says
    /// what a usable one looks like (a store opened with an unusable one
    /// fails with the same words).
    pub fn check_writer_id(id: &str) -> std::result::Result<(), String> {
        if valid_writer_id(id) {
            Ok(())
        } else {
            Err(format!(
                "writer id {id:?} is not usable: 1 to 64 of letters, digits, '.', '_', '-', not starting with '.'"
            ))
        }
    }

    /// Sets when the poller compacts: after `entries` log entries or `bytes`
    /// of them past the latest snapshot (0 turns that trigger off).
    #[must_use]
    pub fn with_compaction(mut self, entries: u64, bytes: u64) -> Self {
        self.compact_after_entries = entries;
        self.compact_after_bytes = bytes;
        self
    }

    /// The delays between conflicting commits: exponential from 1 ms to 8 ms,
    /// each plus a random jitter of up to itself; bounded in attempts and in
    /// total delay.
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
/// **Layout** under the prefix (`v2/`):
/// - `v2/writers/<writer>/<seq>.json`: each replica (writer) appends to its
///   own log stream, numbered 1, 2, 3, ... (20 digits); an entry holds the
///   registrations that replica committed together and a `stamp`. A commit is
///   one conditional create (`PutMode::Create`) of the writer's next number:
///   no two replicas ever race for a key, so a group commit is one `PUT`.
/// - `v2/snapshots/<n>.json`: snapshot number `n` holds the whole set and,
///   per writer, the last entry it covers. Only the newest two are kept.
///
/// **Order of two registrations of one identifier**: the higher
/// `(stamp, writer id, seq, position in the entry)` wins, on every replica,
/// whatever order it reads the streams in, so replicas converge. The stamp
/// is a hybrid logical clock: the writer's wall clock in milliseconds,
/// raised above every stamp that replica has read and above its own last
/// one; so a re-registration made on a replica that has seen the earlier one
/// always wins, and two made concurrently on replicas that had not seen each
/// other's are decided by wall clock, then writer id.
///
/// **Generation**: the sum over writers of the last entry applied (plus the
/// legacy log's number): it grows with every entry applied, and replicas
/// that have read the same entries report the same generation.
///
/// **Group commit**: registrations that arrive while a commit is in flight on
/// a replica wait for it and then go out together in the next one.
///
/// **Reading**: a replica lists `v2/` (one listing: snapshots and every
/// stream) every [`ObjectStoreOptions::poll_interval`], and also when a node
/// it does not know asks for its files ([`RegistrationStore::refresh_unknown`]:
/// at most once per [`ObjectStoreOptions::unknown_refresh_interval`], one
/// listing shared by every request that arrives meanwhile). It reads the
/// newest snapshot when it has not yet, then each stream's entries after the
/// last one it applied, in order.
///
/// **Compaction**: when the entries past the newest snapshot reach
/// [`ObjectStoreOptions::compact_after_entries`] or
/// [`ObjectStoreOptions::compact_after_bytes`], a replica's poller writes
/// snapshot `n + 1` (everything it has applied, which includes snapshot `n`)
/// by conditional create: one replica wins, the others keep theirs unwritten.
/// Only the winner then deletes the entries its snapshot covers and the
/// snapshots older than `n`. A reader that listed an entry or a snapshot
/// that is gone when it reads it lists again and picks up the newer
/// snapshot.
///
/// **Older layouts** are read: the previous log `log/<generation>.json`
/// (one log shared by all replicas) is read as a stream ordered before every
/// new entry and is never deleted (replicas of the previous version may still
/// append to it during a rolling upgrade); it can be removed by hand once a
/// snapshot covers it and no replica of that version runs. The layout before
/// that (`nodes/<identifier>.json` objects): a replica that opens a prefix
/// with nothing else imports them once as entry 1 of that log (a conditional
/// create, so exactly one import wins); objects that do not decode are
/// skipped with a warning naming the key.
#[derive(Debug)]
pub struct ObjectRegistrationStore {
    shared: Arc<Shared>,
    poller: tokio::task::JoinHandle<()>,
}

/// Listings made again, at most, when entries or snapshots vanish between a
/// listing and the reads (a compaction ran meanwhile).
const MAX_LISTINGS: usize = 5;

#[derive(Debug)]
struct Shared {
    name: String,
    store: Arc<dyn ObjectStore>,
    /// The previous layout's shared log (`log/`), read only.
    log_prefix: Path,
    /// Where the layout before that kept one object per node (`nodes/`),
    /// read once when nothing else exists.
    legacy_prefix: Path,
    /// `v2/`: the writers' streams and the snapshots.
    v2_prefix: Path,
    writer_id: Arc<str>,
    view: RegistrationView,
    options: ObjectStoreOptions,
    /// One listing at a time.
    reading: tokio::sync::Mutex<()>,
    /// What this replica has applied (short, in-memory critical sections).
    state: std::sync::Mutex<ReadState>,
    /// The highest stamp read or written (the hybrid clock's lower bound).
    stamp_seen: AtomicU64,
    /// Registrations accepted by this replica and not yet committed.
    pending: std::sync::Mutex<Pending>,
    /// Held by the one commit in flight.
    writer: tokio::sync::Mutex<WriterState>,
    /// When the last listing for an unknown node started.
    unknown: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

#[derive(Debug, Default)]
struct WriterState {
    /// The highest pending-write number committed so far.
    committed: u64,
    /// The next number of this writer's own stream.
    next: u64,
    /// The stamp of its last entry.
    stamp: u64,
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

/// The order of two registrations of one identifier: the higher one wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Order {
    stamp: u64,
    writer: Arc<str>,
    seq: u64,
    index: u32,
}

/// What a replica has applied.
#[derive(Debug, Default)]
struct ReadState {
    /// Per writer, the last entry applied.
    writers: BTreeMap<Arc<str>, u64>,
    /// The last entry of the previous layout's shared log applied.
    log: u64,
    /// The newest snapshot read (0: none).
    snapshot: u64,
    /// What that snapshot covers.
    covered: Coverage,
    /// The winning order of every identifier.
    order: HashMap<String, Order>,
    /// Writer ids, shared by the orders.
    names: HashSet<Arc<str>>,
    /// Bytes of the stream entries past the newest snapshot, as last listed.
    backlog_bytes: u64,
    /// The last listing (what a compaction may delete).
    listing: Listing,
}

#[derive(Debug, Default, Clone)]
struct Coverage {
    writers: BTreeMap<Arc<str>, u64>,
    log: u64,
}

#[derive(Debug, Default, Clone)]
struct Listing {
    snapshots: BTreeMap<u64, Path>,
    /// Per writer: (seq, key, size), by seq.
    writers: BTreeMap<String, Vec<(u64, Path, u64)>>,
}

impl ReadState {
    fn generation(&self) -> u64 {
        self.writers.values().sum::<u64>() + self.log
    }

    fn applied(&self, writer: &str) -> u64 {
        self.writers.get(writer).copied().unwrap_or(0)
    }

    fn name(&mut self, writer: &str) -> Arc<str> {
        if let Some(name) = self.names.get(writer) {
            return name.clone();
        }
        let name: Arc<str> = Arc::from(writer);
        self.names.insert(name.clone());
        name
    }

    fn set_applied(&mut self, writer: &str, seq: u64) {
        let name = self.name(writer);
        let applied = self.writers.entry(name).or_default();
        *applied = (*applied).max(seq);
    }

    /// Applies registrations by the order rule; the ones that won go to
    /// `winners`.
    fn merge(
        &mut self,
        items: impl IntoIterator<Item = (Arc<NodeRegistration>, Order)>,
        winners: &mut Vec<Arc<NodeRegistration>>,
    ) {
        for (registration, order) in items {
            match self.order.get_mut(registration.identifier.as_str()) {
                Some(held) if *held >= order => {}
                Some(held) => {
                    *held = order;
                    winners.push(registration);
                }
                None => {
                    self.order.insert(registration.identifier.clone(), order);
                    winners.push(registration);
                }
            }
        }
    }

    /// Entries past the newest snapshot.
    fn backlog_entries(&self) -> u64 {
        self.writers
            .iter()
            .map(|(w, seq)| seq.saturating_sub(self.covered.writers.get(w).copied().unwrap_or(0)))
            .sum::<u64>()
            + self.log.saturating_sub(self.covered.log)
    }
}

/// One log entry (both layouts: the previous one has no stamp).
#[derive(Debug, Serialize, Deserialize)]
struct Entry<R> {
    #[serde(default, skip_serializing_if = "is_zero")]
    stamp: u64,
    registrations: Vec<R>,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// One snapshot object.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody<W, R> {
    format: u32,
    /// The last entry of the previous layout's log covered.
    log: u64,
    /// Per writer, the last entry covered.
    writers: Vec<(W, u64)>,
    /// The highest stamp covered.
    stamp: u64,
    nodes: Vec<SnapshotNode<W, R>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotNode<W, R> {
    registration: R,
    stamp: u64,
    writer: W,
    seq: u64,
    index: u32,
}

/// How a catch-up ended.
enum Caught {
    Up,
    /// Something listed was gone when read, or a stream starts past what is
    /// applied: list again.
    Raced(String),
}

/// What [`ObjectRegistrationStore::compact`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compaction {
    /// Nothing past the newest snapshot.
    NothingToDo,
    /// Another replica wrote that snapshot number first (its snapshot is read
    /// at the next listing).
    Lost,
    /// This replica wrote snapshot `number` and deleted `deleted` objects it
    /// covers.
    Written {
        /// The snapshot's number.
        number: u64,
        /// Entries and older snapshots deleted.
        deleted: usize,
    },
}

impl Drop for ObjectRegistrationStore {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A writer id unique per opened store: process id + 64 random bits.
fn new_writer_id() -> String {
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!("{}-{random:016x}", std::process::id())
}

fn valid_writer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn is_conflict(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
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
        let name = format!("object store {store} /{prefix}");
        let writer_id = match &options.writer_id {
            Some(id) => match ObjectStoreOptions::check_writer_id(id) {
                Ok(()) => id.clone(),
                Err(message) => {
                    return Err(Error::Store {
                        store: name,
                        operation: "open",
                        message,
                        source: None,
                    });
                }
            },
            None => new_writer_id(),
        };
        let shared = Arc::new(Shared {
            name,
            log_prefix: prefix.clone().join("log"),
            legacy_prefix: prefix.clone().join("nodes"),
            v2_prefix: prefix.join("v2"),
            writer_id: Arc::from(writer_id),
            store,
            view: RegistrationView::new([], 0),
            options: options.clone(),
            reading: tokio::sync::Mutex::new(()),
            state: std::sync::Mutex::new(ReadState::default()),
            stamp_seen: AtomicU64::new(0),
            pending: std::sync::Mutex::new(Pending::default()),
            writer: tokio::sync::Mutex::new(WriterState::default()),
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

    /// Writes a snapshot of everything read so far now (after one listing)
    /// and deletes what it covers; the poller does this by itself past the
    /// [`ObjectStoreOptions::compact_after_entries`] or
    /// [`ObjectStoreOptions::compact_after_bytes`] thresholds.
    pub async fn compact(&self) -> Result<Compaction> {
        self.shared.compact().await
    }

    /// This replica's writer id (the name of its stream).
    pub fn writer_id(&self) -> &str {
        &self.shared.writer_id
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
            continue;
        }
        if shared.compaction_due() {
            match shared.compact().await {
                Ok(outcome) => {
                    tracing::debug!(store = %shared.name, ?outcome, "registration log compaction");
                }
                Err(error) => {
                    tracing::warn!(store = %shared.name, %error, "registration log compaction failed");
                }
            }
        }
    }
}

impl Shared {
    fn error(&self, operation: &'static str, source: object_store::Error) -> Error {
        Error::store(self.name.clone(), operation, source)
    }

    fn decode_error(&self, operation: &'static str, path: &Path, e: serde_json::Error) -> Error {
        Error::Store {
            store: self.name.clone(),
            operation,
            message: format!("{path} does not decode: {e}"),
            source: Some(Box::new(e)),
        }
    }

    fn log_path(&self, number: u64) -> Path {
        self.log_prefix
            .clone()
            .join(PathPart::from(format!("{number:020}.json")))
    }

    fn stream_path(&self, writer: &str, seq: u64) -> Path {
        self.v2_prefix
            .clone()
            .join("writers")
            .join(PathPart::from(writer))
            .join(PathPart::from(format!("{seq:020}.json")))
    }

    fn snapshot_path(&self, number: u64) -> Path {
        self.v2_prefix
            .clone()
            .join("snapshots")
            .join(PathPart::from(format!("{number:020}.json")))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ReadState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the view to the state's generation with `winners` (called with
    /// the state locked, so view and state move together).
    fn publish(&self, state: &ReadState, winners: Vec<Arc<NodeRegistration>>) {
        let generation = state.generation();
        if generation > self.view.generation() {
            self.view.insert_all(winners, generation);
        } else {
            debug_assert!(winners.is_empty(), "a change without a new entry");
        }
    }

    fn see_stamp(&self, stamp: u64) {
        self.stamp_seen.fetch_max(stamp, AtomicOrdering::Relaxed);
    }

    fn compaction_due(&self) -> bool {
        let state = self.state();
        let entries = self.options.compact_after_entries;
        let bytes = self.options.compact_after_bytes;
        (entries > 0 && state.backlog_entries() >= entries)
            || (bytes > 0 && state.backlog_bytes >= bytes)
    }

    async fn refresh(&self) -> Result<()> {
        let _reading = self.reading.lock().await;
        self.catch_up().await
    }

    /// The first read when opening: snapshot, streams, the previous log, or,
    /// when there is nothing at all, the oldest layout's node objects
    /// imported as that log's first entry. Then this replica's own stream
    /// continues after its last entry.
    async fn load(&self) -> Result<()> {
        let _reading = self.reading.lock().await;
        self.catch_up().await?;
        if self.state().generation() == 0 {
            self.import_legacy().await?;
        }
        let next = self.state().applied(&self.writer_id) + 1;
        self.writer.lock().await.next = next;
        Ok(())
    }

    /// Imports the oldest layout's `nodes/*.json` objects as entry 1 of the
    /// previous layout's log (a conditional create: when another replica
    /// imported first, reads its entry instead). Objects that do not decode
    /// are skipped with a warning.
    async fn import_legacy(&self) -> Result<()> {
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
        let body = serde_json::to_vec(&Entry {
            stamp: 0,
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
                &self.log_path(1),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => {
                tracing::info!(store = %self.name, nodes = registrations.len(), "imported legacy registrations as log entry 1");
                let mut state = self.state();
                if state.log == 0 {
                    let legacy = state.name("");
                    let mut winners = Vec::new();
                    state.merge(
                        registrations.into_iter().enumerate().map(|(index, r)| {
                            (
                                Arc::new(r),
                                Order {
                                    stamp: 0,
                                    writer: legacy.clone(),
                                    seq: 1,
                                    index: u32::try_from(index).unwrap_or(u32::MAX),
                                },
                            )
                        }),
                        &mut winners,
                    );
                    state.log = 1;
                    self.publish(&state, winners);
                }
                Ok(())
            }
            Err(e) if is_conflict(&e) => self.catch_up().await,
            Err(e) => Err(self.error("import legacy", e)),
        }
    }

    /// Lists and applies what is new, listing again (a bounded number of
    /// times) when a compaction removed something between a listing and a
    /// read. Callers hold `reading`.
    async fn catch_up(&self) -> Result<()> {
        let mut why = String::new();
        for _ in 0..MAX_LISTINGS {
            match self.catch_up_once().await? {
                Caught::Up => return Ok(()),
                Caught::Raced(reason) => {
                    tracing::debug!(store = %self.name, %reason, "listing raced a compaction; listing again");
                    why = reason;
                }
            }
        }
        Err(Error::Store {
            store: self.name.clone(),
            operation: "refresh",
            message: format!("gave up after {MAX_LISTINGS} listings: {why}"),
            source: None,
        })
    }

    /// Lists `v2/`, classifying snapshots and stream entries.
    async fn list_v2(&self) -> Result<Listing> {
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.v2_prefix))
            .try_collect()
            .await
            .map_err(|e| self.error("list", e))?;
        let mut listing = Listing::default();
        for meta in metas {
            let Some(parts) = meta.location.prefix_match(&self.v2_prefix) else {
                continue;
            };
            let parts: Vec<PathPart<'_>> = parts.collect();
            let number = |part: &PathPart<'_>| -> Option<u64> {
                part.as_ref().strip_suffix(".json")?.parse().ok()
            };
            match parts.as_slice() {
                [kind, file] if kind.as_ref() == "snapshots" => {
                    if let Some(n) = number(file) {
                        listing.snapshots.insert(n, meta.location.clone());
                    }
                }
                [kind, writer, file] if kind.as_ref() == "writers" => {
                    if let Some(seq) = number(file) {
                        listing
                            .writers
                            .entry(writer.as_ref().to_owned())
                            .or_default()
                            .push((seq, meta.location.clone(), meta.size));
                    }
                }
                _ => {}
            }
        }
        for entries in listing.writers.values_mut() {
            entries.sort_unstable_by_key(|(seq, _, _)| *seq);
        }
        Ok(listing)
    }

    /// The previous layout's log entries after `after`: a gapless run (a gap
    /// is a listing that raced a create, filled by the next listing).
    async fn list_log(&self, after: u64) -> Result<Vec<(u64, Path)>> {
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list_with_offset(Some(&self.log_prefix), &self.log_path(after))
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
                (number > after).then_some((number, meta.location))
            })
            .collect();
        entries.sort_unstable_by_key(|(number, _)| *number);
        let mut expected = after + 1;
        entries.retain(|(number, _)| {
            let keep = *number == expected;
            expected += u64::from(keep);
            keep
        });
        Ok(entries)
    }

    async fn read_object(&self, path: &Path) -> Result<Option<bytes::Bytes>> {
        match self.store.get(path).await {
            Ok(found) => found
                .bytes()
                .await
                .map(Some)
                .map_err(|e| self.error("get", e)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("get", e)),
        }
    }

    /// One log entry (`None` when there is none at `path`).
    async fn read_entry(&self, path: &Path) -> Result<Option<Entry<NodeRegistration>>> {
        let Some(bytes) = self.read_object(path).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| self.decode_error("get", path, e))
    }

    async fn catch_up_once(&self) -> Result<Caught> {
        let log_after = self.state().log;
        let (listing, log_entries) = futures::try_join!(self.list_v2(), self.list_log(log_after))?;

        // The newest snapshot, when this replica has not read it.
        let newest = listing
            .snapshots
            .last_key_value()
            .map(|(n, p)| (*n, p.clone()));
        let known = self.state().snapshot;
        if let Some((number, path)) = newest
            && number > known
        {
            let Some(bytes) = self.read_object(&path).await? else {
                return Ok(Caught::Raced(format!(
                    "snapshot {path} was listed but is gone"
                )));
            };
            let body: SnapshotBody<String, NodeRegistration> = serde_json::from_slice(&bytes)
                .map_err(|e| self.decode_error("get snapshot", &path, e))?;
            self.apply_snapshot(number, body);
        }

        // What to read: the previous log's new entries, then each stream's
        // entries after the last applied one.
        let mut raced = None;
        let mut wanted: Vec<(Option<String>, u64, Path)> = Vec::new();
        {
            let state = self.state();
            // Not what the snapshot just read covers.
            wanted.extend(
                log_entries
                    .into_iter()
                    .filter(|(number, _)| *number > state.log)
                    .map(|(number, path)| (None, number, path)),
            );
            for (writer, entries) in &listing.writers {
                let applied = state.applied(writer);
                let newer = entries.iter().filter(|(seq, _, _)| *seq > applied);
                for (expected, (seq, path, _)) in (applied + 1..).zip(newer) {
                    if *seq != expected {
                        raced.get_or_insert_with(|| {
                            format!("entry {expected} of writer {writer} is not listed but a later one is")
                        });
                        break;
                    }
                    wanted.push((Some(writer.clone()), *seq, path.clone()));
                }
            }
        }
        let paths: Vec<Path> = wanted.iter().map(|(_, _, path)| path.clone()).collect();
        let read: Vec<Option<Entry<NodeRegistration>>> = futures::stream::iter(paths)
            .map(|path| async move { self.read_entry(&path).await })
            .buffered(16)
            .try_collect()
            .await?;

        let mut state = self.state();
        let mut winners = Vec::new();
        let mut broken: HashSet<Option<&str>> = HashSet::new();
        for ((writer, seq, path), entry) in wanted.iter().zip(read) {
            let stream = writer.as_deref();
            if broken.contains(&stream) {
                continue;
            }
            let Some(entry) = entry else {
                if writer.is_none() {
                    return Err(Error::Store {
                        store: self.name.clone(),
                        operation: "get",
                        message: format!("{path} was listed but is gone"),
                        source: None,
                    });
                }
                broken.insert(stream);
                raced.get_or_insert_with(|| format!("{path} was listed but is gone"));
                continue;
            };
            let applied = match stream {
                Some(w) => state.applied(w),
                None => state.log,
            };
            if *seq != applied + 1 {
                continue; // applied meanwhile (this replica's own commit)
            }
            let name = state.name(stream.unwrap_or(""));
            // Entries of the previous log order before every new one.
            let stamp = if stream.is_some() { entry.stamp } else { 0 };
            self.see_stamp(stamp);
            state.merge(
                entry
                    .registrations
                    .into_iter()
                    .enumerate()
                    .map(|(index, r)| {
                        (
                            Arc::new(r),
                            Order {
                                stamp,
                                writer: name.clone(),
                                seq: *seq,
                                index: u32::try_from(index).unwrap_or(u32::MAX),
                            },
                        )
                    }),
                &mut winners,
            );
            match stream {
                Some(w) => state.set_applied(w, *seq),
                None => state.log = *seq,
            }
        }
        state.backlog_bytes = listing
            .writers
            .iter()
            .map(|(w, entries)| {
                let covered = state.covered.writers.get(w.as_str()).copied().unwrap_or(0);
                entries
                    .iter()
                    .filter(|(seq, _, _)| *seq > covered)
                    .map(|(_, _, size)| *size)
                    .sum::<u64>()
            })
            .sum();
        state.listing = listing;
        self.publish(&state, winners);
        drop(state);
        Ok(raced.map_or(Caught::Up, Caught::Raced))
    }

    /// Applies snapshot `number` (merged by the order rule, so applying it on
    /// top of entries already read is harmless).
    fn apply_snapshot(&self, number: u64, body: SnapshotBody<String, NodeRegistration>) {
        let mut state = self.state();
        if number <= state.snapshot {
            return;
        }
        self.see_stamp(body.stamp);
        let items: Vec<(Arc<NodeRegistration>, Order)> = body
            .nodes
            .into_iter()
            .map(|node| {
                let writer = state.name(&node.writer);
                (
                    Arc::new(node.registration),
                    Order {
                        stamp: node.stamp,
                        writer,
                        seq: node.seq,
                        index: node.index,
                    },
                )
            })
            .collect();
        let mut winners = Vec::new();
        state.merge(items, &mut winners);
        let mut covered = Coverage {
            writers: BTreeMap::new(),
            log: body.log,
        };
        for (writer, seq) in &body.writers {
            state.set_applied(writer, *seq);
            let name = state.name(writer);
            covered.writers.insert(name, *seq);
        }
        state.log = state.log.max(body.log);
        state.snapshot = number;
        state.covered = covered;
        self.publish(&state, winners);
    }

    /// Writes snapshot `n + 1` of everything applied (after one listing, so
    /// `n` is the newest and has been read) by conditional create; when it
    /// wins, deletes the stream entries it covers and the snapshots before
    /// `n`.
    async fn compact(&self) -> Result<Compaction> {
        // Reads wait only for the listing, not for the upload and deletes.
        let reading = self.reading.lock().await;
        self.catch_up().await?;
        let (number, body, covered, listing) = {
            let state = self.state();
            if state.backlog_entries() == 0 {
                return Ok(Compaction::NothingToDo);
            }
            let snapshot = self.view.snapshot();
            let nodes: Vec<SnapshotNode<&str, &NodeRegistration>> = snapshot
                .iter()
                .filter_map(|registration| {
                    let order = state.order.get(&registration.identifier)?;
                    Some(SnapshotNode {
                        registration,
                        stamp: order.stamp,
                        writer: &*order.writer,
                        seq: order.seq,
                        index: order.index,
                    })
                })
                .collect();
            let body = serde_json::to_vec(&SnapshotBody {
                format: 1,
                log: state.log,
                writers: state.writers.iter().map(|(w, s)| (&**w, *s)).collect(),
                stamp: self.stamp_seen.load(AtomicOrdering::Relaxed),
                nodes,
            })
            .map_err(|e| Error::Store {
                store: self.name.clone(),
                operation: "compact",
                message: e.to_string(),
                source: Some(Box::new(e)),
            })?;
            let covered = Coverage {
                writers: state.writers.clone(),
                log: state.log,
            };
            (state.snapshot + 1, body, covered, state.listing.clone())
        };
        drop(reading);
        // Another replica may have won this number while this one listed and
        // encoded: a HEAD is cheaper than uploading the whole set for nothing.
        match self.store.head(&self.snapshot_path(number)).await {
            Ok(_) => return Ok(Compaction::Lost),
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.error("compact", e)),
        }
        let put = self
            .store
            .put_opts(
                &self.snapshot_path(number),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match put {
            Ok(_) => {}
            Err(e) if is_conflict(&e) => return Ok(Compaction::Lost),
            Err(e) => return Err(self.error("compact", e)),
        }
        {
            let mut state = self.state();
            if state.snapshot < number {
                state.snapshot = number;
                state.covered = covered.clone();
            }
        }
        // The snapshot is durable: what it covers can go. Snapshot `number - 1`
        // stays for readers that listed it a moment ago.
        let doomed: Vec<Path> = listing
            .writers
            .iter()
            .flat_map(|(writer, entries)| {
                let upto = covered.writers.get(writer.as_str()).copied().unwrap_or(0);
                entries
                    .iter()
                    .filter(move |(seq, _, _)| *seq <= upto)
                    .map(|(_, path, _)| path.clone())
            })
            .chain(
                listing
                    .snapshots
                    .range(..number.saturating_sub(1))
                    .map(|(_, path)| path.clone()),
            )
            .collect();
        let deleted = self
            .store
            .delete_stream(futures::stream::iter(doomed.into_iter().map(Ok)).boxed())
            .filter(|result| {
                std::future::ready(!matches!(result, Err(object_store::Error::NotFound { .. })))
            })
            .try_fold(0usize, |n, _| std::future::ready(Ok(n + 1)))
            .await
            .map_err(|e| self.error("compact", e))?;
        tracing::info!(store = %self.name, number, deleted, "wrote registration snapshot");
        Ok(Compaction::Written { number, deleted })
    }

    /// Makes write number `seq` part of the shared log: either a commit that
    /// finished while this one waited already covered it, or this call commits
    /// every write pending at that moment as one entry of this writer's
    /// stream.
    async fn commit(&self, seq: u64) -> Result<()> {
        let mut writer = self.writer.lock().await;
        if writer.committed >= seq {
            return Ok(());
        }
        let mut writes = std::mem::take(&mut self.pending().writes);
        match self.append(&mut writer, &mut writes).await {
            Ok(()) => {
                let covered = writes.iter().map(|w| w.seq).max().unwrap_or(seq);
                writer.committed = covered.max(seq);
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

    /// The body of one entry.
    fn entry_body(&self, stamp: u64, writes: &[PendingWrite]) -> Result<PutPayload> {
        let body = serde_json::to_vec(&Entry {
            stamp,
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

    /// Applies an entry of this writer's own stream.
    fn apply_own(&self, seq: u64, stamp: u64, registrations: Vec<Arc<NodeRegistration>>) {
        let mut state = self.state();
        if state.applied(&self.writer_id) >= seq {
            return;
        }
        self.see_stamp(stamp);
        let mut winners = Vec::new();
        state.merge(
            registrations.into_iter().enumerate().map(|(index, r)| {
                (
                    r,
                    Order {
                        stamp,
                        writer: self.writer_id.clone(),
                        seq,
                        index: u32::try_from(index).unwrap_or(u32::MAX),
                    },
                )
            }),
            &mut winners,
        );
        state.set_applied(&self.writer_id, seq);
        self.publish(&state, winners);
    }

    /// Appends one entry holding `writes` at this writer's next number (one
    /// conditional create). The number is taken only when another process
    /// uses the same writer id: then what it wrote is read and the next
    /// number tried, with the writes that arrived meanwhile.
    async fn append(&self, writer: &mut WriterState, writes: &mut Vec<PendingWrite>) -> Result<()> {
        let started = Instant::now();
        let mut delays = self.options.commit_backoff().build();
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let stamp = now_ms()
                .max(writer.stamp + 1)
                .max(self.stamp_seen.load(AtomicOrdering::Relaxed) + 1);
            let number = writer.next;
            let put = self
                .store
                .put_opts(
                    &self.stream_path(&self.writer_id, number),
                    self.entry_body(stamp, writes)?,
                    PutOptions::from(PutMode::Create),
                )
                .await;
            let conflict = match put {
                Ok(_) => {
                    writer.next = number + 1;
                    writer.stamp = stamp;
                    self.apply_own(
                        number,
                        stamp,
                        writes.iter().map(|w| w.registration.clone()).collect(),
                    );
                    return Ok(());
                }
                Err(conflict) if is_conflict(&conflict) => conflict,
                Err(e) => return Err(self.error("commit", e)),
            };
            // Another process with this writer id took the number: read what
            // it wrote (so the next attempt aims past it), then try again.
            while let Some(entry) = self
                .read_entry(&self.stream_path(&self.writer_id, writer.next))
                .await?
            {
                writer.stamp = writer.stamp.max(entry.stamp);
                self.apply_own(
                    writer.next,
                    entry.stamp,
                    entry.registrations.into_iter().map(Arc::new).collect(),
                );
                writer.next += 1;
            }
            match delays.next() {
                Some(delay) if started.elapsed() < self.options.max_commit_time => {
                    tracing::debug!(store = %self.name, ?delay, "stream number taken by another process with this writer id; retrying");
                    tokio::time::sleep(delay).await;
                    writes.extend(std::mem::take(&mut self.pending().writes));
                }
                _ => {
                    return Err(Error::Store {
                        store: self.name.clone(),
                        operation: "commit",
                        message: format!(
                            "gave up after {attempts} attempt(s) in {:?}: another writer took the next number of stream {} first every time",
                            started.elapsed(),
                            self.writer_id
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
        match shared.store.list(Some(&shared.v2_prefix)).next().await {
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
