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

#[cfg(test)]
mod tests {
    //! A renewal in flight at the moment of release, made deterministic: a
    //! store in front of the in-process S3 holds the first renewal's
    //! conditional PUT until the test lets it go, and release is called while
    //! it is held.

    use std::pin::pin;

    use async_trait::async_trait;
    use cfgsync_test_support::{CapturedLogs, S3Harness};
    use futures::stream::BoxStream;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutResult,
    };
    use tokio::sync::oneshot;

    use super::*;
    use crate::store::StoreLocation;

    /// Long enough that a renewal let go completes well inside the release's
    /// wait (one TTL); the first renewal comes after a third of it.
    const TTL: Duration = Duration::from_millis(900);

    /// What the held renewal PUT does.
    #[derive(Debug, Clone, Copy)]
    enum Renewal {
        /// S3 applies it at once; only its answer is held (the case an
        /// aborted renewal got wrong: S3 has the new ETag, the holder not).
        Applied,
        /// Held before reaching S3, then fails (S3 never sees it).
        Failed,
    }

    #[derive(Debug)]
    struct Gate {
        renewal: Renewal,
        reached: oneshot::Sender<()>,
        go: oneshot::Receiver<()>,
    }

    /// Passes everything to `inner`, except the next conditional update once
    /// [`GatedStore::hold_next_update`] armed it.
    #[derive(Debug)]
    struct GatedStore {
        inner: Arc<dyn ObjectStore>,
        gate: Mutex<Option<Gate>>,
    }

    impl std::fmt::Display for GatedStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "gated {}", self.inner)
        }
    }

    impl GatedStore {
        /// Holds the next `PutMode::Update` (a renewal: taking a fresh lease
        /// creates it): `reached` resolves once it is held, sending on `go`
        /// lets it finish.
        fn hold_next_update(
            &self,
            renewal: Renewal,
        ) -> (oneshot::Receiver<()>, oneshot::Sender<()>) {
            let (reached_tx, reached) = oneshot::channel();
            let (go, go_rx) = oneshot::channel();
            *lock(&self.gate) = Some(Gate {
                renewal,
                reached: reached_tx,
                go: go_rx,
            });
            (reached, go)
        }
    }

    #[async_trait]
    impl ObjectStore for GatedStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            let gate = match opts.mode {
                PutMode::Update(_) => lock(&self.gate).take(),
                _ => None,
            };
            let Some(gate) = gate else {
                return self.inner.put_opts(location, payload, opts).await;
            };
            let result = match gate.renewal {
                Renewal::Applied => self.inner.put_opts(location, payload, opts).await,
                Renewal::Failed => Err(object_store::Error::Generic {
                    store: "S3",
                    source: "connection reset by peer".into(),
                }),
            };
            let _ = gate.reached.send(());
            let _ = gate.go.await;
            result
        }

        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }

        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }

        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }

        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }

        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
            self.inner.list_with_delimiter(prefix).await
        }

        async fn copy_opts(
            &self,
            from: &Path,
            to: &Path,
            options: CopyOptions,
        ) -> object_store::Result<()> {
            self.inner.copy_opts(from, to, options).await
        }
    }

    fn key() -> StoreLocation {
        StoreLocation {
            bucket: "b".to_owned(),
            key: "lablets/LAB-1/package.zip".to_owned(),
            url: "s3://b/lablets/LAB-1/package.zip".to_owned(),
        }
    }

    fn area(store: Arc<dyn ObjectStore>, s3: &S3Harness) -> SharedArea {
        SharedArea::new(store, s3.prefix.clone(), "s3://b", true)
    }

    /// Takes the lease, holds its first renewal as `renewal` says, calls
    /// release while that renewal is held, then lets the renewal finish.
    /// Returns the lease object after the release.
    async fn release_during_a_renewal(s3: &S3Harness, renewal: Renewal) -> LeaseBody {
        let store = Arc::new(GatedStore {
            inner: Arc::clone(&s3.store),
            gate: Mutex::new(None),
        });
        let (reached, go) = store.hold_next_update(renewal);
        let holder = ObjectLeases::new(area(store, s3), TTL);
        let lease = holder
            .acquire(&key(), "LAB-1", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        reached.await.expect("the first renewal reached the store");

        let mut release = pin!(lease.release());
        // one poll: release has been called (it asked the renewal to stop)
        // while the renewal's PUT is still held
        assert!(
            futures::poll!(release.as_mut()).is_pending(),
            "release cannot end while the renewal's PUT is held"
        );
        // the renewal's PUT answers (no one hears it if release aborted it)
        let _ = go.send(());
        release.await;

        let leases = ObjectLeases::new(area(Arc::clone(&s3.store), s3), TTL);
        let path = leases.path(&key());
        let (body, _) = read(&*s3.store, &path, "lease").await.unwrap().unwrap();
        body
    }

    /// A lease dropped (a sync cancelled, a task ended by `?`) while its
    /// renewal's PUT is applied but unanswered is released the same way: the
    /// release the drop spawns waits for the renewal and writes `released` on
    /// the renewed ETag.
    #[tokio::test]
    async fn a_lease_dropped_while_its_renewal_is_unanswered_is_released() {
        let s3 = S3Harness::start().await.unwrap();
        let store = Arc::new(GatedStore {
            inner: Arc::clone(&s3.store),
            gate: Mutex::new(None),
        });
        let (reached, go) = store.hold_next_update(Renewal::Applied);
        let holder = ObjectLeases::new(area(store, &s3), TTL);
        let lease = holder
            .acquire(&key(), "LAB-1", Duration::ZERO)
            .await
            .unwrap()
            .unwrap();
        reached.await.expect("the first renewal reached the store");

        drop(lease);
        let _ = go.send(());

        // the spawned release runs on this runtime: wait for its write (an
        // event, not a time: the bound only keeps a broken release from
        // hanging the test)
        let path = holder.path(&key());
        let mut body = None;
        for _ in 0..400 {
            let (now, _) = read(&*s3.store, &path, "lease").await.unwrap().unwrap();
            if now.released {
                body = Some(now);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let body = body.expect("the dropped lease was never released");
        assert_eq!(body.renewals, 1, "released on the renewal's ETag: {body:?}");
        taken_at_once(&s3).await;
    }

    /// Another holder (with a TTL far longer than the test, so an unrenewed
    /// lease can never look expired to it) takes the lease without waiting.
    async fn taken_at_once(s3: &S3Harness) {
        let next = ObjectLeases::new(area(Arc::clone(&s3.store), s3), Duration::from_secs(600));
        let taken = next.acquire(&key(), "LAB-1", Duration::ZERO).await.unwrap();
        match taken {
            Ok(lease) => lease.release().await,
            Err(held) => panic!("the lease was left held by {}", held.holder),
        }
    }

    #[tokio::test]
    async fn release_while_an_applied_renewal_is_unanswered_releases_on_the_renewed_etag() {
        let (logs, _guard) = CapturedLogs::start("cfgsync_lablet=debug");
        let s3 = S3Harness::start().await.unwrap();

        let body = release_during_a_renewal(&s3, Renewal::Applied).await;

        assert!(body.released, "lease left unreleased: {body:?}");
        assert_eq!(body.renewals, 1, "released on the renewal's ETag: {body:?}");
        let lines = logs.lines();
        assert!(
            lines.iter().any(|l| l.contains("lease released")),
            "{lines:#?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
            "no 412 nor any other complaint: {lines:#?}"
        );
        taken_at_once(&s3).await;
    }

    #[tokio::test]
    async fn release_while_a_renewal_fails_releases_on_the_etag_it_had() {
        let (logs, _guard) = CapturedLogs::start("cfgsync_lablet=debug");
        let s3 = S3Harness::start().await.unwrap();

        let body = release_during_a_renewal(&s3, Renewal::Failed).await;

        assert!(body.released, "lease left unreleased: {body:?}");
        let lines = logs.lines();
        assert!(
            lines.iter().any(|l| l.contains("lease released")),
            "{lines:#?}"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains("before its release") || l.contains("cannot release")),
            "{lines:#?}"
        );
        taken_at_once(&s3).await;
    }
}
