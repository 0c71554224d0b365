//! The storage key is the unit of locking and uniqueness.
//!
//! A lablet's **storage key** is its location with `{sha256}` unrendered
//! ([`PackageStore::storage_key`](crate::store::PackageStore::storage_key)).
//! Two syncs of one key never interleave, whoever runs them:
//!
//! - inside one pipeline, a `tokio` mutex per key;
//! - across processes: on `file://` stores an advisory file lock per key in
//!   the lock directory (`file.rs`, one machine); on S3 stores a **lease**
//!   object in the store, kept by conditional writes and renewed in the
//!   background (`object.rs`), so replicas on several machines serialize.
//!
//! A sync waits for the key at most [`LeaseConfig::wait_secs`], then fails
//! as busy. Each key also belongs, for good, to the first lablet that synced
//! it (`claim.rs`): another name mapping to it is refused before anything is
//! stored.

mod claim;
mod error;
mod file;
mod object;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

pub(crate) use claim::{Claimed, claim};
pub use error::LeaseError;

use crate::store::{SharedArea, StoreLocation};
use file::FileLocks;
use object::{Lease, ObjectLeases};

/// Default lease TTL in seconds.
pub const DEFAULT_LEASE_TTL_SECS: u64 = 30;
/// Default wait for a busy storage key in seconds.
pub const DEFAULT_LOCK_WAIT_SECS: u64 = 300;

/// Leases and lock waits, part of
/// [`LabletSyncConfig`](crate::LabletSyncConfig).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseConfig {
    /// Lease time-to-live on S3 stores (`LABLET_LEASE_TTL_SECS`, default 30):
    /// renewed every third of it; another replica takes a lease over once it
    /// has seen it unrenewed this long.
    pub ttl_secs: u64,
    /// How long a sync waits for a storage key another sync holds
    /// (`LABLET_LOCK_WAIT_SECS`, default 300) before failing as busy.
    pub wait_secs: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl_secs: DEFAULT_LEASE_TTL_SECS,
            wait_secs: DEFAULT_LOCK_WAIT_SECS,
        }
    }
}

impl LeaseConfig {
    /// Builder: lease TTL.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl_secs = ttl.as_secs().max(1);
        self
    }

    /// Builder: wait for a busy key.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait_secs = wait.as_secs();
        self
    }
}

/// Another sync holds the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    /// Who holds it (`host:pid:random`, or `this process`).
    pub(crate) holder: String,
    /// The lablet it syncs.
    pub(crate) lablet: String,
}

enum Backend {
    Files(FileLocks),
    Leases(ObjectLeases),
}

/// Hands out storage-key locks.
pub(crate) struct Locks {
    backend: Backend,
    in_process: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    wait: Duration,
}

impl std::fmt::Debug for Locks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.backend {
            Backend::Files(files) => format!("{files:?}"),
            Backend::Leases(leases) => format!("{leases:?}"),
        };
        f.debug_struct("Locks")
            .field("backend", &kind)
            .field("wait", &self.wait)
            .finish_non_exhaustive()
    }
}

/// Held while a storage key is being synced or drained.
#[derive(Debug)]
pub(crate) struct LockGuard {
    lease: Option<Lease>,
    _file: Option<std::fs::File>,
    _mutex: OwnedMutexGuard<()>,
}

impl LockGuard {
    /// Whether the lock was lost (an S3 lease taken over or not renewable):
    /// nothing more may be made visible.
    pub(crate) fn is_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(Lease::is_lost)
    }

    /// Resolves once the lock is lost (never for a file lock).
    pub(crate) async fn lost(&self) {
        match &self.lease {
            Some(lease) => lease.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Releases the lock (an S3 lease is handed back at once rather than left
    /// to expire).
    pub(crate) async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release().await;
        }
    }
}

impl Locks {
    /// Leases in `area` when it is replicated (S3), else lock files in
    /// `lock_dir`.
    pub(crate) fn new(area: &SharedArea, lock_dir: PathBuf, config: &LeaseConfig) -> Self {
        let backend = if area.replicated() {
            Backend::Leases(ObjectLeases::new(
                area.clone(),
                Duration::from_secs(config.ttl_secs.max(1)),
            ))
        } else {
            Backend::Files(FileLocks::new(lock_dir))
        };
        Self {
            backend,
            in_process: Mutex::new(HashMap::new()),
            wait: Duration::from_secs(config.wait_secs),
        }
    }

    fn mutex(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .in_process
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(map.entry(key.to_owned()).or_default())
    }

    /// Waits (at most the configured wait) for `key`, for `lablet`.
    pub(crate) async fn lock(
        &self,
        lablet: &str,
        key: &StoreLocation,
    ) -> Result<Result<LockGuard, Busy>, LeaseError> {
        self.acquire(lablet, key, self.wait).await
    }

    /// `key` for `lablet` if nobody holds it.
    pub(crate) async fn try_lock(
        &self,
        lablet: &str,
        key: &StoreLocation,
    ) -> Result<Option<LockGuard>, LeaseError> {
        Ok(self.acquire(lablet, key, Duration::ZERO).await?.ok())
    }

