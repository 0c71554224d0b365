//! The in-memory registration set every store keeps: cached snapshot,
//! generation, change notifications.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use cfgsync_core::NodeRegistration;
use tokio::sync::watch;

use crate::RegistrationSnapshot;

/// The in-memory view every store keeps: registrations by identifier, the
/// generation, a snapshot rebuilt lazily (once per generation), and the change
/// channel.
#[derive(Debug)]
pub(crate) struct RegistrationView {
    state: Mutex<ViewState>,
    changes: watch::Sender<u64>,
}

#[derive(Debug)]
struct ViewState {
    nodes: BTreeMap<String, Arc<NodeRegistration>>,
    generation: u64,
    snapshot: Option<Arc<RegistrationSnapshot>>,
}

impl RegistrationView {
    pub fn new(nodes: impl IntoIterator<Item = NodeRegistration>, generation: u64) -> Self {
        Self {
            state: Mutex::new(ViewState {
                nodes: nodes
                    .into_iter()
                    .map(|r| (r.identifier.clone(), Arc::new(r)))
                    .collect(),
                generation,
                snapshot: None,
            }),
            changes: watch::Sender::new(generation),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `registration` differs from what the view holds.
    pub fn differs(&self, registration: &NodeRegistration) -> bool {
        self.lock()
            .nodes
            .get(&registration.identifier)
            .is_none_or(|held| **held != *registration)
    }

    /// The generation.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Inserts and moves to `generation` (which must be above the current one).
    pub fn insert(&self, registration: NodeRegistration, generation: u64) {
        let mut state = self.lock();
        state
            .nodes
            .insert(registration.identifier.clone(), Arc::new(registration));
        state.generation = generation;
        state.snapshot = None;
        drop(state);
        self.changes.send_replace(generation);
    }

    /// Inserts every registration of one change and moves to `generation` (one
    /// notification for all).
    #[cfg(feature = "object-store")]
    pub fn insert_all(
        &self,
        registrations: impl IntoIterator<Item = Arc<NodeRegistration>>,
        generation: u64,
    ) {
        let mut state = self.lock();
        for registration in registrations {
            state
                .nodes
                .insert(registration.identifier.clone(), registration);
        }
        state.generation = generation;
        state.snapshot = None;
        drop(state);
        self.changes.send_replace(generation);
    }

    /// Whether the view holds `identifier`.
    #[cfg(feature = "object-store")]
    pub fn contains(&self, identifier: &str) -> bool {
        self.lock().nodes.contains_key(identifier)
    }

    pub fn snapshot(&self) -> Arc<RegistrationSnapshot> {
        let mut state = self.lock();
        if let Some(snapshot) = &state.snapshot {
            return snapshot.clone();
        }
        let snapshot = Arc::new(RegistrationSnapshot::from_sorted(
            state.generation,
            state.nodes.values().cloned().collect(),
        ));
        state.snapshot = Some(snapshot.clone());
        snapshot
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
