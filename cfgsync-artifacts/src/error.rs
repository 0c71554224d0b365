//! The crate's [`Error`] and [`Result`].

/// Errors of `cfgsync-artifacts`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two files in one set claim the same path.
    #[error("duplicate artifact path {path:?}: each path may appear once per set")]
    DuplicatePath {
        /// The path that appears more than once.
        path: String,
    },
    /// A file marked `base64` does not hold valid base64.
    #[error("artifact {path:?} is marked base64 but its content does not decode")]
    InvalidBase64 {
        /// The file's path.
        path: String,
        /// The decoder's complaint.
        #[source]
        source: base64::DecodeError,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
