//! [`MemoryRegistrationStore`]: registrations in process memory only.

use std::sync::Arc;

use async_trait::async_trait;
use cfgsync_core::NodeRegistration;
use tokio::sync::watch;

use super::view::RegistrationView;
use crate::{RegistrationSnapshot, RegistrationStore, Result};

/// Registrations in process memory: fast, lost on restart.
#[derive(Debug)]
pub struct MemoryRegistrationStore {
    view: RegistrationView,
    write: std::sync::Mutex<()>,
}

impl Default for MemoryRegistrationStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistrationStore {
    /// An empty store at generation 0.
    pub fn new() -> Self {
        Self {
            view: RegistrationView::new([], 0),
            write: std::sync::Mutex::new(()),
        }
    }
}

#[async_trait]
impl RegistrationStore for MemoryRegistrationStore {
    async fn put(&self, registration: NodeRegistration) -> Result<bool> {
        let _write = self
            .write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.view.differs(&registration) {
            return Ok(false);
        }
        let generation = self.view.generation() + 1;
        self.view.insert(registration, generation);
        Ok(true)
    }

    async fn snapshot(&self) -> Result<Arc<RegistrationSnapshot>> {
        Ok(self.view.snapshot())
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.view.subscribe()
    }
}
