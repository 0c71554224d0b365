//! [`ConfigSource`], the trait the server asks for a node's files, its answers,
//! and [`ChangeNotifier`] for long-polls.

use std::sync::Arc;

use async_trait::async_trait;
use cfgsync_artifacts::ArtifactSet;
use tokio::sync::watch;

use crate::status::SourceStatus;
use crate::{Error, NodeRegistration, Result, ServedPayload};

/// What a [`ConfigSource`] answers for one node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ConfigResolveResponse {
    /// The node's payload (`200`).
    Ready(Arc<ServedPayload>),
    /// Not ready yet: not registered, or the adapter's policy is not met (`425`).
    NotReady,
    /// Not ready yet, for a reason the source names, e.g. "the input this
    /// node's files come from does not exist yet" (`425`, the reason in the
    /// error message, so the node's log says what it waits for).
    NotReadyBecause {
        /// Why, for people.
        reason: String,
    },
    /// There is no config for this node (`404`).
    Missing,
}

/// Where a cfgsync server gets its answers. Implement this to plug in policy;
/// the server is generic over `Arc<dyn ConfigSource>`.
#[async_trait]
pub trait ConfigSource: Send + Sync + std::fmt::Debug + 'static {
    /// Records a node's registration (`POST /register`).
    async fn register(&self, registration: NodeRegistration) -> Result<()>;

    /// The answer for a node (`POST /node`).
    async fn resolve(&self, registration: &NodeRegistration) -> Result<ConfigResolveResponse>;

    /// Replaces what one node is served (`POST /node/replace`). Sources that
    /// derive their files from policy answer [`Error::Unsupported`].
    async fn replace(&self, identifier: &str, files: ArtifactSet) -> Result<()> {
        let _ = (identifier, files);
        Err(Error::Unsupported {
            operation: "replacing a node's files",
        })
    }

    /// The stored registration of `identifier`, for sources that keep
    /// registrations (`None` by default, and for a node not registered). With
    /// scoped node tokens ([`crate::AuthConfig::scope_key`]) the server checks
    /// the token against it on `/node` too, so a token is never served files
    /// of a scope it was not issued for, whoever stored the registration.
    async fn registration(&self, identifier: &str) -> Result<Option<NodeRegistration>> {
        let _ = identifier;
        Ok(None)
    }

    /// A receiver that changes whenever any node's answer may have changed. The
    /// server uses it for long-poll (`POST /node?wait=N`); `None` means answers
    /// never change on their own, and long-poll answers at once.
    fn changes(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Whether the source can serve (`GET /readyz`): its backing store answers.
    async fn check_ready(&self) -> Result<()> {
        Ok(())
    }

    /// What the source tells the status page (`GET /`, `GET /api/v1/status`):
    /// its kind, file, generation, and its nodes with what each would be
    /// answered now. Called only when someone looks, never on the `/node`
    /// path. By default: kind `custom`, nodes not enumerated (the page then
    /// lists the nodes seen in requests).
    async fn status(&self) -> Result<SourceStatus> {
        Ok(SourceStatus::new("custom"))
    }
}

/// A change counter for [`ConfigSource::changes`]: sources call
/// [`notify`](Self::notify) after any change, subscribers wake without polling.
#[derive(Debug)]
pub struct ChangeNotifier {
    sender: watch::Sender<u64>,
}

impl Default for ChangeNotifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeNotifier {
    /// A notifier at generation 0.
    pub fn new() -> Self {
        Self {
            sender: watch::Sender::new(0),
        }
    }

    /// Wakes every subscriber; returns the new generation.
    pub fn notify(&self) -> u64 {
        let mut generation = 0;
        self.sender.send_modify(|g| {
            *g += 1;
            generation = *g;
        });
        generation
    }

    /// Sets a generation chosen by the source (e.g. its store's generation);
    /// subscribers wake only when it differs from the current one.
    pub fn set_generation(&self, generation: u64) {
        self.sender.send_if_modified(|g| {
            let changed = *g != generation;
            *g = generation;
            changed
        });
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.sender.borrow()
    }

    /// A new subscriber.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.sender.subscribe()
    }
}
