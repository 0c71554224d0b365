//! A `redb` file opened per operation, so several processes can share one data
//! directory: `redb` locks the file while it is open, and an operation that finds it
//! open elsewhere waits for its turn (the crate's backoff, bounded in attempts and
//! time). Inside one process, operations on a file take turns through a mutex.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::task::JoinError;

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
        let db = crate::retry::wait_blocking(
            WAIT,
            || Database::create(&self.path),
            |e| matches!(e, DatabaseError::DatabaseAlreadyOpen),
        )
        .map_err(|e| err(e.into()))?;
        f(&db)
    }
}

/// A table of string keys to string (JSON) values.
pub(crate) type Table = TableDefinition<'static, &'static str, &'static str>;

/// A store kept in one [`DbFile`]: names its error type once, and gets error
/// mapping, table creation, blocking-thread access and the plain row
/// operations from here.
pub(crate) trait DbStore: Clone + Send + Sync + 'static {
    type Error: Send + 'static;

    fn file(&self) -> &DbFile;

    /// The store's error for a `redb` failure on the file at `path`.
    fn db_error(path: &Path, source: redb::Error) -> Self::Error;

    /// The store's error for a blocking task that did not finish.
    fn task_error(source: JoinError) -> Self::Error;

    fn err(&self, e: impl Into<redb::Error>) -> Self::Error {
        Self::db_error(self.file().path(), e.into())
    }

    /// Creates `table` if missing, so reads of an empty store work.
    fn create_table(&self, table: Table) -> Result<(), Self::Error> {
        self.file().with(
            |e| self.err(e),
            |db| {
                let tx = db.begin_write().map_err(|e| self.err(e))?;
                tx.open_table(table).map_err(|e| self.err(e))?;
                tx.commit().map_err(|e| self.err(e))
            },
        )
    }

    /// Runs `f` on the open database on a blocking thread.
    fn blocking<T, F>(&self, f: F) -> impl Future<Output = Result<T, Self::Error>> + Send
    where
        T: Send + 'static,
        F: FnOnce(&Self, &Database) -> Result<T, Self::Error> + Send + 'static,
    {
        let this = self.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                this.file().with(|e| this.err(e), |db| f(&this, db))
            })
            .await
            .map_err(Self::task_error)?
        }
    }

    /// Inserts or replaces `key` in `table`; committed (fsynced) on return.
    fn put_row(
        &self,
        table: Table,
        key: String,
        value: String,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.blocking(move |this, db| {
            let tx = db.begin_write().map_err(|e| this.err(e))?;
            {
                let mut table = tx.open_table(table).map_err(|e| this.err(e))?;
                table
                    .insert(key.as_str(), value.as_str())
                    .map_err(|e| this.err(e))?;
            }
            tx.commit().map_err(|e| this.err(e))
        })
    }

    /// Removes `key` from `table` (nothing when absent); committed on return.
    fn remove_row(
        &self,
        table: Table,
        key: String,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.blocking(move |this, db| {
            let tx = db.begin_write().map_err(|e| this.err(e))?;
            {
                let mut table = tx.open_table(table).map_err(|e| this.err(e))?;
                table.remove(key.as_str()).map_err(|e| this.err(e))?;
            }
            tx.commit().map_err(|e| this.err(e))
        })
    }

    /// Every `(key, value)` of `table`, in key order.
    fn rows(
        &self,
        table: Table,
    ) -> impl Future<Output = Result<Vec<(String, String)>, Self::Error>> + Send {
        self.blocking(move |this, db| {
            let tx = db.begin_read().map_err(|e| this.err(e))?;
            let table = tx.open_table(table).map_err(|e| this.err(e))?;
            let mut out = Vec::new();
            for row in table.iter().map_err(|e| this.err(e))? {
                let (key, value) = row.map_err(|e| this.err(e))?;
                out.push((key.value().to_owned(), value.value().to_owned()));
            }
            Ok(out)
        })
    }
}
