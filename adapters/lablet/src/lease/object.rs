//! Leases in the object store (S3 stores): one object per storage key,
//! `_leases/{bucket}/{key}.json` in the store's [`SharedArea`], taken and kept
//! by conditional writes only — `PutMode::Create` when there is none,
//! `PutMode::Update` on the ETag read otherwise — so of two replicas racing
//! for a key exactly one write succeeds (S3 answers the other `412`).
//!
//! - **Holder**: `host:pid:random`, one per pipeline (two pipelines in one
//!   process are two holders).
//! - **Renewal**: every TTL/3 the holder rewrites the lease on its own ETag
//!   (a new `expires_at`, one more renewal). A renewal answered `412` means
//!   someone else took the lease; renewals failing for 2/3 of the TTL mean the
//!   holder can no longer show it holds it. Either way the lease is **lost**:
//!   the sync stops before its next visible step (upload, fan-out, record).
//! - **Expiry**: a waiter takes the lease over when it has seen the lease
//!   object keep one ETag for a whole TTL on its own monotonic clock (no
//!   clock comparison between machines), or at once when the lease's
//!   `expires_at` is more than a further TTL in the past on the waiter's
//!   clock (a holder long dead), or when it was released.
//! - **Release**: the holder rewrites the lease as `released` on its ETag
//!   (`object_store` has no conditional delete); the next taker updates it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::LeaseError;
use crate::store::SharedArea;

/// What a lease object holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct LeaseBody {
    /// The storage key (URL) the lease is for.
    pub(super) storage_key: String,
    /// The lablet being synced (or drained).
    pub(super) lablet: String,
    /// `host:pid:random`.
    pub(super) holder: String,
    /// Unix milliseconds after which the holder no longer claims it.
    pub(super) expires_at_ms: u64,
    /// Renewals so far (changes the ETag on every renewal).
    pub(super) renewals: u64,
    /// Given up by its holder: anyone may take it.
    #[serde(default)]
    pub(super) released: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A lease another holder has.
#[derive(Debug, Clone)]
pub(super) struct HeldBy {
    pub(super) holder: String,
    pub(super) lablet: String,
}

/// Leases of one holder in one [`SharedArea`].
#[derive(Debug)]
pub(super) struct ObjectLeases {
    area: SharedArea,
    holder: String,
    ttl: Duration,
}

impl ObjectLeases {
    pub(super) fn new(area: SharedArea, ttl: Duration) -> Self {
        Self {
            area,
            holder: holder_id(),
            ttl: ttl.max(Duration::from_millis(300)),
        }
    }

    fn path(&self, key: &crate::store::StoreLocation) -> Path {
        self.area
            .path(&format!("_leases/{}/{}.json", key.bucket, key.key))
    }

    fn body(&self, key: &str, lablet: &str) -> LeaseBody {
        LeaseBody {
            storage_key: key.to_owned(),
            lablet: lablet.to_owned(),
            holder: self.holder.clone(),
            expires_at_ms: now_ms().saturating_add(ms(self.ttl)),
            renewals: 0,
            released: false,
        }
    }

