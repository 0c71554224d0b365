//! Local locks for `file://` stores: an advisory file lock
//! (`std::fs::File::lock`) per storage key in the lock directory, so processes
//! sharing the directory (one machine) serialize. The file is named by the
//! SHA-256 of the storage key's URL (keys hold `/` and are long).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::Digest;

use super::LeaseError;

/// Lock files in one directory.
#[derive(Debug)]
pub(super) struct FileLocks {
    dir: PathBuf,
}

impl FileLocks {
    pub(super) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, key: &str) -> PathBuf {
        let digest = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        self.dir.join(format!("{}.lock", &digest[..32]))
    }

    fn open(&self, key: &str) -> Result<(File, PathBuf), LeaseError> {
        let path = self.path(key);
        let io = |source| LeaseError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        Ok((file, path))
    }

    /// Waits (at most `wait`) for the lock of `key`; `None` when the wait ran
    /// out. A lock taken after the wait ran out is released right away (the
    /// blocked thread's file is dropped).
    pub(super) async fn lock(&self, key: &str, wait: Duration) -> Result<Option<File>, LeaseError> {
        let (file, path) = self.open(key)?;
        let task = tokio::task::spawn_blocking(move || file.lock().map(|()| file));
        match tokio::time::timeout(wait, task).await {
            Ok(joined) => joined
                .map_err(std::io::Error::other)
                .and_then(|locked| locked)
                .map(Some)
                .map_err(|source| io_at(&path, source)),
            Err(_) => Ok(None),
        }
    }

    /// The lock of `key` if nobody holds it.
    pub(super) fn try_lock(&self, key: &str) -> Result<Option<File>, LeaseError> {
        let (file, path) = self.open(key)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(file)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(io_at(&path, e)),
        }
    }
}

fn io_at(path: &Path, source: std::io::Error) -> LeaseError {
    LeaseError::Io {
        path: path.display().to_string(),
        source,
    }
}
