//! [`ObjectRegistrationStore`]: registrations in any `object_store`, shared by
//! server replicas through conditional writes (feature `object-store`).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable as _};
use cfgsync_core::NodeRegistration;
use futures::{StreamExt, TryStreamExt};
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::sync::watch;

use super::view::RegistrationView;
use crate::{Error, RegistrationSnapshot, RegistrationStore, Result};

/// Settings of an [`ObjectRegistrationStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStoreOptions {
    /// How often a replica checks the shared generation for others' writes.
    /// Default 500 ms.
    pub poll_interval: Duration,
    /// Compare-and-swaps one generation increment may try while other writers
    /// keep moving the counter first, the first included. Default 50.
    pub max_increment_attempts: usize,
    /// Time one generation increment may spend retrying such conflicts.
    /// Default 10 s.
    pub max_increment_time: Duration,
}

impl Default for ObjectStoreOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            max_increment_attempts: 50,
            max_increment_time: Duration::from_secs(10),
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

    /// Bounds the conflict retries of one generation increment: at most
    /// `attempts` compare-and-swaps (at least one) within `time`.
    #[must_use]
    pub fn with_increment_bounds(mut self, attempts: usize, time: Duration) -> Self {
        self.max_increment_attempts = attempts;
        self.max_increment_time = time;
        self
    }

    /// The delays between conflicting compare-and-swaps: exponential from 1 ms
    /// to 40 ms, each plus a random jitter of up to itself, so replicas that
    /// collided spread apart; bounded in attempts and in total delay.
    fn increment_backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(40))
            .with_jitter()
            .with_max_times(self.max_increment_attempts.saturating_sub(1))
            .with_total_delay(Some(self.max_increment_time))
    }
}

/// Registrations in any [`ObjectStore`] (S3, RustFS, MinIO, ... anything with
/// conditional writes), shared by several server replicas.
///
/// Layout under the prefix: one object per node, `nodes/<identifier>.json`, so
/// registrations on different replicas never overwrite each other; and a
/// `generation` counter object, incremented with a compare-and-swap
/// (`PutMode::Update` on its ETag, retried on conflict with jittered backoff,
/// bounded by [`ObjectStoreOptions::max_increment_attempts`] and
/// [`ObjectStoreOptions::max_increment_time`]) **after** the node
/// object is written; concurrent registrations on one replica share one
/// increment. Every replica numbers changes by that shared counter, so
/// all see the same generation order; a replica polls the counter and re-lists
/// (fetching only objects whose ETag changed) when it moves.
#[derive(Debug)]
pub struct ObjectRegistrationStore {
    shared: Arc<Shared>,
    poller: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    store: Arc<dyn ObjectStore>,
    nodes_prefix: Path,
    counter: Path,
    view: RegistrationView,
    options: ObjectStoreOptions,
    listed: tokio::sync::Mutex<Listed>,
    /// Node objects written by this replica and not yet covered by a counter
    /// increment, with a sequence number per write.
    pending: std::sync::Mutex<Pending>,
    /// The last counter increment: the writes it covered (up to this sequence
    /// number) and the generation it made.
    increments: tokio::sync::Mutex<(u64, u64)>,
}

/// Concurrent puts on one replica share a counter increment: one put increments
/// for every write waiting at that moment and applies them all, so a burst of N
/// local registrations costs a few compare-and-swaps and no re-listing.
#[derive(Debug, Default)]
struct Pending {
    next_seq: u64,
    writes: Vec<PendingWrite>,
}

#[derive(Debug)]
struct PendingWrite {
    seq: u64,
    path: Path,
    e_tag: Option<String>,
    registration: NodeRegistration,
}

/// Why one compare-and-swap of the counter did not succeed.
#[derive(Debug)]
enum Increment {
    /// Another writer moved the counter first: read it again and retry.
    Conflict(object_store::Error),
    /// Anything else: not retried here.
    Failed(Error),
}

