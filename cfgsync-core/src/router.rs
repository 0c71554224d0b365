//! The HTTP contract: routes, their answers, and the JSON error body.

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;

use crate::auth::{Access, BearerToken, MISSING_TOKEN};
use crate::served::ChunkedBody;
use crate::server::CfgsyncServerState;
use crate::{
    ConfigResolveResponse, ContentCoding, Error, ErrorBody, ErrorCode, NodeFilesReplacement,
    NodeRegistration,
};

/// An error answer: status from the code, JSON body `{"code","message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (_, code) = error.status_and_code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %error, "request failed");
            return Self::new(
                code,
                "internal server error; the server log has the details",
            );
        }
        Self::new(code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_error(self.code, self.message)
    }
}

fn json_error(code: ErrorCode, message: String) -> Response {
    let body = serde_json::to_vec(&ErrorBody::new(code, message))
        .unwrap_or_else(|_| br#"{"code":"internal","message":"cannot encode error"}"#.to_vec());
    (
        code.status(),
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// A JSON request body, with every way it can be wrong answered as our JSON error:
/// 415 for another content type, 413 over the limit, 400 for malformed JSON or a
/// missing or invalid field.
struct JsonBody<T>(T);

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

impl<T: DeserializeOwned> FromRequest<CfgsyncServerState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &CfgsyncServerState) -> Result<Self, ApiError> {
        let json = is_json_content_type(req.headers());
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        // The body is read (up to the limit) before any verdict, so an error
        // answer leaves the connection clean for the client's next request.
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!(
                        "request body is larger than the limit of {} bytes",
                        state.limits().max_body_bytes
                    ),
                )
            } else {
                ApiError::new(
                    ErrorCode::BadRequest,
                    format!("cannot read request body: {rejection}"),
                )
            }
        })?;
        if !json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                match content_type {
                    Some(got) => format!("expected Content-Type: application/json, got {got:?}"),
                    None => "expected Content-Type: application/json, got none".into(),
                },
            ));
        }
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
    }
}

/// Checks the token before the body is read: with auth on, a request without a
/// usable bearer token is refused at once, saying what is wrong with it.
fn require_token(
    state: &CfgsyncServerState,
    headers: &HeaderMap,
    route: &'static str,
) -> Result<(), ApiError> {
    if !state.inner.auth.is_enabled() {
        return Ok(());
    }
    let message = match BearerToken::from_headers(headers) {
        BearerToken::Token(_) => return Ok(()),
        BearerToken::Missing => MISSING_TOKEN.to_owned(),
        BearerToken::Malformed(why) => {
            format!("{why} (expected `Authorization: Bearer <token>`)")
        }
    };
    Err(Error::Unauthorized { route, message }.into())
}

fn authorize(
    state: &CfgsyncServerState,
    headers: &HeaderMap,
    access: Access<'_>,
    route: &'static str,
) -> Result<(), ApiError> {
    state
        .inner
        .auth
        .authorize(BearerToken::from_headers(headers).token(), access, route)
        .map_err(ApiError::from)
}

/// Authorizes `/node` for `registration`. With scoped node tokens, the scope
/// the request names and the one its stored registration holds (what the node
/// is served from) must both be the token's; a request naming none is checked
/// against the stored one alone, so clients that send no metadata on `/node`
/// keep working.
async fn authorize_fetch(
    state: &CfgsyncServerState,
    headers: &HeaderMap,
    registration: &NodeRegistration,
    route: &'static str,
) -> Result<(), ApiError> {
    let auth = &state.inner.auth;
    let identifier = registration.identifier.as_str();
    let check = |scope: Option<&str>| {
        authorize(
            state,
            headers,
            Access::ScopedNode { identifier, scope },
            route,
        )
    };
    let requested = auth.scope_of(registration);
    if requested.is_some() || !auth.scopes_node_tokens() {
        check(requested)?;
        if !auth.scopes_node_tokens() {
            return Ok(());
        }
    }
    let stored = state.source().registration(identifier).await?;
    match stored.as_ref().and_then(|stored| auth.scope_of(stored)) {
        Some(scope) => check(Some(scope)),
        None if requested.is_none() => check(None),
        None => Ok(()),
    }
}

fn validated(
    state: &CfgsyncServerState,
    registration: NodeRegistration,
) -> Result<NodeRegistration, ApiError> {
    registration.validate(state.limits().max_metadata_bytes)?;
    Ok(registration)
}

/// The cfgsync routes (see the crate docs for the table), with metrics, the body
/// limit, panic safety and JSON answers for unknown routes and methods. Merge it
/// with your own routes as any axum `Router`.
pub fn build_cfgsync_router(state: CfgsyncServerState) -> Router {
    let body_limit = state.limits().max_body_bytes;
    Router::new()
        .route("/register", post(register))
        .route("/node", post(node))
        .route("/init-with-node", post(node))
        .route("/node/replace", post(replace))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .route(STATUS_ROUTE, get(status_json))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            track_requests,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("handler panicked");
                json_error(ErrorCode::Internal, "internal server error".into())
            },
        ))
        .with_state(state)
}

