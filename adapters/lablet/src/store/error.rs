//! [`StoreError`]: why storing a package failed (stage `store`).

/// Why storing a package failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store URL or location template cannot be used.
    #[error("invalid store configuration: {0}")]
    Config(String),
    /// A lablet name gives an invalid S3 bucket name.
    #[error("{bucket:?} is not a valid S3 bucket name: {reason}")]
    InvalidBucket {
        /// The rendered bucket.
        bucket: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The object store failed.
    #[error("object store {operation} of {location} failed: {source}")]
    ObjectStore {
        /// Operation (`head`, `upload`, ...).
        operation: &'static str,
        /// Location URL.
        location: String,
        /// Underlying error (boxed: `object_store::Error` is large).
        #[source]
        source: Box<object_store::Error>,
    },
    /// Local I/O (reading the temp file, the sidecar).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Creating a bucket failed.
    #[error("CreateBucket {bucket} failed: {reason}")]
    CreateBucket {
        /// Bucket name.
        bucket: String,
        /// Status or transport error.
        reason: String,
        /// Whether another attempt may succeed.
        retryable: bool,
    },
}

impl StoreError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::ObjectStore { source, .. } => matches!(
                **source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            Self::CreateBucket { retryable, .. } => *retryable,
            _ => false,
        }
    }
}
