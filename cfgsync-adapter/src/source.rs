//! Config sources built from a store and a materializer:
//! [`SnapshotConfigSource`] and [`MaterializingConfigSource`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use async_trait::async_trait;
use cfgsync_artifacts::ArtifactSet;
use cfgsync_core::{
    ChangeNotifier, ConfigResolveResponse, ConfigSource, NodeAnswer, NodeRegistration,
    ServedPayload, SourceNode, SourceStatus,
};
use tokio::sync::watch;

use crate::{
    CachedSnapshotMaterializer, NodeArtifactsMaterializer, NodeMaterialization,
    RegistrationSnapshotMaterializer, RegistrationStore,
};

/// A [`ConfigSource`] from a registration store and a whole-snapshot
/// materializer (wrapped in a [`CachedSnapshotMaterializer`]): nodes register
/// into the store; `/node` answers `425` until the node is registered and the
/// policy is met, then the node's files from the cached catalog.
///
/// Long-polling nodes are woken only when an answer can have changed: while
/// the policy is not met, a new registration leaves every answer at `425`, so
/// a watcher materializes each new generation once and wakes the waiting nodes
/// only when the result is (or was) ready. Without this, each of N
/// registrations woke every node already waiting: O(N²) wake-ups in a boot
/// storm.
#[derive(Debug)]
pub struct SnapshotConfigSource<M> {
    store: Arc<dyn RegistrationStore>,
    cache: Arc<CachedSnapshotMaterializer<M>>,
    answers: OnceLock<Arc<ChangeNotifier>>,
}

impl<M: RegistrationSnapshotMaterializer> SnapshotConfigSource<M> {
    /// Serves `materializer`'s policy over the registrations in `store`.
    pub fn new(store: Arc<dyn RegistrationStore>, materializer: M) -> Self {
        Self {
            store,
            cache: Arc::new(CachedSnapshotMaterializer::new(materializer)),
            answers: OnceLock::new(),
        }
    }

    /// The change channel of the answers, with its watcher started on first
    /// use (inside the server's runtime; outside one, the store's channel).
    fn subscribe_answers(&self) -> watch::Receiver<u64> {
        if tokio::runtime::Handle::try_current().is_err() {
            return self.store.changes();
        }
        let notifier = self.answers.get_or_init(|| {
            let notifier = Arc::new(ChangeNotifier::new());
            tokio::spawn(watch_answers(
                Arc::downgrade(&self.store),
                Arc::downgrade(&self.cache),
                Arc::downgrade(&notifier),
                self.store.changes(),
                self.cache.inner().changes(),
            ));
            notifier
        });
        notifier.subscribe()
    }

    /// The cache (e.g. to read how often the materializer ran).
    pub fn cache(&self) -> &CachedSnapshotMaterializer<M> {
        &self.cache
    }

    /// The registration store.
    pub fn store(&self) -> &Arc<dyn RegistrationStore> {
        &self.store
    }
}

#[async_trait]
impl<M: RegistrationSnapshotMaterializer> ConfigSource for SnapshotConfigSource<M> {
    async fn register(&self, registration: NodeRegistration) -> cfgsync_core::Result<()> {
        self.cache.inner().validate_registration(&registration)?;
        self.store.put(registration).await?;
        Ok(())
    }

    async fn resolve(
        &self,
        registration: &NodeRegistration,
    ) -> cfgsync_core::Result<ConfigResolveResponse> {
        let snapshot = known_snapshot(self.store.as_ref(), &registration.identifier).await?;
        if !snapshot.contains(&registration.identifier) {
            return Ok(ConfigResolveResponse::NotReady);
        }
        let cached = self.cache.materialize(&snapshot).await?;
        cached.resolve(&registration.identifier)
    }

    async fn registration(
        &self,
        identifier: &str,
    ) -> cfgsync_core::Result<Option<NodeRegistration>> {
        Ok(stored_registration(self.store.as_ref(), identifier).await?)
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.subscribe_answers())
    }

    async fn check_ready(&self) -> cfgsync_core::Result<()> {
        Ok(self.store.check().await?)
    }

    async fn status(&self) -> cfgsync_core::Result<SourceStatus> {
        let snapshot = self.store.snapshot().await?;
        let cached = self.cache.materialize(&snapshot).await;
        let nodes = snapshot
            .iter()
            .map(|registration| {
                let answer = match &cached {
                    Ok(cached) => NodeAnswer::from_resolved(
                        cached.resolve(&registration.identifier),
                        NOT_READY_POLICY,
                    ),
                    Err(e) => NodeAnswer::Failed {
                        error: e.to_string(),
                    },
                };
                SourceNode::new(registration.identifier.clone(), answer)
                    .with_registration(registration.clone())
            })
            .collect();
        let inputs = self.cache.inner().changes().map_or(0, |rx| *rx.borrow());
        Ok(SourceStatus::new("registration")
            .with_generation(snapshot.generation() + inputs)
            .with_nodes(nodes))
    }
}

