#![doc = include_str!("../README.md")]

pub mod auth;
mod client;
pub mod document;
mod encoding;
mod error;
mod metrics;
mod payload;
mod registration;
mod router;
mod serve;
mod served;
mod server;
mod source;
mod static_source;

pub use auth::{AuthConfig, Secret};
pub use client::{
    CfgsyncClient, CfgsyncClientBuilder, DEFAULT_MAX_PAYLOAD_BYTES, FetchOptions, FetchOutcome,
};
pub use document::{NodeArtifactsBundle, NodeArtifactsBundleEntry, RegistrationArtifacts};
pub use encoding::ContentCoding;
pub use error::{BoxError, Error, Result};
pub use payload::{
    ErrorBody, ErrorCode, NodeArtifactsPayload, NodeFilesReplacement, SCHEMA_VERSION,
};
pub use registration::{
    DEFAULT_MAX_METADATA_BYTES, MAX_IDENTIFIER_LEN, NodeRegistration, RegistrationPayload,
    validate_identifier,
};
pub use router::build_cfgsync_router;
pub use serve::{
    LISTEN_BACKLOG, bind_listener, serve_app_on, serve_cfgsync, serve_cfgsync_on, shutdown_signal,
};
pub use served::{ServedPayload, SharedFiles};
pub use server::{CfgsyncServerState, CfgsyncServerStateBuilder, ServerLimits};
pub use source::{ChangeNotifier, ConfigResolveResponse, ConfigSource};
pub use static_source::{BundleConfigSource, StaticConfigSource};

pub use cfgsync_artifacts::{ArtifactEncoding, ArtifactFile, ArtifactSet};
