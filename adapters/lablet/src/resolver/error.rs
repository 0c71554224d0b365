//! [`ResolveError`]: why resolving a lablet failed (stage `resolve`).

use crate::http::TransportError;
use crate::template::TemplateError;

/// Why resolving a lablet failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The resolve URL template could not be rendered.
    #[error(transparent)]
    Template(#[from] TemplateError),
    /// The request got no (complete) answer: refused, timed out, reset, DNS,
    /// TLS — the message says which and names the setting to check.
    #[error(transparent)]
    Request(TransportError),
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
            Self::Request(transport) => transport.is_retryable(),
            Self::Status { status, .. } => crate::http::status_retryable(*status),
            _ => false,
        }
    }
}
