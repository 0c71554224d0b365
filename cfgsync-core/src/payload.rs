//! The `/node` payload: [`NodeArtifactsPayload`] on the wire and
//! [`ServedPayload`], encoded once with its ETag.

use std::fmt;

use cfgsync_artifacts::ArtifactSet;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The payload schema this crate speaks.
pub const SCHEMA_VERSION: u32 = 1;

fn schema_version_default() -> u32 {
    SCHEMA_VERSION
}

/// The answer of `POST /node`: `{"schema_version": 1, "files": [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeArtifactsPayload {
    /// Payload schema version, `1`.
    #[serde(default = "schema_version_default")]
    pub schema_version: u32,
    /// The node's files (its own plus shared ones).
    pub files: ArtifactSet,
}

impl NodeArtifactsPayload {
    /// A schema-1 payload.
    pub fn new(files: ArtifactSet) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            files,
        }
    }
}

/// Body of `POST /node/replace`: replaces what one node is served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFilesReplacement {
    /// The node.
    pub identifier: String,
    /// Its new files (shared files are still merged in by the source).
    pub files: ArtifactSet,
}

/// The `code` of every error body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// 425: the node's config is not ready (not registered, or policy not met).
    NotReady,
    /// 404 on `/node`: no config exists for this node.
    MissingConfig,
    /// 500: the server failed.
    Internal,
    /// 400: malformed or invalid request.
    BadRequest,
    /// 401: token missing or not valid.
    Unauthorized,
    /// 403: token valid, but not for this node or route.
    Forbidden,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 415: body is not `application/json`.
    UnsupportedMediaType,
    /// 404: no such route.
    NotFound,
    /// 405: the route exists but not with this method (or the source does not
    /// support the operation).
    MethodNotAllowed,
    /// 503: the config source's backing store does not answer (`/readyz`), or
    /// the server is at its connection cap.
    Unavailable,
    /// 414: the request URI is too long (answered by the HTTP layer).
    UriTooLong,
    /// 431: the request head is too large (answered by the HTTP layer).
    RequestHeaderFieldsTooLarge,
}

impl ErrorCode {
    /// The wire form, e.g. `not_ready`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotReady => "not_ready",
            Self::MissingConfig => "missing_config",
            Self::Internal => "internal",
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Unavailable => "unavailable",
            Self::UriTooLong => "uri_too_long",
            Self::RequestHeaderFieldsTooLarge => "request_header_fields_too_large",
        }
    }

    /// The status this code is answered with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::NotReady => StatusCode::TOO_EARLY,
            Self::MissingConfig | Self::NotFound => StatusCode::NOT_FOUND,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UriTooLong => StatusCode::URI_TOO_LONG,
            Self::RequestHeaderFieldsTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The JSON body of every non-2xx answer: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation naming what was wrong.
    pub message: String,
}

impl ErrorBody {
    /// An error body.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_documented_status() {
        let json = serde_json::to_string(&ErrorBody::new(ErrorCode::NotReady, "x")).unwrap();
        assert_eq!(json, r#"{"code":"not_ready","message":"x"}"#);
        for (code, status) in [
            (ErrorCode::NotReady, 425),
            (ErrorCode::MissingConfig, 404),
            (ErrorCode::BadRequest, 400),
            (ErrorCode::PayloadTooLarge, 413),
            (ErrorCode::UnsupportedMediaType, 415),
        ] {
            assert_eq!(code.status().as_u16(), status);
            assert_eq!(
                serde_json::to_value(code).unwrap().as_str().unwrap(),
                code.as_str()
            );
        }
    }
}
