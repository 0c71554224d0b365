//! [`CatalogError`]: why recording or reading a definition failed.

use crate::http::TransportError;

/// Why a catalog operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// A URL template could not be rendered.
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    /// The request got no (complete) answer: refused, timed out, reset, DNS,
    /// TLS — the message says which and names the setting to check.
    #[error(transparent)]
    Request(TransportError),
    /// CPA answered with a non-success status.
    #[error("{method} {url} answered {status}")]
    Status {
        /// Method.
        method: &'static str,
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// An answer or a stored value could not be decoded.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// What was decoded.
        what: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// The embedded database failed.
    #[error("embedded catalog {path}: {source}")]
    Db {
        /// Database file.
        path: String,
        /// Database error (boxed: `redb::Error` is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// The object store of the object catalog failed.
    #[error("object catalog: {operation} {key}: {source}")]
    ObjectStore {
        /// `get`, `put` or `list`.
        operation: &'static str,
        /// Object key (or prefix).
        key: String,
        /// Underlying error (boxed: `object_store::Error` is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// Other writers kept changing a definition while this one tried to write it.
    #[error("object catalog: {key} kept changing under {attempts} conditional writes; try again")]
    Contended {
        /// Object key.
        key: String,
        /// Conditional writes tried.
        attempts: usize,
    },
    /// A blocking task failed to complete.
    #[error("catalog task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}

impl CatalogError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Request(transport) => transport.is_retryable(),
            Self::Status { status, .. } => crate::http::status_retryable(*status),
            Self::Contended { .. } => true,
            Self::ObjectStore { source, .. } => !matches!(
                **source,
                object_store::Error::NotFound { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            _ => false,
        }
    }
}
