//! The `serve` app: the operator API and the cfgsync routes for nodes in one
//! process, around one [`LabletSync`]. It only exposes the pipeline's metrics.
//!
//! | route | answer |
//! |---|---|
//! | `POST /api/v1/lablets/{name}/sync` | `200` the sync report (definition, `uploaded`, `uploaded_bytes`); errors `{code, message, stage}` (`409 busy` after waiting for the storage key, `409 storage_key_taken`). With `Prefer: respond-async`: `202` and a job (`Location: /api/v1/jobs/{id}`) |
//! | `GET /api/v1/jobs[/{id}]` | the sync jobs this process keeps (state, stage, bytes, result or error) |
//! | `GET /api/v1/lablets[?instance=X&status=synced\|stale]` | `200` the definitions |
//! | `GET /api/v1/lablets/{name}` | `200` the definition, `404 not_found` |
//! | `POST /lablets/sync` | the status page's sync form (`lablet=NAME`): same-origin only, then `303` back to `/` |
//! | cfgsync routes | `/register`, `/node`, `/healthz`, `/readyz`, `/metrics`, `/` and `/api/v1/status` (with the `lablets` section), ... |
//!
//! The operator routes take the operator token as a bearer token or as the
//! password of HTTP Basic auth (what a browser sends after the status page's
//! `401`). A browser sends Basic credentials with a form posted from any site,
//! so the sync form also needs the request to come from the page's own origin
//! (`Sec-Fetch-Site`, `Origin` or `Referer` naming the `Host`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cfgsync_adapter::{MaterializingConfigSource, RegistrationStore};
use cfgsync_core::auth::Access;
use cfgsync_core::status::operator_token;
use cfgsync_core::{
    AuthConfig, CfgsyncServerState, ServerLimits, build_cfgsync_router, json_method_not_allowed,
};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::catalog::{CatalogFilter, SyncStatus};
use crate::jobs::{DEFAULT_JOBS_KEPT, JobError, SyncJobs};
use crate::materializer::{LABLET_METADATA_KEY, LabletMaterializer};
use crate::metrics::Metrics;
use crate::pipeline::{BytesProgress, LabletSync, Progress, validate_name};
use crate::status::{LabletsSection, SYNC_FORM_ROUTE, SyncAttempts};
use crate::{Error, LabletSyncConfig, Result, Stage};

/// How `serve` runs, beside the sync configuration.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Tokens: `admin_token` is the operator token of the `/api/v1` routes;
    /// `shared_token` / `node_secret` protect the node routes. All unset = auth off.
    pub auth: AuthConfig,
    /// Request limits of the node routes, and connection limits (header and
    /// idle timeouts, connection cap, shutdown deadline) of the whole
    /// listener, operator API included.
    pub limits: ServerLimits,
    /// How often the fan-out retry queue is drained in the background.
    pub retry_interval: Duration,
    /// How often the catalog's change marker is read: a change made anywhere
    /// (CLI, another replica, a drain) reaches long-polling nodes within
    /// about this interval plus one re-read of the changed definitions.
    /// Default 500 ms.
    pub catalog_poll_interval: Duration,
    /// Whether per-node tokens (`auth.node_secret`) must be scoped to the
    /// node's lablet. Either way a token scoped to a lablet is valid only for
    /// it: the `lablet` registration metadata is the scope key.
    pub node_tokens: NodeTokenScope,
    /// How many sync jobs (`Prefer: respond-async`) this process keeps.
    pub jobs_kept: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            auth: AuthConfig::default(),
            limits: ServerLimits::default(),
            retry_interval: Duration::from_secs(30),
            catalog_poll_interval: Duration::from_millis(500),
            node_tokens: NodeTokenScope::default(),
            jobs_kept: DEFAULT_JOBS_KEPT,
        }
    }
}

/// Which per-node tokens `serve` accepts (`LABLET_NODE_TOKEN_SCOPE`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[non_exhaustive]
pub enum NodeTokenScope {
    /// Only tokens scoped to the lablet the node registers for (the default):
    /// a node reads only the lablet its token names.
    #[default]
    Required,
    /// Unscoped per-node tokens too (a node may then register for any
    /// lablet); scoped tokens still hold their node to their lablet.
    Optional,
}

/// The lablet service behind the operator API.
#[derive(Debug)]
pub struct LabletService {
    sync: Arc<LabletSync>,
    materializer: Arc<LabletMaterializer>,
    auth: AuthConfig,
    attempts: Arc<SyncAttempts>,
    jobs: SyncJobs,
}

impl LabletService {
    /// The pipeline.
    pub fn sync(&self) -> &Arc<LabletSync> {
        &self.sync
    }

