//! [`EmbeddedCatalog`]: the default catalog, one durable `redb` file in the data
//! directory that computes the content version itself.

use std::path::Path;
use std::sync::Arc;

use crate::db::{DbFile, DbStore, Table};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::{
    Catalog, CatalogError, CatalogFilter, ContentSyncResult, KnownRecords, LabletDefinition,
    next_content_version,
};

const DEFINITIONS: Table = TableDefinition::new("lablet_definitions");
/// `generation`: how many writes the catalog has committed (the change marker).
const META: Table = TableDefinition::new("lablet_catalog_meta");
const GENERATION: &str = "generation";

/// The embedded default catalog: one `redb` file (durable, crash-safe commits),
/// definitions stored as JSON by id, opened per operation so several processes can
/// share it. Computes `content_version` itself (inside the write transaction).
///
/// **Change marker**: every write also bumps a generation counter in the same
/// transaction, so [`Catalog::marker`] (one read transaction) changes with any
/// write, whichever process on this data dir made it.
#[derive(Debug, Clone)]
pub struct EmbeddedCatalog {
    db: Arc<DbFile>,
}

impl EmbeddedCatalog {
    /// Open (or create) the catalog file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, CatalogError> {
        let this = Self {
            db: Arc::new(DbFile::new(path)),
        };
        this.create_table(DEFINITIONS)?;
        this.create_table(META)?;
        Ok(this)
    }

    /// Writes `def` and bumps the generation, in `tx`.
    fn put_sync(&self, tx: &WriteTransaction, def: &LabletDefinition) -> Result<(), CatalogError> {
        let json = serde_json::to_string(def).map_err(|source| CatalogError::Decode {
            what: format!("definition {}", def.id),
            source,
        })?;
        let mut table = tx.open_table(DEFINITIONS).map_err(|e| self.err(e))?;
        table
            .insert(def.id.as_str(), json.as_str())
            .map_err(|e| self.err(e))?;
        let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
        let generation = match meta.get(GENERATION).map_err(|e| self.err(e))? {
            Some(v) => v.value().parse::<u64>().unwrap_or(0),
            None => 0,
        };
        let next = generation.saturating_add(1).to_string();
        meta.insert(GENERATION, next.as_str())
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn get_sync(&self, db: &Database, id: &str) -> Result<Option<LabletDefinition>, CatalogError> {
        let tx = db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(DEFINITIONS).map_err(|e| self.err(e))?;
        match table.get(id).map_err(|e| self.err(e))? {
            Some(value) => decode(id, value.value()).map(Some),
            None => Ok(None),
        }
    }
}

impl DbStore for EmbeddedCatalog {
    type Error = CatalogError;

    fn file(&self) -> &DbFile {
        &self.db
    }

    fn db_error(path: &Path, source: redb::Error) -> CatalogError {
        CatalogError::Db {
            path: path.display().to_string(),
            source: Box::new(source),
        }
    }

    fn task_error(source: tokio::task::JoinError) -> CatalogError {
        CatalogError::Task(source)
    }
}

fn decode(id: &str, json: &str) -> Result<LabletDefinition, CatalogError> {
    serde_json::from_str(json).map_err(|source| CatalogError::Decode {
        what: format!("stored definition {id}"),
        source,
    })
}

#[async_trait]
impl Catalog for EmbeddedCatalog {
    async fn record(
        &self,
        id: &str,
        result: &ContentSyncResult,
    ) -> Result<LabletDefinition, CatalogError> {
        let id = id.to_owned();
        let result = result.clone();
        self.blocking(move |this, db| {
            // one write transaction: read previous, compute version, write
            let tx = db.begin_write().map_err(|e| this.err(e))?;
            let previous = {
                let table = tx.open_table(DEFINITIONS).map_err(|e| this.err(e))?;
                match table.get(id.as_str()).map_err(|e| this.err(e))? {
                    Some(v) => Some(decode(&id, v.value())?),
                    None => None,
                }
            };
            let mut content = result;
            content.content_version =
                next_content_version(previous.as_ref(), &content.content_package_hash);
            let def = LabletDefinition { id, content };
            this.put_sync(&tx, &def)?;
            tx.commit().map_err(|e| this.err(e))?;
            Ok(def)
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<LabletDefinition>, CatalogError> {
        let id = id.to_owned();
        self.blocking(move |this, db| this.get_sync(db, &id)).await
    }

    async fn list(&self, filter: &CatalogFilter) -> Result<Vec<LabletDefinition>, CatalogError> {
        let mut out = Vec::new();
        for (id, json) in self.rows(DEFINITIONS).await? {
            let def = decode(&id, &json)?;
            if filter.matches(&def) {
                out.push(def);
            }
        }
        Ok(out)
    }

    async fn marker(&self) -> Result<Option<String>, CatalogError> {
        self.blocking(|this, db| {
            let tx = db.begin_read().map_err(|e| this.err(e))?;
            let meta = tx.open_table(META).map_err(|e| this.err(e))?;
            let generation = meta.get(GENERATION).map_err(|e| this.err(e))?;
            Ok(Some(
                generation.map_or_else(|| "0".to_owned(), |v| v.value().to_owned()),
            ))
        })
        .await
    }
}

#[async_trait]
impl KnownRecords for EmbeddedCatalog {
    async fn remember(&self, definition: &LabletDefinition) -> Result<(), CatalogError> {
        let def = definition.clone();
        self.blocking(move |this, db| {
            let tx = db.begin_write().map_err(|e| this.err(e))?;
            this.put_sync(&tx, &def)?;
            tx.commit().map_err(|e| this.err(e))
        })
        .await
    }
}
