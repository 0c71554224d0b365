//! [`DurableRegistrationStore`]: registrations in an embedded redb database
//! that survives restarts and `kill -9`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use cfgsync_core::NodeRegistration;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch};

use super::view::RegistrationView;
use crate::{Error, RegistrationSnapshot, RegistrationStore, Result};

const NODES: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("registrations");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const GENERATION: &str = "generation";
/// Most registrations committed in one transaction.
const MAX_BATCH: usize = 1024;

/// Registrations in an embedded database file (`DIR/registrations.redb`,
/// [redb]): every accepted `put` is committed and fsynced before it returns, so
/// the set survives a crash or `kill -9`. Concurrent puts are committed together
/// (group commit), so a boot storm costs a few fsyncs, not one per node.
///
/// One process at a time may open a directory.
#[derive(Debug)]
pub struct DurableRegistrationStore {
    name: String,
    view: Arc<RegistrationView>,
    writer: mpsc::Sender<PutRequest>,
    writer_task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct PutRequest {
    registration: NodeRegistration,
    reply: oneshot::Sender<Result<bool>>,
}

impl DurableRegistrationStore {
    /// Opens (creating when missing) the store in `dir`.
    pub async fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let name = format!("durable {}", dir.display());
        let opened = tokio::task::spawn_blocking(move || open_db(&dir))
            .await
            .map_err(|e| Error::store(name.clone(), "open", e))?
            .map_err(|e| Error::store(name.clone(), "open", e))?;
        let (db, nodes, generation) = opened;
        let view = Arc::new(RegistrationView::new(nodes, generation));
        let (writer, requests) = mpsc::channel(MAX_BATCH);
        let writer_task = tokio::spawn(write_loop(
            Arc::new(db),
            view.clone(),
            requests,
            name.clone(),
        ));
        tracing::info!(store = %name, generation, "registration store opened");
        Ok(Self {
            name,
            view,
            writer,
            writer_task,
        })
    }

    /// Finishes pending writes and closes the database, so the directory can be
    /// opened again (by this process or another).
    pub async fn close(self) {
        drop(self.writer);
        let _ = self.writer_task.await;
    }
}

type Opened = (Database, Vec<NodeRegistration>, u64);

fn open_db(dir: &Path) -> std::result::Result<Opened, Box<dyn std::error::Error + Send + Sync>> {
    std::fs::create_dir_all(dir)?;
    let path: PathBuf = dir.join("registrations.redb");
    let db = Database::create(&path)?;
    let txn = db.begin_write()?;
    {
        txn.open_table(NODES)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    let read = db.begin_read()?;
    let table = read.open_table(NODES)?;
    let mut nodes = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        let registration: NodeRegistration =
            serde_json::from_slice(value.value()).map_err(|e| {
                format!(
                    "registration {:?} in {} is corrupt: {e}",
                    key.value(),
                    path.display()
                )
            })?;
        nodes.push(registration);
    }
    let generation = read
        .open_table(META)?
        .get(GENERATION)?
        .map_or(0, |g| g.value());
    drop(table);
    drop(read);
    Ok((db, nodes, generation))
}

async fn write_loop(
    db: Arc<Database>,
    view: Arc<RegistrationView>,
    mut requests: mpsc::Receiver<PutRequest>,
    name: String,
) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        // Only registrations that change something are written; within a batch
        // a later put of the same node wins.
        let mut changed: BTreeMap<String, NodeRegistration> = BTreeMap::new();
        let mut replies = Vec::with_capacity(batch.len());
        for request in batch {
            let differs = match changed.get(&request.registration.identifier) {
                Some(pending) => *pending != request.registration,
                None => view.differs(&request.registration),
            };
            if differs {
                changed.insert(
                    request.registration.identifier.clone(),
                    request.registration,
                );
            }
            replies.push((request.reply, differs));
        }
        if changed.is_empty() {
            for (reply, _) in replies {
                let _ = reply.send(Ok(false));
            }
            continue;
        }
        let generation = view.generation() + 1;
        let to_write: Vec<NodeRegistration> = changed.into_values().collect();
        let commit = {
            let db = db.clone();
            let to_write = to_write.clone();
            tokio::task::spawn_blocking(move || commit(&db, &to_write, generation)).await
        };
        match commit {
            Ok(Ok(())) => {
                for registration in to_write {
                    view.insert(registration, generation);
                }
                for (reply, differs) in replies {
                    let _ = reply.send(Ok(differs));
                }
            }
            failed => {
                let message = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(())) => String::new(),
                };
                tracing::error!(store = %name, error = %message, "registration commit failed");
                for (reply, _) in replies {
                    let _ = reply.send(Err(Error::Store {
                        store: name.clone(),
                        operation: "put",
                        message: message.clone(),
                        source: None,
                    }));
                }
            }
        }
    }
}

fn commit(
    db: &Database,
    registrations: &[NodeRegistration],
    generation: u64,
) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let txn = db.begin_write()?;
    {
        let mut nodes = txn.open_table(NODES)?;
        for registration in registrations {
            let json = serde_json::to_vec(registration)?;
            nodes.insert(registration.identifier.as_str(), json.as_slice())?;
        }
        txn.open_table(META)?.insert(GENERATION, generation)?;
    }
    txn.commit()?;
    Ok(())
}

#[async_trait]
impl RegistrationStore for DurableRegistrationStore {
    async fn put(&self, registration: NodeRegistration) -> Result<bool> {
        if !self.view.differs(&registration) {
            return Ok(false);
        }
        let (reply, answer) = oneshot::channel();
        let stopped = || Error::Store {
            store: self.name.clone(),
            operation: "put",
            message: "the store's writer has stopped".into(),
            source: None,
        };
        self.writer
            .send(PutRequest {
                registration,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn snapshot(&self) -> Result<Arc<RegistrationSnapshot>> {
        Ok(self.view.snapshot())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.view.subscribe()
    }

    async fn check(&self) -> Result<()> {
        if self.writer.is_closed() {
            return Err(Error::Store {
                store: self.name.clone(),
                operation: "check",
                message: "the store's writer has stopped".into(),
                source: None,
            });
        }
        Ok(())
    }
}