    /// Takes the lease of `key` for `lablet`, waiting at most `wait` for its
    /// holder to release it or for it to expire. `Err(Ok(held))` when it is
    /// still held by someone else at the end of the wait.
    pub(super) async fn acquire(
        &self,
        key: &crate::store::StoreLocation,
        lablet: &str,
        wait: Duration,
    ) -> Result<Result<Lease, HeldBy>, LeaseError> {
        let path = self.path(key);
        let url = self.area.url_of(&path);
        let store = Arc::clone(self.area.store());
        let deadline = Instant::now() + wait;
        let poll = (self.ttl / 6).clamp(Duration::from_millis(50), Duration::from_secs(1));
        // the ETag seen, and since when (this replica's clock)
        let mut seen: Option<(Option<String>, Instant)> = None;
        let mut attempts = 0usize;
        loop {
            attempts += 1;
            let mode = match read(&*store, &path, &url).await? {
                None => PutMode::Create,
                Some((body, version)) => {
                    let now = Instant::now();
                    let unchanged_for = match &seen {
                        Some((etag, since)) if *etag == version.e_tag => now - *since,
                        _ => {
                            seen = Some((version.e_tag.clone(), now));
                            Duration::ZERO
                        }
                    };
                    let long_dead = body.expires_at_ms.saturating_add(ms(self.ttl)) < now_ms();
                    let expired = unchanged_for >= self.ttl || long_dead;
                    if !(body.released || body.holder == self.holder || expired) {
                        if now >= deadline {
                            return Ok(Err(HeldBy {
                                holder: body.holder,
                                lablet: body.lablet,
                            }));
                        }
                        tokio::time::sleep(poll.min(deadline - now)).await;
                        continue;
                    }
                    if expired && !body.released {
                        tracing::warn!(storage_key = %key.url, holder = %body.holder, lablet = %body.lablet, "taking over an expired lease");
                    }
                    PutMode::Update(version)
                }
            };
            let body = self.body(&key.url, lablet);
            match put(&*store, &path, &url, &body, mode).await {
                Ok(version) => {
                    tracing::debug!(storage_key = %key.url, holder = %self.holder, "lease taken");
                    return Ok(Ok(Lease::start(store, path, url, body, version, self.ttl)));
                }
                Err(Conflict::Lost) => {
                    // another replica wrote first: look again
                    if Instant::now() >= deadline && attempts > 1 {
                        return Ok(Err(HeldBy {
                            holder: "another replica".to_owned(),
                            lablet: lablet.to_owned(),
                        }));
                    }
                    let jitter = Duration::from_millis(fastrand::u64(1..20));
                    tokio::time::sleep(jitter).await;
                }
                Err(Conflict::Failed(e)) => return Err(e),
            }
        }
    }
}

/// `host:pid:random`.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".to_owned());
    format!("{host}:{}:{:016x}", std::process::id(), fastrand::u64(..))
}

enum Conflict {
    /// The conditional write lost (`412` / already exists).
    Lost,
    Failed(LeaseError),
}