    /// Syncs `name` and wakes the nodes waiting for it; the status page shows
    /// the attempt (running, or how it ended).
    pub async fn sync_lablet(&self, name: &str) -> Result<crate::SyncReport> {
        self.sync_lablet_observed(name, &|_| {}, &|_, _, _| {})
            .await
    }

    /// [`sync_lablet`](Self::sync_lablet), telling `progress` and `bytes` as
    /// the pipeline goes ([`LabletSync::sync_observed`]). A failure is logged
    /// (`WARN`, with the lablet and the stage).
    pub async fn sync_lablet_observed(
        &self,
        name: &str,
        progress: Progress<'_>,
        bytes: BytesProgress<'_>,
    ) -> Result<crate::SyncReport> {
        validate_name(name)?;
        self.attempts.started(name);
        let result = self.sync.sync_observed(name, progress, bytes).await;
        self.attempts.finished(name, &result);
        match &result {
            Ok(_) => {
                self.materializer.refresh().await;
            }
            Err(error) => tracing::warn!(
                lablet = %name,
                stage = error.stage().map(Stage::as_str),
                %error,
                "sync failed"
            ),
        }
        result
    }

    /// The sync jobs this process keeps.
    pub fn jobs(&self) -> &SyncJobs {
        &self.jobs
    }

    /// Starts syncing `name` in the background as a new job and returns it
    /// (queued); the job follows the sync's stages and bytes.
    fn start_sync_job(self: &Arc<Self>, name: &str) -> Result<crate::jobs::SyncJob, ApiError> {
        validate_name(name)?;
        let job = self.jobs.create(name).map_err(|full| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                full.to_string(),
            )
        })?;
        let service = self.clone();
        let (id, name) = (job.id.clone(), name.to_owned());
        tokio::spawn(async move {
            let jobs = &service.jobs;
            let progress = |stage| jobs.stage_started(&id, stage);
            let bytes = |stage, done, total| jobs.bytes(&id, stage, done, total);
            let outcome = service
                .sync_lablet_observed(&name, &progress, &bytes)
                .await
                .map_err(|error| {
                    let error = ApiError::from(error);
                    JobError {
                        code: error.code,
                        message: error.message,
                        stage: error.stage,
                    }
                });
            jobs.finish(&id, outcome);
        });
        Ok(job)
    }

    /// Drains the retry queue once ([`LabletSync::retry_pending`]) and wakes
    /// the nodes when a record changed (a kept record landed, or deliveries
    /// turned a `stale` record `synced`).
    pub async fn retry_pending(&self) -> Result<crate::RetryReport> {
        let report = self.sync.retry_pending().await?;
        if report.delivered > 0 || report.recorded > 0 {
            self.materializer.refresh().await;
        }
        Ok(report)
    }
}

/// An operator API error: `{"code", "message", "stage"}`.
#[derive(Debug, Serialize)]
struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    code: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<Stage>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            stage: None,
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let (status, code) = match &error {
            Error::InvalidName { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            Error::Resolve { .. } => (StatusCode::BAD_GATEWAY, "cannot_resolve_content"),
            Error::Download { .. } => (StatusCode::BAD_GATEWAY, "package_not_available"),
            Error::Inspect { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "package_invalid"),
            Error::Store { .. } => (StatusCode::BAD_GATEWAY, "blob_upload_failed"),
            Error::Record { .. } => (StatusCode::BAD_GATEWAY, "record_failed"),
            Error::Busy { .. } | Error::LeaseLost { .. } => (StatusCode::CONFLICT, "busy"),
            Error::KeyTaken { .. } => (StatusCode::CONFLICT, "storage_key_taken"),
            Error::Lease { .. } => (StatusCode::BAD_GATEWAY, "blob_upload_failed"),
            Error::Config(_)
            | Error::Queue { .. }
            | Error::Outbox { .. }
            | Error::Catalog(_)
            | Error::Local { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let stage = error.stage();
        Self {
            status,
            code,
            message: error.to_string(),
            stage,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

/// A path segment axum could not decode (e.g. `%FF`) as our JSON error.
fn path_param(path: std::result::Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid path: {}", e.body_text()),
        )
    })
}

/// Whether the request asks for an asynchronous answer (RFC 7240
/// `Prefer: respond-async`, among other preferences or not).
fn prefers_async(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::HeaderName::from_static("prefer"))
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.split(';')
                .next()
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("respond-async"))
        })
}

fn authorize(
    service: &LabletService,
    headers: &HeaderMap,
    route: &'static str,
) -> Result<(), ApiError> {
    let token = operator_token(headers);
    service
        .auth
        .authorize(token.as_deref(), Access::Admin, route)
        .map_err(|e| match e {
            cfgsync_core::Error::Forbidden { message, .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
            }
            other => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("{other}; the operator API needs the operator token"),
            ),
        })
}

