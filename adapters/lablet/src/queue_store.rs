//! Where the retry queue and the record outbox keep their items: one
//! abstraction ([`QueueStore`]: rows of JSON by table and key), two backends.
//!
//! - **`file://` stores** (default): the local `redb` file
//!   `DATA_DIR/retry-queue.redb`, one committed transaction per change.
//! - **S3 stores**: one object per item, `_queue/{table}/{key}.json` in the
//!   store's shared area, so every replica sees and drains every item and a
//!   replica whose disk goes away loses nothing.
//!
//! Items are changed only by the holder of their lablet's storage-key lock
//! (a lease on S3): the sync that queues them, or the drain that delivers and
//! strikes them off. That lease is the drainer's claim on the items; it is
//! taken by conditional write, expires when its holder dies, and the next
//! drainer re-reads the items under it.

use std::path::Path as FsPath;
use std::sync::Arc;

use async_trait::async_trait;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use redb::TableHandle;

use crate::db::{DbFile, DbStore, Table};
use crate::fanout::QueueError;
use crate::store::SharedArea;

/// Rows of JSON text by table and key (`/`-separated).
#[async_trait]
pub(crate) trait QueueStore: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces `key`; durable on return.
    async fn put(&self, table: Table, key: String, value: String) -> Result<(), QueueError>;
    /// Removes `key` (nothing when absent); durable on return.
    async fn remove(&self, table: Table, key: String) -> Result<(), QueueError>;
    /// Every `(key, value)` of `table`, in key order.
    async fn rows(&self, table: Table) -> Result<Vec<(String, String)>, QueueError>;
}

/// The local `redb` backend.
#[derive(Debug, Clone)]
pub(crate) struct RedbQueue {
    db: Arc<DbFile>,
}

impl RedbQueue {
    /// The rows in `db`, `tables` created when missing (so reads of an empty
    /// queue work).
    pub(crate) fn open(db: Arc<DbFile>, tables: &[Table]) -> Result<Self, QueueError> {
        let this = Self { db };
        for table in tables {
            this.create_table(*table)?;
        }
        Ok(this)
    }
}

impl DbStore for RedbQueue {
    type Error = QueueError;

    fn file(&self) -> &DbFile {
        &self.db
    }

    fn db_error(path: &FsPath, source: redb::Error) -> QueueError {
        QueueError::Db {
            path: path.display().to_string(),
            source: Box::new(source),
        }
    }

    fn task_error(source: tokio::task::JoinError) -> QueueError {
        QueueError::Task(source)
    }
}

#[async_trait]
impl QueueStore for RedbQueue {
    async fn put(&self, table: Table, key: String, value: String) -> Result<(), QueueError> {
        self.put_row(table, key, value).await
    }

    async fn remove(&self, table: Table, key: String) -> Result<(), QueueError> {
        self.remove_row(table, key).await
    }

    async fn rows(&self, table: Table) -> Result<Vec<(String, String)>, QueueError> {
        DbStore::rows(self, table).await
    }
}

/// The object-store backend: one object per item.
#[derive(Debug, Clone)]
pub(crate) struct ObjectQueue {
    area: SharedArea,
}

impl ObjectQueue {
    pub(crate) fn new(area: SharedArea) -> Self {
        Self { area }
    }

    fn dir(&self, table: Table) -> Path {
        self.area.path(&format!("_queue/{}", table.name()))
    }

    fn item(&self, table: Table, key: &str) -> Path {
        self.area
            .path(&format!("_queue/{}/{key}.json", table.name()))
    }

    fn err(
        &self,
        operation: &'static str,
        path: &Path,
    ) -> impl FnOnce(object_store::Error) -> QueueError {
        let url = self.area.url_of(path);
        move |source| QueueError::ObjectStore {
            operation,
            url,
            source: Box::new(source),
        }
    }

    fn store(&self) -> &dyn ObjectStore {
        &**self.area.store()
    }
}

#[async_trait]
impl QueueStore for ObjectQueue {
    async fn put(&self, table: Table, key: String, value: String) -> Result<(), QueueError> {
        let path = self.item(table, &key);
        self.store()
            .put(&path, PutPayload::from(value.into_bytes()))
            .await
            .map(|_| ())
            .map_err(self.err("put", &path))
    }

    async fn remove(&self, table: Table, key: String) -> Result<(), QueueError> {
        let path = self.item(table, &key);
        match self.store().delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", &path)(e)),
        }
    }

    async fn rows(&self, table: Table) -> Result<Vec<(String, String)>, QueueError> {
        let dir = self.dir(table);
        let metas: Vec<object_store::ObjectMeta> = self
            .store()
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(self.err("list", &dir))?;
        let mut rows = Vec::with_capacity(metas.len());
        for meta in metas {
            let Some(parts) = meta.location.prefix_match(&dir) else {
                continue;
            };
            let relative = parts
                .map(|p| p.as_ref().to_owned())
                .collect::<Vec<_>>()
                .join("/");
            let Some(key) = relative.strip_suffix(".json") else {
                continue;
            };
            let bytes = match self.store().get(&meta.location).await {
                Ok(got) => got.bytes().await.map_err(self.err("get", &meta.location))?,
                // struck off between the listing and the read
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(self.err("get", &meta.location)(e)),
            };
            let value = String::from_utf8(bytes.to_vec()).map_err(|e| QueueError::Decode {
                key: key.to_owned(),
                source: serde_json::Error::io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    e,
                )),
            })?;
            rows.push((key.to_owned(), value));
        }
        rows.sort();
        Ok(rows)
    }
}
