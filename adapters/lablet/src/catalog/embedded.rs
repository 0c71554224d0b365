//! [`EmbeddedCatalog`]: the default catalog, one durable `redb` file in the data
//! directory that computes the content version itself.

use std::path::Path;
use std::sync::Arc;

use crate::db::{DbFile, DbStore, Table};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{
    Catalog, CatalogError, CatalogFilter, ContentSyncResult, LabletDefinition, next_content_version,
};

const DEFINITIONS: Table = TableDefinition::new("lablet_definitions");

/// The embedded default catalog: one `redb` file (durable, crash-safe commits),
/// definitions stored as JSON by id, opened per operation so several processes can
/// share it. Computes `content_version` itself (inside the write transaction).
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
        Ok(this)
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
            let def = {
                let mut table = tx.open_table(DEFINITIONS).map_err(|e| this.err(e))?;
                let previous = match table.get(id.as_str()).map_err(|e| this.err(e))? {
                    Some(v) => Some(decode(&id, v.value())?),
                    None => None,
                };
                let mut content = result;
                content.content_version =
                    next_content_version(previous.as_ref(), &content.content_package_hash);
                let def = LabletDefinition {
                    id: id.clone(),
                    content,
                };
                let json = serde_json::to_string(&def).map_err(|source| CatalogError::Decode {
                    what: format!("definition {id}"),
                    source,
                })?;
                table
                    .insert(id.as_str(), json.as_str())
                    .map_err(|e| this.err(e))?;
                def
            };
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
}
