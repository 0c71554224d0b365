//! The crate's [`Error`] and [`Result`], and their mapping onto
//! `cfgsync_core::Error`.

use cfgsync_core::BoxError;

/// Errors of `cfgsync-adapter`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A node's metadata is missing or not what the adapter needs (answered `400`).
    #[error("node {identifier:?}: invalid metadata: {reason}")]
    InvalidMetadata {
        /// The node.
        identifier: String,
        /// What is wrong.
        reason: String,
    },

    /// A materializer failed.
    #[error("materializing failed: {message}")]
    Materialize {
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },

    /// A registration store operation failed.
    #[error("registration store ({store}): {operation} failed: {message}")]
    Store {
        /// Which store, e.g. `durable /var/lib/cfgsync`.
        store: String,
        /// The operation, e.g. `put`, `open`, `refresh`.
        operation: &'static str,
        /// What failed.
        message: String,
        /// The cause.
        #[source]
        source: Option<BoxError>,
    },

    /// An error of the core crate (invalid input, bad files).
    #[error(transparent)]
    Core(#[from] cfgsync_core::Error),

    /// A set of files is not valid.
    #[error("{context}: {source}")]
    Artifacts {
        /// Where the files come from.
        context: String,
        /// The artifact error.
        #[source]
        source: cfgsync_artifacts::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A materializer failure with its cause.
    pub fn materialize(message: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Materialize {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    pub(crate) fn store(
        store: impl Into<String>,
        operation: &'static str,
        source: impl Into<BoxError>,
    ) -> Self {
        let source = source.into();
        Self::Store {
            store: store.into(),
            operation,
            message: source.to_string(),
            source: Some(source),
        }
    }

    /// Whether a later retry may succeed (a store that did not answer).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Store { .. })
    }
}

impl From<Error> for cfgsync_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Core(core) => core,
            Error::InvalidMetadata { .. } => cfgsync_core::Error::Invalid {
                field: "metadata",
                reason: error.to_string(),
            },
            Error::Artifacts { context, source } => {
                cfgsync_core::Error::Artifacts { context, source }
            }
            Error::Store { .. } => cfgsync_core::Error::Unavailable {
                message: error.to_string(),
                source: Some(Box::new(error)),
            },
            Error::Materialize { .. } => cfgsync_core::Error::Source {
                message: error.to_string(),
                source: Some(Box::new(error)),
            },
        }
    }
}
