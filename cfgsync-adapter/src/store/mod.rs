//! Where registrations live: [`RegistrationStore`] and its implementations.

mod durable;
mod memory;
#[cfg(feature = "object-store")]
mod object;
mod view;

use std::sync::Arc;

use async_trait::async_trait;
use cfgsync_core::NodeRegistration;
use tokio::sync::watch;

pub use durable::DurableRegistrationStore;
pub use memory::MemoryRegistrationStore;
#[cfg(feature = "object-store")]
pub use object::{Compaction, ObjectRegistrationStore, ObjectStoreOptions};

use crate::{RegistrationSnapshot, Result};

/// Stores node registrations and numbers their changes.
///
/// Every implementation keeps the same promises, checked by one shared
/// behaviour suite (`cfgsync_adapter::testing::registration_store_suite`,
/// feature `testing`): `put` of an unchanged registration changes nothing; any
/// change moves the **generation** forward (never back); `snapshot` is cheap
/// (a shared, cached value) and sorted by identifier; `changes` wakes
/// subscribers on every new generation.
#[async_trait]
pub trait RegistrationStore: Send + Sync + std::fmt::Debug + 'static {
    /// Adds or replaces a registration; `true` when anything changed.
    async fn put(&self, registration: NodeRegistration) -> Result<bool>;

    /// The current registrations.
    async fn snapshot(&self) -> Result<Arc<RegistrationSnapshot>>;

    /// A receiver of the generation, changed on every change of the set.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Whether the backing store answers (`/readyz`).
    async fn check(&self) -> Result<()> {
        self.snapshot().await.map(|_| ())
    }

    /// Called when a server is asked about `identifier` and
    /// [`snapshot`](RegistrationStore::snapshot) does not hold it, before it answers "not
    /// ready": a store shared with other writers (other replicas) re-reads the
    /// shared state now instead of at its next poll, so a node registered
    /// anywhere is known everywhere on its next request. Implementations bound
    /// the cost (at most one re-read per short interval, shared by every caller
    /// that arrives meanwhile) since any client can ask about unknown names.
    /// Stores that only this process writes know everything already: the
    /// default does nothing.
    async fn refresh_unknown(&self, identifier: &str) -> Result<()> {
        let _ = identifier;
        Ok(())
    }
}

#[async_trait]
impl<S: RegistrationStore + ?Sized> RegistrationStore for Arc<S> {
    async fn put(&self, registration: NodeRegistration) -> Result<bool> {
        (**self).put(registration).await
    }

    async fn snapshot(&self) -> Result<Arc<RegistrationSnapshot>> {
        (**self).snapshot().await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        (**self).changes()
    }

    async fn check(&self) -> Result<()> {
        (**self).check().await
    }

    async fn refresh_unknown(&self, identifier: &str) -> Result<()> {
        (**self).refresh_unknown(identifier).await
    }
}