/// What this replica last listed: the counter value and each object's ETag.
#[derive(Debug, Default)]
struct Listed {
    generation: u64,
    objects: HashMap<Path, (Option<String>, Arc<NodeRegistration>)>,
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
            nodes_prefix: prefix.clone().join("nodes"),
            counter: prefix.join("generation"),
            store,
            view: RegistrationView::new([], 0),
            options: options.clone(),
            listed: tokio::sync::Mutex::new(Listed::default()),
            pending: std::sync::Mutex::new(Pending::default()),
            increments: tokio::sync::Mutex::new((0, 0)),
        });
        shared.refresh().await?;
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

    /// The shared counter's value and version (`None` before the first write).
    async fn read_counter(&self) -> Result<Option<(u64, UpdateVersion)>> {
        let result = match self.store.get(&self.counter).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.error("read generation", e)),
        };
        let version = UpdateVersion {
            e_tag: result.meta.e_tag.clone(),
            version: result.meta.version.clone(),
        };
        let bytes = result
            .bytes()
            .await
            .map_err(|e| self.error("read generation", e))?;
        let value = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .ok_or_else(|| Error::Store {
                store: self.name.clone(),
                operation: "read generation",
                message: format!("{} does not hold a number", self.counter),
                source: None,
            })?;
        Ok(Some((value, version)))
    }

    /// Moves the shared counter forward by one; returns the new value. A
    /// compare-and-swap that another writer won is retried (read again, swap
    /// again) after a jittered backoff, within the options' bounds; past them
    /// the increment fails with [`Error::Store`] saying so.
    async fn increment(&self) -> Result<u64> {
        let started = Instant::now();
        let attempts = AtomicUsize::new(0);
        let max_time = self.options.max_increment_time;
        let counted = &attempts;
        let outcome = (move || async move {
            counted.fetch_add(1, Ordering::Relaxed);
            self.try_increment().await
        })
        .retry(self.options.increment_backoff())
        .sleep(tokio::time::sleep)
        .when(|attempt: &Increment| {
            matches!(attempt, Increment::Conflict(_)) && started.elapsed() < max_time
        })
        .notify(|_, delay| {
            tracing::debug!(store = %self.name, ?delay, "generation moved by another writer; retrying");
        })
        .await;
        match outcome {
            Ok(next) => Ok(next),
            Err(Increment::Failed(error)) => Err(error),
            Err(Increment::Conflict(source)) => Err(Error::Store {
                store: self.name.clone(),
                operation: "increment generation",
                message: format!(
                    "gave up after {} attempt(s) in {:?}: other writers moved {} first every time",
                    attempts.load(Ordering::Relaxed),
                    started.elapsed(),
                    self.counter
                ),
                source: Some(Box::new(source)),
            }),
        }
    }

    /// One compare-and-swap of the counter.
    async fn try_increment(&self) -> std::result::Result<u64, Increment> {
        let (next, mode) = match self.read_counter().await.map_err(Increment::Failed)? {
            Some((value, version)) => (value + 1, PutMode::Update(version)),
            None => (1, PutMode::Create),
        };
        let put = self
            .store
            .put_opts(
                &self.counter,
                PutPayload::from(next.to_string()),
                PutOptions::from(mode),
            )
            .await;
        match put {
            Ok(_) => Ok(next),
            Err(
                conflict @ (object_store::Error::Precondition { .. }
                | object_store::Error::AlreadyExists { .. }),
            ) => Err(Increment::Conflict(conflict)),
            Err(e) => Err(Increment::Failed(self.error("increment generation", e))),
        }
    }

    /// Makes write number `seq` part of the shared state: either a concurrent
    /// put's increment already covered it, or this call increments the counter
    /// for every pending write and applies them to the local view.
    async fn cover(&self, seq: u64) -> Result<()> {
        let mut last = self.increments.lock().await;
        if last.0 >= seq {
            return Ok(());
        }
        let writes = std::mem::take(
            &mut self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .writes,
        );
        let covered = writes.iter().map(|w| w.seq).max().unwrap_or(seq).max(seq);
        let generation = match self.increment().await {
            Ok(generation) => generation,
            Err(error) => {
                // Leave the writes for the next put (or the poller) to cover.
                self.pending
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .writes
                    .extend(writes);
                return Err(error);
            }
        };
        let mut listed = self.listed.lock().await;
        if listed.generation + 1 == generation {
            // Nobody else moved the counter since our last listing: the new
            // state is the old one plus these writes.
            listed.generation = generation;
            for write in writes {
                let registration = Arc::new(write.registration);
                listed
                    .objects
                    .insert(write.path, (write.e_tag, registration.clone()));
                self.view
                    .insert(Arc::unwrap_or_clone(registration), generation);
            }
        } else {
            drop(listed);
            self.refresh().await?;
        }
        *last = (covered, generation);
        Ok(())
    }

    fn node_path(&self, identifier: &str) -> Path {
        self.nodes_prefix
            .clone()
            .join(PathPart::from(format!("{identifier}.json")))
    }

    async fn refresh(&self) -> Result<()> {
        let mut listed = self.listed.lock().await;
        let Some((generation, _)) = self.read_counter().await? else {
            return Ok(());
        };
        if generation <= listed.generation {
            return Ok(());
        }
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&self.nodes_prefix))
            .try_collect()
            .await
            .map_err(|e| self.error("list", e))?;
        let previous = std::mem::take(&mut listed.objects);
        let fetched: Vec<(Path, Option<String>, Arc<NodeRegistration>)> =
            futures::stream::iter(metas)
                .map(|meta| {
                    let reuse = previous
                        .get(&meta.location)
                        .filter(|(e_tag, _)| meta.e_tag.is_some() && *e_tag == meta.e_tag)
                        .map(|(_, registration)| registration.clone());
                    async move {
                        if let Some(registration) = reuse {
                            return Ok((meta.location, meta.e_tag, registration));
                        }
                        let bytes = self
                            .store
                            .get(&meta.location)
                            .await
                            .map_err(|e| self.error("get", e))?
                            .bytes()
                            .await
                            .map_err(|e| self.error("get", e))?;
                        let registration: NodeRegistration = serde_json::from_slice(&bytes)
                            .map_err(|e| Error::Store {
                                store: self.name.clone(),
                                operation: "get",
                                message: format!("{} is not a registration: {e}", meta.location),
                                source: None,
                            })?;
                        Ok::<_, Error>((meta.location, meta.e_tag, Arc::new(registration)))
                    }
                })
                .buffer_unordered(16)
                .try_collect()
                .await?;
        let mut nodes = BTreeMap::new();
        for (path, e_tag, registration) in fetched {
            nodes.insert(registration.identifier.clone(), registration.clone());
            listed.objects.insert(path, (e_tag, registration));
        }
        listed.generation = generation;
        self.view.replace_all(nodes, generation);
        Ok(())
    }
}

#[async_trait]
impl RegistrationStore for ObjectRegistrationStore {
    async fn put(&self, registration: NodeRegistration) -> Result<bool> {
        let shared = &self.shared;
        if !shared.view.differs(&registration) {
            return Ok(false);
        }
        let path = shared.node_path(&registration.identifier);
        let body = serde_json::to_vec(&registration).map_err(|e| Error::Store {
            store: shared.name.clone(),
            operation: "put",
            message: e.to_string(),
            source: Some(Box::new(e)),
        })?;
        let written = shared
            .store
            .put(&path, PutPayload::from(body))
            .await
            .map_err(|e| shared.error("put", e))?;
        let seq = {
            let mut pending = shared
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            pending.next_seq += 1;
            let seq = pending.next_seq;
            pending.writes.push(PendingWrite {
                seq,
                path,
                e_tag: written.e_tag,
                registration,
            });
            seq
        };
        shared.cover(seq).await?;
        Ok(true)
    }

    async fn snapshot(&self) -> Result<Arc<RegistrationSnapshot>> {
        Ok(self.shared.view.snapshot())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.view.subscribe()
    }

    async fn check(&self) -> Result<()> {
        self.shared.read_counter().await.map(|_| ())
    }
}
