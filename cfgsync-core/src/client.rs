//! [`CfgsyncClient`]: the reqwest client of the wire contract, with typed
//! errors per status.

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::header::{ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, ETAG, IF_NONE_MATCH};
use reqwest::{Response, StatusCode};
use serde::Deserialize;

use crate::auth::Secret;
use crate::encoding::{self, Undecodable};
use crate::{
    ContentCoding, Error, NodeArtifactsPayload, NodeFilesReplacement, NodeRegistration, Result,
    validate_identifier,
};

/// Default time one request may take (connect included), long-poll wait excluded.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default largest `/node` payload the client reads: 64 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
/// `Accept-Encoding` of `/node` requests: both codings at the same weight, so
/// the server picks (ours: gzip, the smaller on the wire; see
/// [`ContentCoding::negotiate`]).
const NODE_ACCEPT_ENCODING: &str = "gzip, zstd";
/// Largest part of an error answer's body the client reads.
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// A client of the cfgsync HTTP contract.
///
/// Every answer maps to a typed [`Error`]: `425` → [`Error::NotReady`], `404
/// missing_config` → [`Error::MissingConfig`], `401`/`403` →
/// [`Error::Unauthorized`]/[`Error::Forbidden`], anything else →
/// [`Error::Rejected`] with the server's code and message, no answer →
/// [`Error::Transport`] (with its [`TransportFailure`](crate::TransportFailure)),
/// a payload over the limit → [`Error::PayloadTooLarge`] (the body is read as
/// it streams and never held beyond the limit). An identifier the server
/// would refuse is refused before any request ([`Error::Invalid`]).
///
/// `POST /node` asks for `Accept-Encoding: gzip, zstd` and decodes a gzip or
/// zstd answer; a server that does not compress (the original) answers
/// identity bytes, read as before. Either way the payload is capped at
/// [`max_payload_bytes`](CfgsyncClientBuilder::max_payload_bytes) as sent and
/// again while decoding (a small compressed body can decode to gigabytes:
/// decoding stops one byte past the limit).
#[derive(Clone)]
pub struct CfgsyncClient {
    base: String,
    http: reqwest::Client,
    token: Option<Secret>,
    timeout: Duration,
    max_payload_bytes: u64,
    address_setting: Option<&'static str>,
}

/// Builds a [`CfgsyncClient`].
#[derive(Clone)]
pub struct CfgsyncClientBuilder {
    base: String,
    timeout: Duration,
    token: Option<Secret>,
    max_payload_bytes: u64,
    address_setting: Option<&'static str>,
}

/// Options of [`CfgsyncClient::fetch_node_config_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// ETag of the payload the node holds: the server answers `304` while unchanged.
    pub if_none_match: Option<String>,
    /// Long-poll: let the server hold the request until the payload is ready or
    /// changes, up to this long (the server caps it).
    pub wait: Option<Duration>,
}

/// What a conditional fetch got.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FetchOutcome {
    /// A payload (new or changed), with its ETag when the server sent one (the
    /// original server does not).
    Updated {
        /// The payload.
        payload: NodeArtifactsPayload,
        /// Its ETag.
        etag: Option<String>,
    },
    /// `304`: the payload still matches `if_none_match`.
    NotModified,
}

impl CfgsyncClientBuilder {
    /// Time one request may take, connect included (default 10 s). A long-poll
    /// request gets its wait on top.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `Authorization: Bearer <token>` on every request.
    #[must_use]
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Secret::new(token));
        self
    }

    /// Largest `/node` payload read (default [`DEFAULT_MAX_PAYLOAD_BYTES`]);
    /// a larger answer is [`Error::PayloadTooLarge`].
    #[must_use]
    pub fn max_payload_bytes(mut self, limit: u64) -> Self {
        self.max_payload_bytes = limit;
        self
    }

    /// Names the setting that holds the server address (e.g.
    /// `CFG_SERVER_ADDR`) in transport errors where the address is a likely
    /// cause: `connection refused to http://… (check CFG_SERVER_ADDR)`.
    #[must_use]
    pub fn address_setting(mut self, setting: &'static str) -> Self {
        self.address_setting = Some(setting);
        self
    }

    /// The client.
    pub fn build(self) -> Result<CfgsyncClient> {
        let http = crate::tls::http_client_builder()
            .connect_timeout(self.timeout)
            .build()
            .map_err(|source| Error::Transport {
                route: "client setup",
                url: self.base.clone(),
                failure: crate::TransportFailure::of(&source),
                setting: None,
                source,
            })?;
        Ok(CfgsyncClient {
            base: self.base,
            http,
            token: self.token,
            timeout: self.timeout,
            max_payload_bytes: self.max_payload_bytes,
            address_setting: self.address_setting,
        })
    }
}

