//! A `redb` file opened per operation, so several processes can share one data
//! directory: `redb` locks the file while it is open, and an operation that finds it
//! open elsewhere waits (bounded) for its turn. Inside one process, operations on a
//! file take turns through a mutex.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use redb::{Database, DatabaseError};

/// How long an operation waits for another process to release the file.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(crate) struct DbFile {
    path: PathBuf,
    gate: Mutex<()>,
}

impl DbFile {
    pub(crate) fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_path_buf(),
            gate: Mutex::new(()),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Open the database, run `f` on it (blocking), close it.
    pub(crate) fn with<T, E>(
        &self,
        err: impl Fn(redb::Error) -> E,
        f: impl FnOnce(&Database) -> Result<T, E>,
    ) -> Result<T, E> {
        let _turn = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let start = Instant::now();
        let mut delay = Duration::from_millis(2);
        let db = loop {
            match Database::create(&self.path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < WAIT => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_millis(100));
                }
                Err(e) => return Err(err(e.into())),
            }
        };
        f(&db)
    }
}
