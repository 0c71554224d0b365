/// Errors of `cfgsync-runtime`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server config file is not valid.
    #[error("config {path}: {message}")]
    Config {
        /// The config file.
        path: std::path::PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },

    /// The registration store URL cannot be opened.
    #[error("registration store {url}: {message}")]
    RegistrationStore {
        /// The store URL.
        url: String,
        /// What failed.
        message: String,
    },

    /// An error of the core crate (bundle files, serving, client answers).
    #[error(transparent)]
    Core(#[from] cfgsync_core::Error),

    /// An error of the adapter crate (registration stores, materializers).
    #[error(transparent)]
    Adapter(#[from] cfgsync_adapter::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