async fn sync_route(
    State(service): State<Arc<LabletService>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&service, &headers, "/api/v1/lablets/{name}/sync")?;
    let name = path_param(path)?;
    validate_name(&name)?;
    if prefers_async(&headers) {
        let job = service.start_sync_job(&name)?;
        let location = format!("{JOBS_ROUTE}/{}", job.id);
        return Ok((
            StatusCode::ACCEPTED,
            [
                (header::LOCATION, location),
                (
                    header::HeaderName::from_static("preference-applied"),
                    "respond-async".to_owned(),
                ),
            ],
            Json(job),
        )
            .into_response());
    }
    let report = service.sync_lablet(&name).await?;
    Ok(Json(report).into_response())
}

/// Where sync jobs are polled: `GET {JOBS_ROUTE}/{id}`.
pub const JOBS_ROUTE: &str = "/api/v1/jobs";

async fn jobs_route(
    State(service): State<Arc<LabletService>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&service, &headers, JOBS_ROUTE)?;
    Ok(Json(service.jobs.list()).into_response())
}

async fn job_route(
    State(service): State<Arc<LabletService>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&service, &headers, "/api/v1/jobs/{id}")?;
    let id = path_param(path)?;
    match service.jobs.get(&id) {
        Some(job) => Ok(Json(job).into_response()),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no sync job {id} on this server: jobs live in the memory of the replica that \
                 accepted them, and only the last {} are kept",
                service.jobs.capacity()
            ),
        )),
    }
}

/// Refuses a form post that does not come from a page of this server: a
/// browser sends the operator's Basic credentials with a form posted from any
/// site, so the token alone does not show the operator meant it.
fn same_origin(headers: &HeaderMap) -> Result<(), ApiError> {
    let refuse = |why: String| {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "cross-site form post refused: {why}; post the form from this server's status page"
            ),
        )
    };
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && site != "same-origin"
    {
        return Err(refuse(format!("Sec-Fetch-Site is {site:?}")));
    }
    let host = text(header::HOST).ok_or_else(|| refuse("no Host header".to_owned()))?;
    let (what, from) = match (text(header::ORIGIN), text(header::REFERER)) {
        (Some(origin), _) => ("Origin", origin),
        (None, Some(referer)) => ("Referer", referer),
        (None, None) => return Err(refuse("no Origin or Referer header".to_owned())),
    };
    let authority = from
        .parse::<axum::http::Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.as_str().to_owned()));
    match authority {
        Some(authority) if authority.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(refuse(format!(
            "{what} {from:?} is not this server ({host})"
        ))),
    }
}

/// The status page's sync form: `lablet=NAME`, posted from the page. Syncs,
/// then sends the browser back to the page (`303`), which shows how it went.
async fn sync_form_route(
    State(service): State<Arc<LabletService>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Response> {
    authorize(&service, &headers, SYNC_FORM_ROUTE).map_err(|e| {
        let unauthorized = e.status == StatusCode::UNAUTHORIZED;
        let mut response = e.into_response();
        if unauthorized {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static(
                    "Basic realm=\"cfgsync status (password: the admin token)\", charset=\"UTF-8\"",
                ),
            );
        }
        response
    })?;
    same_origin(&headers).map_err(IntoResponse::into_response)?;
    let name = url::form_urlencoded::parse(&body)
        .find(|(key, _)| key == "lablet")
        .map(|(_, value)| value.trim().to_owned())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the form needs a `lablet` field",
            )
            .into_response()
        })?;
    validate_name(&name).map_err(|e| ApiError::from(e).into_response())?;
    // The outcome is the page's to show (last sync, its error); a failure
    // is logged by the service.
    let _ = service.sync_lablet(&name).await;
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, format!("/#lablet-{name}"))],
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    instance: Option<String>,
    status: Option<SyncStatus>,
}

async fn list_route(
    State(service): State<Arc<LabletService>>,
    headers: HeaderMap,
    query: std::result::Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    authorize(&service, &headers, "/api/v1/lablets")?;
    let Query(query) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid query: {}", e.body_text()),
        )
    })?;
    let filter = CatalogFilter {
        upstream_instance_name: query.instance,
        status: query.status,
    };
    let definitions = service
        .sync
        .catalog()
        .list(&filter)
        .await
        .map_err(|e| ApiError::from(Error::Catalog(e)))?;
    Ok(Json(definitions).into_response())
}

async fn show_route(
    State(service): State<Arc<LabletService>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize(&service, &headers, "/api/v1/lablets/{name}")?;
    let name = path_param(path)?;
    validate_name(&name)?;
    let id = service.sync.definition_id(&name)?;
    match service.sync.catalog().get(&id).await {
        Ok(Some(definition)) => Ok(Json(definition).into_response()),
        Ok(None) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("lablet {name} has not been synced"),
        )),
        Err(e) => Err(Error::Catalog(e).into()),
    }
}

