//! [`CachedSnapshotMaterializer`]: materializes once per registration
//! generation and encodes each payload once.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use cfgsync_core::{ConfigResolveResponse, ServedPayload, SharedFiles};
use tokio::sync::watch;

use crate::{
    RegistrationSnapshot, RegistrationSnapshotMaterializer, Result, SnapshotMaterialization,
};

/// Wraps any [`RegistrationSnapshotMaterializer`] so it runs **once per
/// generation**: the result is kept until the store's generation (or the
/// materializer's own change counter) moves, concurrent requests for the same
/// generation wait for that one run, and each node's payload (merge, JSON
/// encoding, ETag) is built once, on its first request. A `/node` answer then
/// costs a map lookup, whatever the number of registered nodes.
#[derive(Debug)]
pub struct CachedSnapshotMaterializer<M> {
    inner: M,
    current: RwLock<Option<Arc<CachedSnapshot>>>,
    running: tokio::sync::Mutex<()>,
    runs: std::sync::atomic::AtomicU64,
}

/// A materialized generation, with lazily built per-node payloads.
#[derive(Debug)]
pub struct CachedSnapshot {
    key: CacheKey,
    outcome: CachedOutcome,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheKey {
    generation: u64,
    inputs: u64,
}

#[derive(Debug)]
enum CachedOutcome {
    NotReady,
    Ready {
        catalog: crate::NodeArtifactsCatalog,
        /// The catalog's shared files, encoded once for every node's payload.
        shared: SharedFiles,
        payloads: HashMap<String, OnceLock<Result<Arc<ServedPayload>, String>>>,
    },
}

impl CachedSnapshot {
    /// The `/node` answer for a registered node of this generation.
    pub fn resolve(&self, identifier: &str) -> cfgsync_core::Result<ConfigResolveResponse> {
        let CachedOutcome::Ready {
            catalog,
            shared,
            payloads,
        } = &self.outcome
        else {
            return Ok(ConfigResolveResponse::NotReady);
        };
        let Some(slot) = payloads.get(identifier) else {
            return Ok(ConfigResolveResponse::Missing);
        };
        let built = slot.get_or_init(|| {
            let own = catalog.node(identifier).cloned().unwrap_or_default();
            ServedPayload::merged(&own, shared)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        });
        match built {
            Ok(payload) => Ok(ConfigResolveResponse::Ready(payload.clone())),
            Err(message) => Err(cfgsync_core::Error::Source {
                message: format!("cannot build payload of node {identifier:?}: {message}"),
                source: None,
            }),
        }
    }

    /// The store generation this result belongs to.
    pub fn generation(&self) -> u64 {
        self.key.generation
    }

    /// Whether the policy was met.
    pub fn is_ready(&self) -> bool {
        matches!(self.outcome, CachedOutcome::Ready { .. })
    }
}

impl<M: RegistrationSnapshotMaterializer> CachedSnapshotMaterializer<M> {
    /// Wraps `inner`.
    pub fn new(inner: M) -> Self {
        Self {
            inner,
            current: RwLock::new(None),
            running: tokio::sync::Mutex::new(()),
            runs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The wrapped materializer.
    pub fn inner(&self) -> &M {
        &self.inner
    }

    /// How many times the wrapped materializer ran.
    pub fn materializations(&self) -> u64 {
        self.runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn inputs_generation(&self) -> u64 {
        self.inner.changes().map_or(0, |rx| *rx.borrow())
    }

    fn cached(&self, key: CacheKey) -> Option<Arc<CachedSnapshot>> {
        let current = self
            .current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        current.as_ref().filter(|c| c.key == key).cloned()
    }

    /// The materialized result for `snapshot`'s generation: from the cache, or by
    /// running the wrapped materializer once.
    pub async fn materialize(
        &self,
        snapshot: &RegistrationSnapshot,
    ) -> Result<Arc<CachedSnapshot>> {
        let key = CacheKey {
            generation: snapshot.generation(),
            inputs: self.inputs_generation(),
        };
        if let Some(hit) = self.cached(key) {
            return Ok(hit);
        }
        let _running = self.running.lock().await;
        if let Some(hit) = self.cached(key) {
            return Ok(hit);
        }
        self.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = match self.inner.materialize_snapshot(snapshot).await? {
            SnapshotMaterialization::NotReady => CachedOutcome::NotReady,
            SnapshotMaterialization::Ready(catalog) => {
                let payloads = snapshot
                    .iter()
                    .filter(|r| catalog.node(&r.identifier).is_some())
                    .map(|r| (r.identifier.clone(), OnceLock::new()))
                    .collect();
                let shared = SharedFiles::new(catalog.shared().clone())?;
                CachedOutcome::Ready {
                    catalog,
                    shared,
                    payloads,
                }
            }
        };
        let fresh = Arc::new(CachedSnapshot { key, outcome });
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(fresh.clone());
        Ok(fresh)
    }
}

#[async_trait]
impl<M: RegistrationSnapshotMaterializer> RegistrationSnapshotMaterializer
    for CachedSnapshotMaterializer<M>
{
    async fn materialize_snapshot(
        &self,
        snapshot: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization> {
        let cached = self.materialize(snapshot).await?;
        Ok(match &cached.outcome {
            CachedOutcome::NotReady => SnapshotMaterialization::NotReady,
            CachedOutcome::Ready { catalog, .. } => SnapshotMaterialization::Ready(catalog.clone()),
        })
    }

    fn validate_registration(&self, registration: &cfgsync_core::NodeRegistration) -> Result<()> {
        self.inner.validate_registration(registration)
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.inner.changes()
    }
}