impl CfgsyncClient {
    /// A client of the server at `base_url` (e.g. `http://127.0.0.1:4400`) with
    /// default settings.
    pub fn new(base_url: impl Into<String>) -> Result<Self> {
        Self::builder(base_url).build()
    }

    /// A builder for a client of the server at `base_url`.
    pub fn builder(base_url: impl Into<String>) -> CfgsyncClientBuilder {
        CfgsyncClientBuilder {
            base: base_url.into().trim_end_matches('/').to_owned(),
            timeout: DEFAULT_REQUEST_TIMEOUT,
            token: None,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            address_setting: None,
        }
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `POST /register`.
    pub async fn register_node(&self, registration: &NodeRegistration) -> Result<()> {
        const ROUTE: &str = "/register";
        validate_identifier(&registration.identifier)?;
        let response = self.post(ROUTE, registration, self.timeout, None).await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(answer_error(ROUTE, &registration.identifier, response).await)
    }

    /// `POST /node`: the node's payload, or the typed error of the answer.
    pub async fn fetch_node_config(
        &self,
        registration: &NodeRegistration,
    ) -> Result<NodeArtifactsPayload> {
        match self
            .fetch_node_config_with(registration, &FetchOptions::default())
            .await?
        {
            FetchOutcome::Updated { payload, .. } => Ok(payload),
            FetchOutcome::NotModified => Err(Error::InvalidResponse {
                route: "/node",
                reason: "304 Not Modified to a request without If-None-Match".into(),
            }),
        }
    }

    /// `POST /node` with an ETag and/or a long-poll wait.
    pub async fn fetch_node_config_with(
        &self,
        registration: &NodeRegistration,
        options: &FetchOptions,
    ) -> Result<FetchOutcome> {
        let route = "/node";
        validate_identifier(&registration.identifier)?;
        let (path, timeout) = match options.wait {
            Some(wait) => (
                format!("/node?wait={}", wait.as_secs().max(1)),
                self.timeout + wait,
            ),
            None => ("/node".to_owned(), self.timeout),
        };
        let response = self
            .post(
                &path,
                registration,
                timeout,
                options.if_none_match.as_deref(),
            )
            .await
            .map_err(|e| with_route(e, route))?;
        match response.status() {
            StatusCode::NOT_MODIFIED => Ok(FetchOutcome::NotModified),
            status if status.is_success() => {
                let etag = response
                    .headers()
                    .get(ETAG)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let url = self.url(&path);
                let encoding = response.headers().get(CONTENT_ENCODING).map(|v| {
                    String::from_utf8_lossy(v.as_bytes())
                        .trim()
                        .to_ascii_lowercase()
                });
                let bytes = match read_capped(response, self.max_payload_bytes).await {
                    Ok(Capped::Whole(bytes)) => decode_payload(
                        route,
                        &url,
                        encoding.as_deref(),
                        bytes,
                        self.max_payload_bytes,
                    )?,
                    Ok(Capped::Cut(_)) => {
                        return Err(Error::PayloadTooLarge {
                            route,
                            url,
                            limit: self.max_payload_bytes,
                        });
                    }
                    Err(source) => return Err(self.transport(route, url, source)),
                };
                let payload =
                    serde_json::from_slice(&bytes).map_err(|e| Error::InvalidResponse {
                        route,
                        reason: format!("payload is not valid: {e}"),
                    })?;
                Ok(FetchOutcome::Updated { payload, etag })
            }
            _ => Err(answer_error(route, &registration.identifier, response).await),
        }
    }

    /// `POST /node/replace` (admin): replaces what one node is served.
    pub async fn replace_node_files(&self, replacement: &NodeFilesReplacement) -> Result<()> {
        const ROUTE: &str = "/node/replace";
        validate_identifier(&replacement.identifier)?;
        let response = self.post(ROUTE, replacement, self.timeout, None).await?;
        if response.status().is_success() {
            return Ok(());
        }
        Err(answer_error(ROUTE, &replacement.identifier, response).await)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn post<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        timeout: Duration,
        if_none_match: Option<&str>,
    ) -> Result<Response> {
        let url = self.url(path);
        let mut request = self.http.post(&url).json(body).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header(AUTHORIZATION, format!("Bearer {}", token.expose()));
        }
        if let Some(tag) = if_none_match {
            request = request.header(IF_NONE_MATCH, tag);
        }
        if route_of(path) == "/node" {
            // Payloads compress well (a peer list to a fifth or less); the
            // server sends identity bytes to clients that do not ask.
            request = request.header(ACCEPT_ENCODING, NODE_ACCEPT_ENCODING);
        }
        request
            .send()
            .await
            .map_err(|source| self.transport(route_of(path), url, source))
    }

