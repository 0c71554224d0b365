//! The `/node` payload: [`NodeArtifactsPayload`] on the wire and
//! [`ServedPayload`], encoded once with its ETag.

use std::fmt;

use bytes::Bytes;
use cfgsync_artifacts::{ArtifactDigest, ArtifactFile, ArtifactSet};
use http::StatusCode;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

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

/// A payload ready to serve: the JSON body is encoded and its ETag computed once,
/// when the source builds it, so answering `/node` costs no serialization. Only
/// the encoded body is kept; [`payload`](Self::payload) decodes it on demand.
#[derive(Clone, PartialEq, Eq)]
pub struct ServedPayload {
    etag: String,
    body: Bytes,
    files: usize,
}

/// Files shared by many payloads, encoded once: each file's JSON and digest.
/// [`ServedPayload::merged`] splices them after a node's own files, so building
/// N payloads that share a large file (a peer list) costs one encoding of it,
/// not N.
#[derive(Debug, Clone, Default)]
pub struct SharedFiles {
    files: ArtifactSet,
    encoded: Vec<EncodedFile>,
    /// Every encoded file, comma-separated: spliced whole when a node overrides
    /// none of the shared paths.
    joined: Vec<u8>,
}

#[derive(Debug, Clone)]
struct EncodedFile {
    json: Vec<u8>,
    digest: ArtifactDigest,
}

fn encode_file(file: &ArtifactFile) -> Result<EncodedFile> {
    let json = serde_json::to_vec(file).map_err(|e| Error::Source {
        message: format!("cannot encode file {:?} as JSON", file.path),
        source: Some(Box::new(e)),
    })?;
    Ok(EncodedFile {
        json,
        digest: file.digest(),
    })
}

impl SharedFiles {
    /// Encodes `files` once.
    pub fn new(files: ArtifactSet) -> Result<Self> {
        let encoded = files.iter().map(encode_file).collect::<Result<Vec<_>>>()?;
        let mut joined = Vec::with_capacity(encoded.iter().map(|e| e.json.len() + 1).sum());
        for (i, file) in encoded.iter().enumerate() {
            if i > 0 {
                joined.push(b',');
            }
            joined.extend_from_slice(&file.json);
        }
        Ok(Self {
            files,
            encoded,
            joined,
        })
    }

    /// The shared files.
    pub fn files(&self) -> &ArtifactSet {
        &self.files
    }
}

const BODY_PREFIX: &[u8] = br#"{"schema_version":1,"files":["#;
const BODY_SUFFIX: &[u8] = b"]}";

impl ServedPayload {
    /// Encodes `files` as a schema-1 payload and computes its ETag (the quoted
    /// SHA-256 digest of the set).
    pub fn new(files: ArtifactSet) -> Result<Self> {
        Self::merged(&files, &SharedFiles::default())
    }

    /// The payload of `own` files merged with `shared` ones (a node's own file
    /// wins a path clash), byte for byte what encoding
    /// `own.merged_with_shared(shared.files())` gives, with the same ETag — but
    /// the shared files are not encoded or hashed again.
    pub fn merged(own: &ArtifactSet, shared: &SharedFiles) -> Result<Self> {
        let own_encoded = own.iter().map(encode_file).collect::<Result<Vec<_>>>()?;
        let kept: Vec<&EncodedFile> = shared
            .files
            .iter()
            .zip(&shared.encoded)
            .filter(|(file, _)| !own.contains(&file.path))
            .map(|(_, encoded)| encoded)
            .collect();
        let digest = ArtifactDigest::of_files(
            own_encoded
                .iter()
                .map(|e| e.digest)
                .chain(kept.iter().map(|e| e.digest)),
        );
        let mut body = Vec::with_capacity(
            BODY_PREFIX.len()
                + BODY_SUFFIX.len()
                + own_encoded.iter().map(|e| e.json.len() + 1).sum::<usize>()
                + shared.joined.len()
                + 1,
        );
        body.extend_from_slice(BODY_PREFIX);
        let mut first = true;
        let mut push = |json: &[u8], body: &mut Vec<u8>| {
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(json);
        };
        for file in &own_encoded {
            push(&file.json, &mut body);
        }
        if kept.len() == shared.encoded.len() {
            if !shared.joined.is_empty() {
                push(&shared.joined, &mut body);
            }
        } else {
            for file in &kept {
                push(&file.json, &mut body);
            }
        }
        body.extend_from_slice(BODY_SUFFIX);
        Ok(Self {
            etag: format!("\"{digest}\""),
            body: Bytes::from(body),
            files: own_encoded.len() + kept.len(),
        })
    }

