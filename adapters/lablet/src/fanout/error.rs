//! Fan-out errors: one delivery failed ([`FanOutError`]), or the durable queue
//! did ([`QueueError`]).

use crate::http::TransportError;

/// Why one delivery to a fan-out target failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum FanOutError {
    /// The request got no (complete) answer: refused, timed out, reset, DNS,
    /// TLS — the message says which and names the setting to check.
    #[error(transparent)]
    Request(TransportError),
    /// The target answered with a non-success status.
    #[error("POST {url} answered {status}")]
    Status {
        /// URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
}

impl FanOutError {
    /// Whether another attempt may succeed.
    pub(crate) fn is_retryable(&self) -> bool {
        match self {
            Self::Request(transport) => transport.is_retryable(),
            Self::Status { status, .. } => crate::http::status_retryable(*status),
        }
    }
}

/// The durable retry queue (or the record outbox kept in the same file) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The queue database failed.
    #[error("retry queue {path}: {source}")]
    Db {
        /// Database file.
        path: String,
        /// Database error (boxed: `redb::Error` is large).
        #[source]
        source: Box<redb::Error>,
    },
    /// The object store keeping the queue (S3 stores) failed.
    #[error("retry queue: object store {operation} of {url} failed: {source}")]
    ObjectStore {
        /// Operation (`put`, `delete`, `list`, `get`).
        operation: &'static str,
        /// The queue object or folder.
        url: String,
        /// Underlying error (boxed: `object_store::Error` is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// A stored entry could not be decoded.
    #[error("retry queue entry {key}: {source}")]
    Decode {
        /// Entry key.
        key: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A blocking task failed to complete.
    #[error("retry queue task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
}
