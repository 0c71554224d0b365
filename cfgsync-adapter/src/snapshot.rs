//! [`RegistrationSnapshot`] (the registered set at one generation) and the
//! materialized [`NodeArtifactsCatalog`].

use std::collections::HashMap;
use std::sync::Arc;

use cfgsync_artifacts::ArtifactSet;
use cfgsync_core::NodeRegistration;

/// The registered nodes at one moment, sorted by identifier, with the store's
/// **generation**: it changes whenever the set or any registration changes, and
/// only then.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RegistrationSnapshot {
    generation: u64,
    registrations: Vec<Arc<NodeRegistration>>,
}

impl RegistrationSnapshot {
    /// A snapshot of `registrations` (sorted here; a later duplicate identifier
    /// replaces an earlier one).
    pub fn new(
        generation: u64,
        registrations: impl IntoIterator<Item = impl Into<Arc<NodeRegistration>>>,
    ) -> Self {
        let mut by_id: Vec<Arc<NodeRegistration>> =
            registrations.into_iter().map(Into::into).collect();
        by_id.sort_by(|a, b| a.identifier.cmp(&b.identifier));
        by_id.dedup_by(|later, earlier| {
            let same = later.identifier == earlier.identifier;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        Self::from_sorted(generation, by_id)
    }

    /// A snapshot from registrations already sorted by identifier without
    /// duplicates (as a store keeps them).
    pub(crate) fn from_sorted(generation: u64, registrations: Vec<Arc<NodeRegistration>>) -> Self {
        Self {
            generation,
            registrations,
        }
    }

    /// The store generation this snapshot was taken at.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of registered nodes.
    pub fn len(&self) -> usize {
        self.registrations.len()
    }

    /// Whether no node is registered.
    pub fn is_empty(&self) -> bool {
        self.registrations.is_empty()
    }

    /// The registrations, sorted by identifier.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &NodeRegistration> + '_ {
        self.registrations.iter().map(|r| r.as_ref())
    }

    /// The registration of `identifier` (binary search).
    pub fn get(&self, identifier: &str) -> Option<&NodeRegistration> {
        self.registrations
            .binary_search_by(|r| r.identifier.as_str().cmp(identifier))
            .ok()
            .map(|i| self.registrations[i].as_ref())
    }

    /// Whether `identifier` is registered.
    pub fn contains(&self, identifier: &str) -> bool {
        self.get(identifier).is_some()
    }
}

/// One node's own files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeArtifacts {
    /// The node.
    pub identifier: String,
    /// Its files.
    pub files: ArtifactSet,
}

impl NodeArtifacts {
    /// A node's files.
    pub fn new(identifier: impl Into<String>, files: ArtifactSet) -> Self {
        Self {
            identifier: identifier.into(),
            files,
        }
    }
}

/// What a snapshot materializes to: each node's own files, plus shared files
/// appended to every node's payload (the node's own file wins a path clash).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeArtifactsCatalog {
    nodes: HashMap<String, ArtifactSet>,
    shared: ArtifactSet,
}

impl NodeArtifactsCatalog {
    /// A catalog of per-node files (a later entry for the same node replaces an
    /// earlier one).
    pub fn new(nodes: impl IntoIterator<Item = NodeArtifacts>) -> Self {
        Self {
            nodes: nodes
                .into_iter()
                .map(|node| (node.identifier, node.files))
                .collect(),
            shared: ArtifactSet::new(),
        }
    }

    /// Sets the files every node receives.
    #[must_use]
    pub fn with_shared(mut self, shared: ArtifactSet) -> Self {
        self.shared = shared;
        self
    }

    /// A node's own files.
    pub fn node(&self, identifier: &str) -> Option<&ArtifactSet> {
        self.nodes.get(identifier)
    }

    /// The shared files.
    pub fn shared(&self) -> &ArtifactSet {
        &self.shared
    }

    /// Number of nodes with files.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node has files.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node's full payload: its files merged with the shared ones; `None` when
    /// the catalog has nothing for it.
    pub fn payload_files(&self, identifier: &str) -> Option<ArtifactSet> {
        self.nodes
            .get(identifier)
            .map(|files| files.clone().merged_with_shared(&self.shared))
    }
}