    /// The payload, decoded from the body.
    pub fn payload(&self) -> Result<NodeArtifactsPayload> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Source {
            message: "cannot decode a payload this crate encoded".into(),
            source: Some(Box::new(e)),
        })
    }

    /// Number of files.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// The strong ETag, quoted as sent in the `ETag` header.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// The encoded JSON body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Whether an `If-None-Match` header value matches this payload's ETag
    /// (`*`, a list, weak `W/` tags all handled).
    pub fn matches_if_none_match(&self, header: &str) -> bool {
        header
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == self.etag)
    }
}

impl fmt::Debug for ServedPayload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServedPayload")
            .field("etag", &self.etag)
            .field("files", &self.files)
            .field("bytes", &self.body.len())
            .finish()
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
    use cfgsync_artifacts::ArtifactFile;

    use super::*;

    #[test]
    fn served_payload_body_is_the_original_wire_form() {
        let served = ServedPayload::new(
            ArtifactSet::from_files([ArtifactFile::new("/config.yaml", "id: 1\n")]).unwrap(),
        )
        .unwrap();
        assert_eq!(
            served.body().as_ref(),
            br#"{"schema_version":1,"files":[{"path":"/config.yaml","content":"id: 1\n"}]}"#
        );
        let etag = served.etag().to_owned();
        assert!(served.matches_if_none_match(&etag));
        assert!(served.matches_if_none_match(&format!("\"other\", W/{etag}")));
        assert!(served.matches_if_none_match("*"));
        assert!(!served.matches_if_none_match("\"other\""));
    }

    #[test]
    fn merged_payload_is_byte_for_byte_the_full_encoding() {
        let own = ArtifactSet::from_files([
            ArtifactFile::new("/config.yaml", "id: 1\n"),
            ArtifactFile::new("/b", "own b").with_mode(0o600),
        ])
        .unwrap();
        let shared_set = ArtifactSet::from_files([
            ArtifactFile::new("/peers.yaml", "peers: [a, b]\n"),
            ArtifactFile::binary("/key", b"\x00\x01"),
        ])
        .unwrap();
        let shared = SharedFiles::new(shared_set.clone()).unwrap();
        for own in [own.clone(), ArtifactSet::new()] {
            let full = ServedPayload::new(own.clone().merged_with_shared(&shared_set)).unwrap();
            let merged = ServedPayload::merged(&own, &shared).unwrap();
            assert_eq!(merged, full);
            let expected = serde_json::to_vec(&NodeArtifactsPayload::new(
                own.clone().merged_with_shared(&shared_set),
            ))
            .unwrap();
            assert_eq!(merged.body().as_ref(), expected.as_slice());
            assert_eq!(
                merged.payload().unwrap().files,
                own.merged_with_shared(&shared_set)
            );
        }
        // A node overriding a shared path: the node's file wins, same bytes again.
        let overriding =
            ArtifactSet::from_files([ArtifactFile::new("/peers.yaml", "mine")]).unwrap();
        let merged = ServedPayload::merged(&overriding, &shared).unwrap();
        assert_eq!(
            merged,
            ServedPayload::new(overriding.merged_with_shared(&shared_set)).unwrap()
        );
        assert_eq!(merged.file_count(), 2);
        // Empty everything.
        assert_eq!(
            ServedPayload::new(ArtifactSet::new())
                .unwrap()
                .body()
                .as_ref(),
            br#"{"schema_version":1,"files":[]}"#
        );
    }

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