async fn track_requests(
    State(state): State<CfgsyncServerState>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |path| path.as_str())
        .to_owned();
    let started = Instant::now();
    let response = next.run(request).await;
    let metrics = &state.inner.metrics;
    metrics
        .latency
        .get_or_create(&crate::metrics::RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&crate::metrics::RequestLabels {
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

async fn register(
    State(state): State<CfgsyncServerState>,
    headers: HeaderMap,
    body: Result<JsonBody<NodeRegistration>, ApiError>,
) -> Result<StatusCode, ApiError> {
    const ROUTE: &str = "/register";
    require_token(&state, &headers, ROUTE)?;
    let registration = validated(&state, body?.0)?;
    authorize(
        &state,
        &headers,
        Access::ScopedNode {
            identifier: &registration.identifier,
            scope: state.inner.auth.scope_of(&registration),
        },
        ROUTE,
    )?;
    tracing::info!(identifier = %registration.identifier, ip = %registration.ip, "node registered");
    let (identifier, ip) = (registration.identifier.clone(), registration.ip);
    state.source().register(registration).await?;
    state.inner.metrics.registrations.inc();
    state.inner.tracker.registered(&identifier, ip);
    Ok(StatusCode::ACCEPTED)
}

#[derive(Debug, Deserialize)]
struct NodeQuery {
    /// Long-poll: hold the request up to this many seconds.
    wait: Option<u64>,
}

async fn node(
    State(state): State<CfgsyncServerState>,
    headers: HeaderMap,
    query: Result<Query<NodeQuery>, QueryRejection>,
    body: Result<JsonBody<NodeRegistration>, ApiError>,
) -> Result<Response, ApiError> {
    const ROUTE: &str = "/node";
    require_token(&state, &headers, ROUTE)?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("invalid query string: {}", e.body_text()),
        )
    })?;
    let registration = validated(&state, body?.0)?;
    authorize_fetch(&state, &headers, &registration, ROUTE).await?;
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let coding = ContentCoding::negotiate(&headers);

    let wait = query
        .wait
        .map(|secs| std::time::Duration::from_secs(secs).min(state.limits().max_wait()))
        .filter(|wait| !wait.is_zero());
    let response = answer_node(
        &state,
        &registration,
        if_none_match.as_deref(),
        coding,
        wait,
    )
    .await?;
    let etag = response
        .headers()
        .get(header::ETAG)
        .and_then(|v| v.to_str().ok());
    state.inner.tracker.fetched(
        &registration.identifier,
        registration.ip,
        response.status().as_u16(),
        etag,
    );
    Ok(response)
}

/// The `/node` answer, held while it would be `425` or `304` when `wait` is set.
async fn answer_node(
    state: &CfgsyncServerState,
    registration: &NodeRegistration,
    if_none_match: Option<&str>,
    coding: ContentCoding,
    wait: Option<std::time::Duration>,
) -> Result<Response, ApiError> {
    let deadline = wait.map(|wait| tokio::time::Instant::now() + wait);
    let mut changes = deadline.and_then(|_| state.source().changes());
    let _waiting = changes.as_ref().map(|_| WaitingGuard::new(state));

    loop {
        if let Some(changes) = changes.as_mut() {
            // Seen before resolving: a change after this point wakes us below.
            changes.borrow_and_update();
        }
        let answer = state.source().resolve(registration).await?;
        // Held only while the answer is "not yet" (425) or "unchanged" (304);
        // a missing config is a final answer and goes back at once.
        let settled = match &answer {
            ConfigResolveResponse::Ready(payload) => {
                !if_none_match.is_some_and(|tag| payload.matches_if_none_match(tag))
            }
            ConfigResolveResponse::NotReady | ConfigResolveResponse::NotReadyBecause { .. } => {
                false
            }
            _ => true,
        };
        let (Some(rx), Some(deadline), false) = (changes.as_mut(), deadline, settled) else {
            return Ok(respond(registration, answer, if_none_match, coding));
        };
        tokio::select! {
            changed = rx.changed() => {
                if changed.is_err() {
                    return Ok(respond(registration, answer, if_none_match, coding));
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                return Ok(respond(registration, answer, if_none_match, coding));
            }
            () = state.inner.shutdown.cancelled() => {
                return Ok(respond(registration, answer, if_none_match, coding));
            }
        }
    }
}

/// Counts a long-poll in `cfgsync_long_polls_waiting` while it is held.
struct WaitingGuard(prometheus_client::metrics::gauge::Gauge);

impl WaitingGuard {
    fn new(state: &CfgsyncServerState) -> Self {
        let gauge = state.inner.metrics.long_polls_waiting.clone();
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn respond(
    registration: &NodeRegistration,
    answer: ConfigResolveResponse,
    if_none_match: Option<&str>,
    coding: ContentCoding,
) -> Response {
    let identifier = &registration.identifier;
    match answer {
        ConfigResolveResponse::Ready(payload) => {
            let etag = HeaderValue::from_str(payload.etag())
                .unwrap_or_else(|_| HeaderValue::from_static("\"\""));
            // The answer depends on Accept-Encoding: say so on every answer
            // with the payload's ETag, so a cache never hands a compressed body to a client
            // that did not ask for it.
            let vary = (header::VARY, HeaderValue::from_static("accept-encoding"));
            if if_none_match.is_some_and(|tag| payload.matches_if_none_match(tag)) {
                return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag), vary]).into_response();
            }
            let (coding, chunks) = match payload.chunks(coding) {
                Ok(chunks) => (coding, chunks),
                // Identity is always acceptable; a node gets its files even if
                // compressing failed.
                Err(error) => {
                    tracing::error!(%identifier, %error, "cannot compress the payload; answering identity");
                    (
                        ContentCoding::Identity,
                        payload
                            .chunks(ContentCoding::Identity)
                            .unwrap_or_else(|_| vec![payload.body()]),
                    )
                }
            };
            let mut response = (
                StatusCode::OK,
                [
                    (
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    ),
                    (header::ETAG, etag),
                    vary,
                ],
                Body::new(ChunkedBody::new(chunks)),
            )
                .into_response();
            if let Some(encoding) = coding.header_value() {
                response
                    .headers_mut()
                    .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
            }
            response
        }
        ConfigResolveResponse::NotReady => json_error(
            ErrorCode::NotReady,
            format!("config of node {identifier:?} is not ready yet; register, then retry"),
        ),
        ConfigResolveResponse::NotReadyBecause { reason } => json_error(
            ErrorCode::NotReady,
            format!("config of node {identifier:?} is not ready yet: {reason}"),
        ),
        ConfigResolveResponse::Missing => json_error(
            ErrorCode::MissingConfig,
            format!("no config exists for node {identifier:?}"),
        ),
    }
}

