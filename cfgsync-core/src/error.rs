//! The crate's [`Error`] (each variant maps to one JSON error answer) and
//! [`Result`].

use std::net::SocketAddr;
use std::path::PathBuf;

use http::StatusCode;

use crate::ErrorCode;

/// A boxed error from code outside this crate (a config source's backing store,
/// an adapter's I/O), kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of `cfgsync-core`: invalid input, answers of a cfgsync server as seen by
/// the client, and failures of config sources and of serving.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A registration or request field is invalid (server answers 400).
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field, e.g. `identifier`, `ip`, `metadata`, `files`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Registration metadata could not be encoded, or not decoded into the asked type.
    #[error("registration metadata of node {identifier:?} {action}")]
    Metadata {
        /// The node.
        identifier: String,
        /// `"cannot be encoded as JSON"` or `"does not match the expected type"`.
        action: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },

    /// The server answered `425 not_ready`: the node's config is not ready yet.
    #[error("config of node {identifier:?} is not ready yet (425 not_ready)")]
    NotReady {
        /// The node asked about.
        identifier: String,
    },

    /// The server answered `404 missing_config`: there is no config for this node.
    #[error("server has no config for node {identifier:?} (404 missing_config)")]
    MissingConfig {
        /// The node asked about.
        identifier: String,
    },

    /// The server answered `401 unauthorized`: token missing or not valid.
    #[error("{route}: unauthorized (401): {message}")]
    Unauthorized {
        /// The route called.
        route: &'static str,
        /// The server's message.
        message: String,
    },

    /// The server answered `403 forbidden`: the token is valid but not for this.
    #[error("{route}: forbidden (403): {message}")]
    Forbidden {
        /// The route called.
        route: &'static str,
        /// The server's message.
        message: String,
    },

    /// Any other non-success answer, with the server's code and message.
    #[error("{route}: server rejected the request ({status} {code}): {message}")]
    Rejected {
        /// The route called.
        route: &'static str,
        /// HTTP status.
        status: u16,
        /// The error body's `code` (empty when the body was not our JSON error).
        code: String,
        /// The error body's `message`, or the start of a non-JSON body.
        message: String,
    },

    /// The request did not complete: connection refused, timeout, reset, DNS,
    /// TLS — `failure` says which, and the message names the setting that holds
    /// the address when that is a likely cause.
    #[error(
        "{route}: {}: {}",
        crate::transport::describe_transport_failure(*.failure, .url, *.setting),
        crate::transport::error_chain(.source)
    )]
    Transport {
        /// The route called.
        route: &'static str,
        /// The full URL.
        url: String,
        /// What kind of failure it is.
        failure: crate::TransportFailure,
        /// The setting that holds the server address (e.g. `CFG_SERVER_ADDR`), if known.
        setting: Option<&'static str>,
        /// The HTTP client's error.
        #[source]
        source: reqwest::Error,
    },

    /// The server's answer is larger than the client's limit; reading stopped
    /// at the limit.
    #[error(
        "{route}: the answer of {url} is larger than the client's limit of {limit} bytes \
         (raise the maximum payload size if the payload is genuine)"
    )]
    PayloadTooLarge {
        /// The route called.
        route: &'static str,
        /// The full URL.
        url: String,
        /// The limit, in bytes.
        limit: u64,
    },

    /// The server answered success but its body is not a valid payload.
    #[error("{route}: server sent an invalid response: {reason}")]
    InvalidResponse {
        /// The route called.
        route: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A bundle or artifacts file could not be read.
    #[error("cannot read {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// A bundle or artifacts file does not have the expected shape.
    #[error("{path} is not a valid {what}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// What the file should be, e.g. `cfgsync bundle`.
        what: &'static str,
        /// The parser's message, with line and column.
        message: String,
    },

    /// A set of files is not valid (duplicate path, bad base64).
    #[error("{context}: {source}")]
    Artifacts {
        /// Where the files come from, e.g. `node "node-1" in bundle.yaml`.
        context: String,
        /// The artifact error.
        #[source]
        source: cfgsync_artifacts::Error,
    },

    /// The config source does not support this operation (e.g. `/node/replace`).
    #[error("this config source does not support {operation}")]
    Unsupported {
        /// The operation.
        operation: &'static str,
    },

    /// The config source cannot serve right now (its backing store does not answer).
    #[error("config source unavailable: {message}")]
    Unavailable {
        /// What is unavailable.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A config source failed while registering or resolving.
    #[error("config source failed: {message}")]
    Source {
        /// What failed.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The server could not bind its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The server stopped with an I/O error.
    #[error("server failed: {source}")]
    Serve {
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A config source failure with its cause, for [`ConfigSource`](crate::ConfigSource)
    /// implementations outside this crate.
    pub fn source_failure(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Source {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether retrying the same call later may succeed: not ready yet, a transport
    /// failure, a 5xx or 429 answer, an unavailable source.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::NotReady { .. } | Self::Transport { .. } | Self::Unavailable { .. } => true,
            Self::Rejected { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status and error code the server answers when a handler meets this
    /// error.
    pub fn status_and_code(&self) -> (StatusCode, ErrorCode) {
        match self {
            Self::Invalid { .. } | Self::Metadata { .. } | Self::Artifacts { .. } => {
                (StatusCode::BAD_REQUEST, ErrorCode::BadRequest)
            }
            Self::NotReady { .. } => (StatusCode::TOO_EARLY, ErrorCode::NotReady),
            Self::MissingConfig { .. } => (StatusCode::NOT_FOUND, ErrorCode::MissingConfig),
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            Self::Forbidden { .. } => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            Self::Unsupported { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, ErrorCode::MethodNotAllowed)
            }
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        }
    }
}