/// The store's snapshot, re-read from the shared state first when it does not
/// know `identifier` (the node may have registered on another replica). A
/// failed re-read is logged and the node answered from what is known (`425`,
/// which it retries), not with an error.
async fn known_snapshot(
    store: &dyn RegistrationStore,
    identifier: &str,
) -> crate::Result<Arc<crate::RegistrationSnapshot>> {
    let snapshot = store.snapshot().await?;
    if snapshot.contains(identifier) {
        return Ok(snapshot);
    }
    if let Err(error) = store.refresh_unknown(identifier).await {
        tracing::warn!(node = identifier, %error, "refresh for an unknown node failed");
        return Ok(snapshot);
    }
    store.snapshot().await
}

/// The stored registration of `identifier` (after [`known_snapshot`]'s
/// refresh for an unknown node), for [`ConfigSource::registration`].
async fn stored_registration(
    store: &dyn RegistrationStore,
    identifier: &str,
) -> crate::Result<Option<NodeRegistration>> {
    let snapshot = known_snapshot(store, identifier).await?;
    Ok(snapshot.get(identifier).cloned())
}

/// Why a registered node is not ready, as the status page says it.
const NOT_READY_POLICY: &str = "registered; the adapter's policy is not met yet";

/// Follows the store's and the materializer's changes for a
/// [`SnapshotConfigSource`]: materializes each new generation (bursts
/// coalesce: only the latest is looked at) and notifies `answers` when the
/// result is ready, was ready before, or could not be computed — never for a
/// not-ready result after a not-ready one, which changes no answer. Ends when
/// the source is dropped.
async fn watch_answers<M: RegistrationSnapshotMaterializer>(
    store: std::sync::Weak<dyn RegistrationStore>,
    cache: std::sync::Weak<CachedSnapshotMaterializer<M>>,
    answers: std::sync::Weak<ChangeNotifier>,
    mut store_changes: watch::Receiver<u64>,
    mut input_changes: Option<watch::Receiver<u64>>,
) {
    // Unknown before the first look: the first change always wakes.
    let mut was_ready = true;
    loop {
        let changed = match input_changes.as_mut() {
            Some(inputs) => tokio::select! {
                r = store_changes.changed() => r,
                r = inputs.changed() => r,
            },
            None => store_changes.changed().await,
        };
        if changed.is_err() {
            return;
        }
        store_changes.borrow_and_update();
        if let Some(inputs) = input_changes.as_mut() {
            inputs.borrow_and_update();
        }
        let (Some(store), Some(cache)) = (store.upgrade(), cache.upgrade()) else {
            return;
        };
        let ready = match store.snapshot().await {
            Ok(snapshot) => cache.materialize(&snapshot).await.map(|c| c.is_ready()),
            Err(e) => Err(e),
        };
        drop((store, cache));
        let wake = match ready {
            Ok(ready) => {
                let wake = ready || was_ready;
                was_ready = ready;
                wake
            }
            // Waiting nodes resolve again and answer the error themselves.
            Err(_) => {
                was_ready = true;
                true
            }
        };
        let Some(answers) = answers.upgrade() else {
            return;
        };
        if wake {
            answers.notify();
        }
    }
}

/// A [`ConfigSource`] from a registration store and a one-node materializer:
/// `/node` answers `425` until the node is registered, then what the
/// materializer makes of its stored registration. A node's payload is built
/// once and reused while its registration and the materializer's inputs stay
/// the same.
#[derive(Debug)]
pub struct MaterializingConfigSource<M> {
    store: Arc<dyn RegistrationStore>,
    materializer: M,
    built: Mutex<HashMap<String, BuiltPayload>>,
    changes: MergedChanges,
}

#[derive(Debug)]
struct BuiltPayload {
    registration: NodeRegistration,
    inputs: u64,
    payload: Arc<ServedPayload>,
}

impl<M: NodeArtifactsMaterializer> MaterializingConfigSource<M> {
    /// Serves `materializer`'s policy over the registrations in `store`.
    pub fn new(store: Arc<dyn RegistrationStore>, materializer: M) -> Self {
        let inputs = materializer.changes();
        Self {
            changes: MergedChanges::new(store.changes(), inputs),
            store,
            materializer,
            built: Mutex::new(HashMap::new()),
        }
    }

