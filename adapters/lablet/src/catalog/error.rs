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
            _ => false,
        }
    }
}
