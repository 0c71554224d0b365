//! The cfgsync wire contract: registration and payload types, `ConfigSource`,
//! the axum router, the reqwest client.
#![doc = include_str!("../README.md")]

pub mod auth;
mod client;
mod connection;
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
pub mod status;
pub mod tls;
pub mod transport;

pub use auth::{AuthConfig, Secret};
pub use client::{
    CfgsyncClient, CfgsyncClientBuilder, DEFAULT_MAX_PAYLOAD_BYTES, DEFAULT_REQUEST_TIMEOUT,
    FetchOptions, FetchOutcome,
};
pub use document::{NodeArtifactsBundle, NodeArtifactsBundleEntry, RegistrationArtifacts};
pub use encoding::ContentCoding;
pub use error::{BoxError, Error, Result};
pub use payload::{
    ErrorBody, ErrorCode, NodeArtifactsPayload, NodeFilesReplacement, SCHEMA_VERSION,
};
pub use registration::{
    DEFAULT_MAX_METADATA_BYTES, IDENTIFIER_CHARS, MAX_IDENTIFIER_LEN, NodeRegistration,
    RegistrationPayload, is_identifier_char, validate_identifier,
};
pub use router::{build_cfgsync_router, json_method_not_allowed};
pub use serve::{
    LISTEN_BACKLOG, bind_listener, serve_app_on, serve_cfgsync, serve_cfgsync_on, shutdown_signal,
};
pub use served::{ServedPayload, SharedFiles};
pub use server::{
    CfgsyncServerState, CfgsyncServerStateBuilder, DEFAULT_HEADER_READ_TIMEOUT_SECS,
    DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_SHUTDOWN_TIMEOUT_SECS, ServerLimits, is_insecure_listener,
};
pub use source::{ChangeNotifier, ConfigResolveResponse, ConfigSource};
pub use static_source::{BundleConfigSource, StaticConfigSource};
pub use status::{
    FetchTracker, NodeAnswer, RenderedSection, ServerStatus, SourceNode, SourceStatus,
    StatusSection,
};
pub use transport::{TransportFailure, describe_transport_failure};

pub use cfgsync_artifacts::{ArtifactEncoding, ArtifactFile, ArtifactSet};
