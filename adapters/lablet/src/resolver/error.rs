//! [`ResolveError`]: why resolving a lablet failed (stage `resolve`).

use crate::template::TemplateError;

/// Why resolving a lablet failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolve URL template could not be rendered.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The request did not complete.
    #[error("GET {url} failed: {source}")]
    Request {
        /// Requested URL.
        url: String,
        /// Transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The resolver answered with a non-success status.
    #[error("GET {url} answered {status}")]
    Status {
        /// Requested URL.
        url: String,
        /// HTTP status.
        status: u16,
    },
    /// The answer was not a JSON object of strings.
    #[error("GET {url} answered a body that is not a JSON object of variables: {reason}")]
    Body {
        /// Requested URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A required variable is missing from the answer.
    #[error("the resolver's answer has no {var}")]
    MissingVar {
        /// Variable name.
        var: &'static str,
    },
}

impl ResolveError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Request { source, .. } => crate::http::transport_retryable(source),
            Self::Status { status, .. } => crate::http::status_retryable(*status),
            _ => false,
        }
    }
}
