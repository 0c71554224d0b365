//! Where app policy plugs into cfgsync: registration stores, materializers,
//! the per-generation cache, config sources.
#![doc = include_str!("../README.md")]

mod cache;
mod deployment;
mod error;
mod fixed;
mod materializer;
mod snapshot;
mod source;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;

pub use cache::{CachedSnapshot, CachedSnapshotMaterializer};
pub use deployment::{DeploymentAdapter, DeploymentMaterializer};
pub use error::{Error, Result};
pub use fixed::StaticArtifactsMaterializer;
pub use materializer::{
    NodeArtifactsMaterializer, NodeMaterialization, RegistrationSnapshotMaterializer,
    SnapshotMaterialization,
};
pub use snapshot::{NodeArtifacts, NodeArtifactsCatalog, RegistrationSnapshot};
pub use source::{MaterializingConfigSource, SnapshotConfigSource};
#[cfg(feature = "object-store")]
pub use store::{Compaction, ObjectRegistrationStore, ObjectStoreOptions};
pub use store::{DurableRegistrationStore, MemoryRegistrationStore, RegistrationStore};
