//! Per-lablet locks: a `tokio` mutex per name inside the process, plus an advisory
//! file lock (`std::fs::File::lock`) in the work directory across processes.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Hands out per-lablet locks.
#[derive(Debug)]
pub(crate) struct LabletLocks {
    dir: PathBuf,
    in_process: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Held while one lablet is being synced; released on drop.
#[derive(Debug)]
pub(crate) struct LabletGuard {
    _file: File,
    _mutex: OwnedMutexGuard<()>,
}

impl LabletLocks {
    /// Locks whose files live in `dir`.
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            in_process: Mutex::new(HashMap::new()),
        }
    }

    fn mutex(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = match self.in_process.lock() {
            Ok(map) => map,
            Err(poisoned) => poisoned.into_inner(),
        };
        Arc::clone(map.entry(name.to_owned()).or_default())
    }

    fn open_file(&self, name: &str) -> std::io::Result<File> {
        std::fs::create_dir_all(&self.dir)?;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(format!("{name}.lock")))
    }

    /// Wait for the lock of `name` (name must already be validated as a file name).
    pub(crate) async fn lock(&self, name: &str) -> std::io::Result<LabletGuard> {
        let mutex = self.mutex(name).lock_owned().await;
        let file = self.open_file(name)?;
        let file = tokio::task::spawn_blocking(move || file.lock().map(|()| file))
            .await
            .map_err(std::io::Error::other)??;
        Ok(LabletGuard {
            _file: file,
            _mutex: mutex,
        })
    }

    /// Take the lock of `name` only if nobody holds it.
    pub(crate) fn try_lock(&self, name: &str) -> std::io::Result<Option<LabletGuard>> {
        let Ok(mutex) = self.mutex(name).try_lock_owned() else {
            return Ok(None);
        };
        let file = self.open_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(LabletGuard {
                _file: file,
                _mutex: mutex,
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_lablet_is_exclusive_across_lock_owners_and_others_are_free() {
        let dir = tempfile::tempdir().unwrap();
        // two owners on one directory stand for two processes (flock is per open file)
        let a = LabletLocks::new(dir.path());
        let b = LabletLocks::new(dir.path());
        let held = a.lock("LAB-1").await.unwrap();
        assert!(a.try_lock("LAB-1").unwrap().is_none(), "same process");
        assert!(b.try_lock("LAB-1").unwrap().is_none(), "other process");
        assert!(b.try_lock("LAB-2").unwrap().is_some(), "other lablets run");
        drop(held);
        assert!(b.try_lock("LAB-1").unwrap().is_some());
    }
}