    fn transport(&self, route: &'static str, url: String, source: reqwest::Error) -> Error {
        Error::Transport {
            route,
            url,
            failure: crate::TransportFailure::of(&source),
            setting: self.address_setting,
            source,
        }
    }
}

/// A body read up to a limit: all of it, or the first `limit` bytes of a
/// longer one (the rest is not read).
enum Capped {
    Whole(Bytes),
    Cut(Bytes),
}

/// Reads `response`'s body as it streams, never holding more than `limit`
/// bytes: a `Content-Length` over the limit is refused before reading.
async fn read_capped(mut response: Response, limit: u64) -> reqwest::Result<Capped> {
    if response.content_length().is_some_and(|len| len > limit) {
        return Ok(Capped::Cut(Bytes::new()));
    }
    let expected = response.content_length().unwrap_or(0).min(limit);
    let mut body = BytesMut::with_capacity(usize::try_from(expected).unwrap_or(0));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok(Capped::Cut(body.freeze()));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Capped::Whole(body.freeze()))
}

/// A `/node` body decoded from its `Content-Encoding`, at most `limit` bytes
/// decoded.
fn decode_payload(
    route: &'static str,
    url: &str,
    encoding: Option<&str>,
    raw: Bytes,
    limit: u64,
) -> Result<Bytes> {
    let Some(coding) = ContentCoding::from_content_encoding(encoding) else {
        return Err(Error::InvalidResponse {
            route,
            reason: format!(
                "unsupported Content-Encoding {:?} (asked for {NODE_ACCEPT_ENCODING})",
                encoding.unwrap_or_default()
            ),
        });
    };
    encoding::decode(coding, raw, limit).map_err(|error| match error {
        Undecodable::TooLarge => Error::PayloadTooLarge {
            route,
            url: url.to_owned(),
            limit,
        },
        Undecodable::Corrupt(e) => Error::InvalidResponse {
            route,
            reason: format!(
                "{} body does not decode: {e}",
                coding.header_value().unwrap_or("identity")
            ),
        },
    })
}

fn route_of(path: &str) -> &'static str {
    match path.split('?').next().unwrap_or(path) {
        "/register" => "/register",
        "/node/replace" => "/node/replace",
        _ => "/node",
    }
}

fn with_route(error: Error, route: &'static str) -> Error {
    match error {
        Error::Transport {
            url,
            failure,
            setting,
            source,
            ..
        } => Error::Transport {
            route,
            url,
            failure,
            setting,
            source,
        },
        other => other,
    }
}

#[derive(Deserialize)]
struct RawErrorBody {
    code: String,
    message: String,
}

/// Longest part of a non-JSON error body kept in [`Error::Rejected`].
const MAX_FOREIGN_BODY: usize = 512;

async fn answer_error(route: &'static str, identifier: &str, response: Response) -> Error {
    let status = response.status();
    // An error body is a short message: a longer one is cut, not read whole.
    let body = match read_capped(response, MAX_ERROR_BODY).await {
        Ok(Capped::Whole(body) | Capped::Cut(body)) => body,
        Err(_) => Bytes::new(),
    };
    let (code, message) = match serde_json::from_slice::<RawErrorBody>(&body) {
        Ok(parsed) => (parsed.code, parsed.message),
        // The original server answers its input errors as text/plain.
        Err(_) => {
            let text = String::from_utf8_lossy(&body);
            let cut = text
                .char_indices()
                .nth(MAX_FOREIGN_BODY)
                .map_or(text.len(), |(i, _)| i);
            (String::new(), text[..cut].trim().to_owned())
        }
    };
    match (status.as_u16(), code.as_str()) {
        (425, _) => Error::NotReady {
            identifier: identifier.to_owned(),
        },
        (404, "missing_config") => Error::MissingConfig {
            identifier: identifier.to_owned(),
        },
        (404, "") if route == "/node" => Error::MissingConfig {
            identifier: identifier.to_owned(),
        },
        (401, _) => Error::Unauthorized { route, message },
        (403, _) => Error::Forbidden { route, message },
        (status, _) => Error::Rejected {
            route,
            status,
            code,
            message,
        },
    }
}

impl fmt::Debug for CfgsyncClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfgsyncClient")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("token", &self.token)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CfgsyncClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfgsyncClientBuilder")
            .field("base", &self.base)
            .field("timeout", &self.timeout)
            .field("token", &self.token)
            .field("max_payload_bytes", &self.max_payload_bytes)
            .field("address_setting", &self.address_setting)
            .finish()
    }
}
