//! [`DownloadError`]: why downloading a package failed (stage `download`).

use crate::http::TransportError;
use crate::template::TemplateError;

/// Why downloading a package failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// The download URL template could not be rendered.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The request or the body stream failed: refused, timed out, reset, DNS,
    /// TLS — the message says which and names the setting to check.
    #[error(transparent)]
    Request(TransportError),
    /// Mosaic answered with a non-success status.
    #[error("GET {url} answered {status}")]
    Status {
        /// Requested URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The package is larger than the configured cap.
    #[error("GET {url}: package is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Requested URL.
        url: String,
        /// The cap.
        limit: u64,
    },
    /// Downloaded a second time (to inspect it whole, see `mosaic::kept`),
    /// the package had other bytes than the first time.
    #[error("GET {url}: the package changed while it was synced (SHA-256 {first}, then {second})")]
    Changed {
        /// Requested URL.
        url: String,
        /// SHA-256 of the first download (the one uploaded).
        first: String,
        /// SHA-256 of the second.
        second: String,
    },
    /// The temp file could not be written.
    #[error("cannot write the temp file in {dir}: {source}")]
    TempFile {
        /// Work directory.
        dir: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl DownloadError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Request(transport) => transport.is_retryable(),
            Self::Status { status, .. } => crate::http::status_retryable(*status),
            _ => false,
        }
    }
}