async fn read(
    store: &dyn ObjectStore,
    path: &Path,
    url: &str,
) -> Result<Option<(LeaseBody, UpdateVersion)>, LeaseError> {
    let os_err = |source| LeaseError::ObjectStore {
        operation: "get",
        url: url.to_owned(),
        source: Box::new(source),
    };
    let got = match store.get(path).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(os_err(e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(os_err)?;
    let body = serde_json::from_slice(&bytes).map_err(|source| LeaseError::Decode {
        url: url.to_owned(),
        source,
    })?;
    Ok(Some((body, version)))
}

async fn put(
    store: &dyn ObjectStore,
    path: &Path,
    url: &str,
    body: &LeaseBody,
    mode: PutMode,
) -> Result<UpdateVersion, Conflict> {
    let operation = if matches!(mode, PutMode::Create) {
        "create"
    } else {
        "update"
    };
    let bytes = serde_json::to_vec(body).map_err(|source| {
        Conflict::Failed(LeaseError::Decode {
            url: url.to_owned(),
            source,
        })
    })?;
    match store
        .put_opts(path, PutPayload::from(bytes), PutOptions::from(mode))
        .await
    {
        Ok(result) => Ok(UpdateVersion::from(result)),
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => Err(Conflict::Lost),
        Err(e) => Err(Conflict::Failed(LeaseError::ObjectStore {
            operation,
            url: url.to_owned(),
            source: Box::new(e),
        })),
    }
}

/// A lease held: renewed in the background until released or lost.
#[derive(Debug)]
pub(crate) struct Lease {
    inner: Option<Held>,
    lost: watch::Receiver<bool>,
}

#[derive(Debug)]
struct Held {
    store: Arc<dyn ObjectStore>,
    path: Path,
    url: String,
    body: Arc<Mutex<LeaseBody>>,
    version: Arc<Mutex<UpdateVersion>>,
    /// Tells the renewal task to end between two renewals (never in the
    /// middle of one: a renewal cut off after S3 applied it would leave the
    /// release holding a stale ETag, and the lease unreleased).
    stop: Arc<Notify>,
    ttl: Duration,
    renewal: tokio::task::JoinHandle<()>,
}

impl Lease {
    fn start(
        store: Arc<dyn ObjectStore>,
        path: Path,
        url: String,
        body: LeaseBody,
        version: UpdateVersion,
        ttl: Duration,
    ) -> Self {
        let (lost_tx, lost) = watch::channel(false);
        let body = Arc::new(Mutex::new(body));
        let version = Arc::new(Mutex::new(version));
        let stop = Arc::new(Notify::new());
        let renewal = tokio::spawn(renew(
            (Arc::clone(&store), path.clone(), url.clone()),
            Arc::clone(&body),
            Arc::clone(&version),
            ttl,
            lost_tx,
            Arc::clone(&stop),
        ));
        Self {
            inner: Some(Held {
                store,
                path,
                url,
                body,
                version,
                stop,
                ttl,
                renewal,
            }),
            lost,
        }
    }

    /// Whether the lease was lost (taken by someone else, or not renewable).
    pub(crate) fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the lease is lost.
    pub(crate) async fn lost(&self) {
        let mut lost = self.lost.clone();
        // an error means the renewal task ended without losing it (released)
        if lost.wait_for(|l| *l).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Gives the lease up for the next taker (best effort: a lease not given
    /// up expires).
    pub(crate) async fn release(mut self) {
        if let Some(held) = self.inner.take() {
            held.release(self.is_lost()).await;
        }
    }
}

impl Held {
    async fn release(mut self, lost: bool) {
        // let a renewal in flight finish, so `version` is the lease's ETag
        self.stop.notify_one();
        if tokio::time::timeout(self.ttl, &mut self.renewal)
            .await
            .is_err()
        {
            self.renewal.abort();
        }
        if lost {
            return;
        }
        let mut body = lock(&self.body).clone();
        body.released = true;
        body.expires_at_ms = now_ms();
        let version = lock(&self.version).clone();
        match put(
            &*self.store,
            &self.path,
            &self.url,
            &body,
            PutMode::Update(version),
        )
        .await
        {
            Ok(_) => tracing::debug!(lease = %self.url, "lease released"),
            Err(Conflict::Lost) => {
                tracing::warn!(lease = %self.url, "lease was taken over before its release");
            }
            Err(Conflict::Failed(e)) => {
                tracing::warn!(lease = %self.url, error = %e, "cannot release the lease; it expires");
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(held) = self.inner.take() {
            let lost = self.is_lost();
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => drop(handle.spawn(held.release(lost))),
                Err(_) => held.renewal.abort(),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Renews the lease every TTL/3 on its ETag until it is lost or `stop` is
/// notified (checked between renewals only).
async fn renew(
    (store, path, url): (Arc<dyn ObjectStore>, Path, String),
    body: Arc<Mutex<LeaseBody>>,
    version: Arc<Mutex<UpdateVersion>>,
    ttl: Duration,
    lost: watch::Sender<bool>,
    stop: Arc<Notify>,
) {
    let mut last_renewed = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(ttl / 3) => {}
            () = stop.notified() => return,
        }
        let next = {
            let mut b = lock(&body);
            b.renewals += 1;
            b.expires_at_ms = now_ms().saturating_add(ms(ttl));
            b.clone()
        };
        let current = lock(&version).clone();
        match put(&*store, &path, &url, &next, PutMode::Update(current)).await {
            Ok(renewed) => {
                *lock(&version) = renewed;
                last_renewed = Instant::now();
            }
            Err(Conflict::Lost) => {
                tracing::error!(lease = %url, "lease taken by another replica; this sync stops");
                let _ = lost.send(true);
                return;
            }
            Err(Conflict::Failed(e)) => {
                if last_renewed.elapsed() >= ttl * 2 / 3 {
                    tracing::error!(lease = %url, error = %e, "lease not renewable in time; this sync stops");
                    let _ = lost.send(true);
                    return;
                }
                tracing::warn!(lease = %url, error = %e, "lease renewal failed; retrying");
            }
        }
    }
}