/// A running `serve` app: the router (operator API + cfgsync routes) and what
/// it needs to run.
#[derive(Debug)]
pub struct LabletApp {
    /// The operator API merged with the cfgsync routes.
    pub router: Router,
    /// The cfgsync server state (for graceful shutdown of long-polls).
    pub state: CfgsyncServerState,
    /// The service behind the operator API.
    pub service: Arc<LabletService>,
}

/// Builds the `serve` app around a pipeline: nodes register into `store` and
/// get their lablet's files; operators sync through `/api/v1`. One `/metrics`
/// holds the cfgsync, pipeline and sync metrics.
pub fn build_lablet_app(
    config: LabletSyncConfig,
    store: Arc<dyn RegistrationStore>,
    options: &ServeOptions,
) -> Result<LabletApp> {
    let mut registry = Registry::default();
    let metrics = Metrics::registered(&mut registry);
    let sync = Arc::new(LabletSync::from_config(config)?.with_metrics(metrics));
    let materializer = Arc::new(LabletMaterializer::new(sync.clone()));
    let attempts = Arc::new(SyncAttempts::default());
    let section = LabletsSection {
        sync: sync.clone(),
        registrations: store.clone(),
        attempts: attempts.clone(),
    };
    let source = MaterializingConfigSource::new(store, materializer.clone());
    // A node token scoped to a lablet reads only that lablet.
    let node_auth = options.auth.clone().with_scope_key(
        LABLET_METADATA_KEY,
        options.node_tokens == NodeTokenScope::Required,
    );
    let state = CfgsyncServerState::builder(Arc::new(source))
        .with_app("lablet-sync", env!("CARGO_PKG_VERSION"))
        .with_status_section(Arc::new(section))
        .with_auth(node_auth)
        .with_limits(options.limits.clone())
        .with_metrics_registry(registry)
        .build();
    let service = Arc::new(LabletService {
        sync,
        materializer,
        auth: options.auth.clone(),
        attempts,
        jobs: SyncJobs::new(options.jobs_kept),
    });
    let api = Router::new()
        .route("/api/v1/lablets", get(list_route))
        .route("/api/v1/lablets/{name}", get(show_route))
        .route("/api/v1/lablets/{name}/sync", post(sync_route))
        .route(JOBS_ROUTE, get(jobs_route))
        .route("/api/v1/jobs/{id}", get(job_route))
        .route(SYNC_FORM_ROUTE, post(sync_form_route))
        .with_state(service.clone());
    // Wrong methods on the operator routes answer JSON too.
    let router = json_method_not_allowed(build_cfgsync_router(state.clone()).merge(api));
    Ok(LabletApp {
        router,
        state,
        service,
    })
}

/// Reads the catalog's change marker every `interval` and refreshes the
/// nodes' content when it moved: how a change made outside this process (the
/// CLI on the same data dir, another replica on the same store, CPA) reaches
/// the nodes of this one. A catalog without a marker is not watched.
async fn watch_catalog(service: Arc<LabletService>, interval: Duration) {
    let catalog = service.sync.catalog();
    let mut seen: Option<String> = None;
    loop {
        tokio::time::sleep(interval).await;
        match catalog.marker().await {
            Ok(None) => return,
            Ok(Some(marker)) if seen.as_ref() != Some(&marker) => {
                if seen.is_some() {
                    tracing::debug!(%marker, "catalog changed; refreshing nodes' content");
                }
                seen = Some(marker);
                service.materializer.refresh().await;
            }
            Ok(Some(_)) => {}
            Err(error) => tracing::warn!(%error, "cannot read the catalog's change marker"),
        }
    }
}

/// Serves the app on `listener` until `shutdown` completes, draining the
/// fan-out retry queue every `options.retry_interval` in the background.
pub async fn serve_lablets(
    app: LabletApp,
    listener: TcpListener,
    options: &ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let drainer = {
        let service = app.service.clone();
        let interval = options.retry_interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                match service.retry_pending().await {
                    Ok(report)
                        if report.delivered > 0
                            || report.recorded > 0
                            || report.anything_pending() =>
                    {
                        tracing::info!(?report, "retry queue drained");
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "draining the retry queue failed"),
                }
            }
        })
    };
    let watcher = tokio::spawn(watch_catalog(
        app.service.clone(),
        options.catalog_poll_interval.max(Duration::from_millis(50)),
    ));
    let served = cfgsync_core::serve_app_on(listener, app.router, app.state, shutdown).await;
    drainer.abort();
    watcher.abort();
    served.map_err(|e| Error::Local {
        what: "serve".to_owned(),
        source: std::io::Error::other(e),
    })
}
