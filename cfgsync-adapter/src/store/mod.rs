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
pub use object::{ObjectRegistrationStore, ObjectStoreOptions};

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
}
