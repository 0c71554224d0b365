#![doc = include_str!("../README.md")]

pub mod catalog;
pub mod config;
mod db;
mod error;
pub mod fanout;
mod http;
pub mod inspect;
mod lock;
pub mod materializer;
mod metrics;
pub mod mosaic;
mod pipeline;
pub mod resolver;
pub mod retry;
mod serve;
pub mod store;
pub mod template;

pub use catalog::{Catalog, CatalogFilter, ContentSyncResult, LabletDefinition, SyncStatus};
pub use cfgsync_core::Secret;
pub use config::LabletSyncConfig;
pub use error::{Error, Result, Stage};
pub use inspect::{InspectError, InspectLimits, PackageInfo, inspect_package};
pub use lock::{LabletGuard, LabletLocks};
pub use materializer::{ContentManifest, LabletMaterializer, LabletNodeMetadata};
pub use metrics::Metrics;
pub use pipeline::{BytesProgress, LabletSync, Progress, RetryReport, SyncReport, validate_name};
pub use serve::{LabletApp, LabletService, ServeOptions, build_lablet_app, serve_lablets};
