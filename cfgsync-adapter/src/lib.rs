#![doc = include_str!("../README.md")]

mod cache;
mod deployment;
mod error;
mod fixed;
mod materializer;
mod snapshot;
mod source;
pub mod store;

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
pub use store::{
    DurableRegistrationStore, MemoryRegistrationStore, ObjectRegistrationStore, ObjectStoreOptions,
    RegistrationStore,
};