    /// The materializer.
    pub fn materializer(&self) -> &M {
        &self.materializer
    }

    fn inputs_generation(&self) -> u64 {
        self.materializer.changes().map_or(0, |rx| *rx.borrow())
    }

    /// The answer for a registered node, from its stored registration.
    async fn resolve_stored(
        &self,
        stored: &NodeRegistration,
    ) -> cfgsync_core::Result<ConfigResolveResponse> {
        let inputs = self.inputs_generation();
        {
            let built = self.built.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(hit) = built
                .get(&stored.identifier)
                .filter(|b| b.inputs == inputs && b.registration == *stored)
            {
                return Ok(ConfigResolveResponse::Ready(hit.payload.clone()));
            }
        }
        match self.materializer.materialize_node(stored).await? {
            NodeMaterialization::NotReady => Ok(match self.materializer.not_ready_reason(stored) {
                Some(reason) => ConfigResolveResponse::NotReadyBecause { reason },
                None => ConfigResolveResponse::NotReady,
            }),
            NodeMaterialization::Missing => Ok(ConfigResolveResponse::Missing),
            NodeMaterialization::Ready(files) => {
                let payload = Arc::new(ServedPayload::new(files)?);
                self.built
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(
                        stored.identifier.clone(),
                        BuiltPayload {
                            registration: stored.clone(),
                            inputs,
                            payload: payload.clone(),
                        },
                    );
                Ok(ConfigResolveResponse::Ready(payload))
            }
        }
    }
}

#[async_trait]
impl<M: NodeArtifactsMaterializer> ConfigSource for MaterializingConfigSource<M> {
    async fn register(&self, registration: NodeRegistration) -> cfgsync_core::Result<()> {
        self.materializer.validate_registration(&registration)?;
        self.store.put(registration).await?;
        Ok(())
    }

    async fn resolve(
        &self,
        registration: &NodeRegistration,
    ) -> cfgsync_core::Result<ConfigResolveResponse> {
        let snapshot = known_snapshot(self.store.as_ref(), &registration.identifier).await?;
        let Some(stored) = snapshot.get(&registration.identifier) else {
            return Ok(ConfigResolveResponse::NotReady);
        };
        self.resolve_stored(stored).await
    }

    async fn registration(
        &self,
        identifier: &str,
    ) -> cfgsync_core::Result<Option<NodeRegistration>> {
        Ok(stored_registration(self.store.as_ref(), identifier).await?)
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> cfgsync_core::Result<()> {
        self.materializer.replace(identifier, files).await?;
        self.built
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(identifier);
        Ok(())
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    async fn check_ready(&self) -> cfgsync_core::Result<()> {
        Ok(self.store.check().await?)
    }

    async fn status(&self) -> cfgsync_core::Result<SourceStatus> {
        let snapshot = self.store.snapshot().await?;
        let mut nodes = Vec::with_capacity(snapshot.len());
        for registration in snapshot.iter() {
            let answer = NodeAnswer::from_resolved(
                self.resolve_stored(registration).await,
                NOT_READY_POLICY,
            );
            nodes.push(
                SourceNode::new(registration.identifier.clone(), answer)
                    .with_registration(registration.clone()),
            );
        }
        Ok(SourceStatus::new("registration")
            .with_generation(snapshot.generation() + self.inputs_generation())
            .with_nodes(nodes))
    }
}

/// One change channel from the store's and the materializer's: a forwarding
/// task is started on first use (inside the server's runtime).
#[derive(Debug)]
struct MergedChanges {
    store: watch::Receiver<u64>,
    inputs: Option<watch::Receiver<u64>>,
    merged: OnceLock<Arc<ChangeNotifier>>,
}

impl MergedChanges {
    fn new(store: watch::Receiver<u64>, inputs: Option<watch::Receiver<u64>>) -> Self {
        Self {
            store,
            inputs,
            merged: OnceLock::new(),
        }
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        let Some(inputs) = &self.inputs else {
            return self.store.clone();
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return self.store.clone();
        }
        let notifier = self.merged.get_or_init(|| {
            let notifier = Arc::new(ChangeNotifier::new());
            let weak = Arc::downgrade(&notifier);
            let mut store = self.store.clone();
            let mut inputs = inputs.clone();
            tokio::spawn(async move {
                loop {
                    let changed = tokio::select! {
                        r = store.changed() => r,
                        r = inputs.changed() => r,
                    };
                    let Some(notifier) = weak.upgrade() else {
                        return;
                    };
                    if changed.is_err() {
                        return;
                    }
                    notifier.notify();
                }
            });
            notifier
        });
        notifier.subscribe()
    }
}
