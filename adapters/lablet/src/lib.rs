//! cfgsync-lablet: lablet content sync (resolve, download, inspect, store,
//! fan-out, record) and lablet content for nodes; the crate docs are its README.
#![doc = include_str!("../README.md")]

pub mod catalog;
pub mod config;
mod db;
mod drain;
mod error;
pub mod fanout;
mod http;
pub mod inspect;
pub mod jobs;
pub mod lease;
pub mod materializer;
mod metrics;
pub mod mosaic;
pub mod outbox;
mod pipeline;
mod queue_store;
pub mod resolver;
mod retry;
mod serve;
mod status;
pub mod store;
mod template;

pub use catalog::{Catalog, CatalogFilter, ContentSyncResult, LabletDefinition, SyncStatus};
pub use cfgsync_core::Secret;
pub use config::{LABLET_SETTINGS, LabletSyncConfig, RetryPolicy};
pub use drain::RetryReport;
pub use error::{Error, Result, Stage};
pub use http::TransportError;
pub use inspect::{InspectError, InspectLimits, PackageInfo, inspect_package};
pub use materializer::{ContentManifest, LabletMaterializer, LabletNodeMetadata};
pub use metrics::Metrics;
pub use pipeline::{BytesProgress, LabletSync, Progress, SyncReport, validate_name};
pub use serve::{
    JOBS_ROUTE, LabletApp, LabletService, NodeTokenScope, ServeOptions, build_lablet_app,
    serve_lablets,
};
pub use status::{SYNC_FORM_ROUTE, SyncAttempt};
