//! [`LeaseError`]: why taking, renewing or claiming a storage key failed.

/// Why the coordination of a storage key (its lock, lease or claim) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The object store holding leases and claims failed.
    #[error("object store {operation} of {url} failed: {source}")]
    ObjectStore {
        /// Operation (`get`, `create`, `update`).
        operation: &'static str,
        /// The lease or claim object.
        url: String,
        /// Underlying error (boxed: `object_store::Error` is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// A lease or claim object does not decode.
    #[error("{url} is not a lease or claim this version understands: {source}")]
    Decode {
        /// The object.
        url: String,
        /// Parser error.
        #[source]
        source: serde_json::Error,
    },
    /// A local lock file failed.
    #[error("lock file {path}: {source}")]
    Io {
        /// The lock file.
        path: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Other writers won the conditional write every time within the bound.
    #[error("{url}: other writers won every conditional write ({attempts} attempts)")]
    Contended {
        /// The object.
        url: String,
        /// Attempts made.
        attempts: usize,
    },
}

impl LeaseError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ObjectStore { source, .. } => !matches!(
                **source,
                object_store::Error::NotImplemented { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            Self::Decode { .. } => false,
            Self::Io { .. } | Self::Contended { .. } => true,
        }
    }
}