async fn replace(
    State(state): State<CfgsyncServerState>,
    headers: HeaderMap,
    body: Result<JsonBody<NodeFilesReplacement>, ApiError>,
) -> Result<StatusCode, ApiError> {
    const ROUTE: &str = "/node/replace";
    require_token(&state, &headers, ROUTE)?;
    authorize(&state, &headers, Access::Admin, ROUTE)?;
    let replacement = body?.0;
    crate::registration::validate_identifier(&replacement.identifier)?;
    tracing::info!(identifier = %replacement.identifier, files = replacement.files.len(), "node files replaced");
    state
        .source()
        .replace(&replacement.identifier, replacement.files)
        .await?;
    Ok(StatusCode::ACCEPTED)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<CfgsyncServerState>) -> Result<impl IntoResponse, ApiError> {
    state.source().check_ready().await.map_err(|e| match e {
        Error::Unavailable { .. } => ApiError::from(e),
        other => ApiError::new(
            ErrorCode::Unavailable,
            format!("config source not ready: {other}"),
        ),
    })?;
    Ok(axum::Json(serde_json::json!({"status": "ready"})))
}

async fn metrics(State(state): State<CfgsyncServerState>) -> Result<Response, ApiError> {
    let text = state
        .metrics_text()
        .map_err(|_| ApiError::new(ErrorCode::Internal, "cannot encode metrics"))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!("no route {} {}", request.method(), request.uri().path()),
    )
}

/// Makes every route of `router` that exists but not with the request's method
/// answer `405 method_not_allowed` as the JSON error body, with the `Allow`
/// header naming the methods it takes (axum's default is an empty body).
/// [`build_cfgsync_router`] applies it to its own routes; apply it again to a
/// router you merged your own routes into, so those answer the same way.
pub fn json_method_not_allowed<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.method_not_allowed_fallback(method_not_allowed)
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// The JSON twin of the status page.
pub const STATUS_ROUTE: &str = "/api/v1/status";

/// With auth on, the status needs the admin (operator) token: none is `401`
/// (with a Basic challenge, so a browser asks for it), a node token `403`.
/// Returns the refusal, `None` when allowed.
fn refuse_status(
    state: &CfgsyncServerState,
    headers: &HeaderMap,
    route: &'static str,
) -> Option<Response> {
    let token = crate::status::operator_token(headers);
    state
        .inner
        .auth
        .authorize(token.as_deref(), Access::Admin, route)
        .err()
        .map(|e| {
            let mut response = ApiError::from(e).into_response();
            if response.status() == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(
                        "Basic realm=\"cfgsync status (password: the admin token)\", charset=\"UTF-8\"",
                    ),
                );
            }
            response
        })
}

fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn status_page(State(state): State<CfgsyncServerState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_status(&state, &headers, "/") {
        return refused;
    }
    let (status, sections) = state.status().await;
    no_store(
        axum::response::Html(crate::status::render_status_page(&status, &sections)).into_response(),
    )
}

async fn status_json(State(state): State<CfgsyncServerState>, headers: HeaderMap) -> Response {
    if let Some(refused) = refuse_status(&state, &headers, STATUS_ROUTE) {
        return refused;
    }
    let (status, _) = state.status().await;
    no_store(axum::Json(status).into_response())
}