    async fn acquire(
        &self,
        lablet: &str,
        key: &StoreLocation,
        wait: Duration,
    ) -> Result<Result<LockGuard, Busy>, LeaseError> {
        let started = tokio::time::Instant::now();
        let mutex = self.mutex(&key.url);
        let guard = match mutex.clone().try_lock_owned() {
            Ok(guard) => guard,
            Err(_) => match tokio::time::timeout(wait, mutex.lock_owned()).await {
                Ok(guard) => guard,
                Err(_) => {
                    return Ok(Err(Busy {
                        holder: "another sync in this process".to_owned(),
                        lablet: lablet.to_owned(),
                    }));
                }
            },
        };
        let left = wait.saturating_sub(started.elapsed());
        match &self.backend {
            Backend::Files(files) => {
                let file = if left.is_zero() {
                    files.try_lock(&key.url)?
                } else {
                    files.lock(&key.url, left).await?
                };
                Ok(match file {
                    Some(file) => Ok(LockGuard {
                        lease: None,
                        _file: Some(file),
                        _mutex: guard,
                    }),
                    None => Err(Busy {
                        holder: "another process".to_owned(),
                        lablet: lablet.to_owned(),
                    }),
                })
            }
            Backend::Leases(leases) => Ok(match leases.acquire(key, lablet, left).await? {
                Ok(lease) => Ok(LockGuard {
                    lease: Some(lease),
                    _file: None,
                    _mutex: guard,
                }),
                Err(held) => Err(Busy {
                    holder: held.holder,
                    lablet: held.lablet,
                }),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cfgsync_test_support::S3Harness;
    use object_store::ObjectStoreExt;

    fn key(name: &str) -> StoreLocation {
        StoreLocation {
            bucket: "b".to_owned(),
            key: format!("lablets/{name}/package.zip"),
            url: format!("s3://b/lablets/{name}/package.zip"),
        }
    }

    fn leases(s3: &S3Harness, ttl: Duration, wait: Duration) -> Locks {
        let area = SharedArea::new(Arc::clone(&s3.store), "", "s3://b", true);
        let config = LeaseConfig {
            ttl_secs: 0,
            wait_secs: 0,
        };
        let mut locks = Locks::new(&area, PathBuf::new(), &config);
        locks.backend = Backend::Leases(ObjectLeases::new(area, ttl));
        locks.wait = wait;
        locks
    }

    #[tokio::test]
    async fn file_locks_are_exclusive_per_storage_key_across_lock_owners() {
        let dir = tempfile::tempdir().unwrap();
        let area = SharedArea::new(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            "file:///x",
            false,
        );
        let config = LeaseConfig::default().with_wait(Duration::ZERO);
        // two owners on one directory stand for two processes (flock is per open file)
        let a = Locks::new(&area, dir.path().to_path_buf(), &config);
        let b = Locks::new(&area, dir.path().to_path_buf(), &config);
        let held = a.lock("LAB-1", &key("LAB-1")).await.unwrap().unwrap();
        assert!(
            a.try_lock("LAB-1", &key("LAB-1")).await.unwrap().is_none(),
            "same process"
        );
        assert!(
            b.try_lock("LAB-1", &key("LAB-1")).await.unwrap().is_none(),
            "other process"
        );
        let busy = b.lock("LAB-1", &key("LAB-1")).await.unwrap().unwrap_err();
        assert_eq!(busy.holder, "another process");
        assert!(
            b.try_lock("LAB-2", &key("LAB-2")).await.unwrap().is_some(),
            "other keys are free"
        );
        held.release().await;
        assert!(b.try_lock("LAB-1", &key("LAB-1")).await.unwrap().is_some());
    }

    #[tokio::test]
    async fn an_s3_lease_is_renewed_released_taken_over_after_expiry_and_lost_when_taken() {
        let s3 = S3Harness::start().await.unwrap();
        let ttl = Duration::from_millis(900);
        let a = leases(&s3, ttl, Duration::ZERO);
        let b = leases(&s3, ttl, Duration::from_millis(200));
        let k = key("LAB-1");

        // exclusive, and kept past its TTL by renewal
        let held = a.lock("LAB-1", &k).await.unwrap().unwrap();
        tokio::time::sleep(ttl * 3).await;
        let busy = b.lock("LAB-1", &k).await.unwrap().unwrap_err();
        assert!(
            busy.holder.contains(&format!(":{}:", std::process::id())),
            "{busy:?}"
        );
        assert_eq!(busy.lablet, "LAB-1");
        assert!(!held.is_lost());

        // released: the next taker gets it at once
        held.release().await;
        let held = b.try_lock("LAB-1", &k).await.unwrap().expect("released");

        // someone else writes the lease: the holder's next renewal loses it
        let path = object_store::path::Path::from("_leases/b/lablets/LAB-1/package.zip.json");
        let intruder = serde_json::json!({
            "storage_key": k.url, "lablet": "LAB-1", "holder": "other:1:x",
            "expires_at_ms": u64::MAX / 2, "renewals": 0,
        });
        s3.store
            .put(&path, serde_json::to_vec(&intruder).unwrap().into())
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), held.lost())
            .await
            .expect("the holder noticed it lost the lease");
        assert!(held.is_lost());
        drop(held);

        // a holder that died (never renews, claims a far expiry): busy for a
        // short wait, taken over once it sat unchanged for a TTL
        assert!(a.try_lock("LAB-1", &k).await.unwrap().is_none());
        let patient = leases(&s3, ttl, Duration::from_secs(30));
        let taken = patient
            .lock("LAB-1", &k)
            .await
            .unwrap()
            .expect("taken over");
        let body: object::LeaseBody =
            serde_json::from_slice(&s3.store.get(&path).await.unwrap().bytes().await.unwrap())
                .unwrap();
        assert_ne!(body.holder, "other:1:x");
        taken.release().await;
    }
}
