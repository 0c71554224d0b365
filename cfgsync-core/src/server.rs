//! [`CfgsyncServerState`] (source, auth, limits, metrics) and its builder, and
//! [`ServerLimits`].

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ConfigSource;
use crate::auth::AuthConfig;
use crate::metrics::ServerMetrics;
use crate::registration::DEFAULT_MAX_METADATA_BYTES;
use crate::status::{
    FetchTracker, ServerStatus, SourceStatus, SourceSummary, StatusSection, node_rows,
};

/// Default of [`ServerLimits::header_read_timeout_secs`].
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
/// Default of [`ServerLimits::idle_timeout_secs`].
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
/// Default of [`ServerLimits::shutdown_timeout_secs`].
pub const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 30;

/// Request and connection limits of a cfgsync server (the `limits:` keys of
/// `cfgsync-server`'s config). Every serve function of this crate reads the
/// connection limits from the state it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Largest request body, in bytes (413 above). Default 2 MiB, as the original.
    pub max_body_bytes: usize,
    /// Largest registration metadata, as JSON bytes (400 above). Default 64 KiB.
    pub max_metadata_bytes: usize,
    /// Longest long-poll a client may ask for with `?wait=`, in seconds. Default 60.
    pub max_wait_secs: u64,
    /// Time a client has to send a whole request head once its first byte
    /// arrived, and between two chunks of a request body, in seconds; past it
    /// the connection is closed. Default 10 (at least 1).
    pub header_read_timeout_secs: u64,
    /// Time a connection may stay open with no request in flight (a new
    /// connection before its first byte, a keep-alive connection between
    /// requests), in seconds; past it the connection is closed. Default 30 (at
    /// least 1). Held long-polls are requests in flight, not idle.
    pub idle_timeout_secs: u64,
    /// Most connections served at once; a connection beyond it is answered
    /// `503 unavailable` and closed. `None` (the default) sizes it from the
    /// process's open-file limit (raised to its hard limit first), leaving a
    /// sixteenth of it, at least 64, for files and outgoing connections.
    pub max_connections: Option<usize>,
    /// On SIGTERM / ctrl-c: time in-flight requests get to finish (held
    /// long-polls answer at once), in seconds; connections still open after it
    /// are dropped. Default 30.
    pub shutdown_timeout_secs: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_wait_secs: 60,
            header_read_timeout_secs: DEFAULT_HEADER_READ_TIMEOUT_SECS,
            idle_timeout_secs: DEFAULT_IDLE_TIMEOUT_SECS,
            max_connections: None,
            shutdown_timeout_secs: DEFAULT_SHUTDOWN_TIMEOUT_SECS,
        }
    }
}

impl ServerLimits {
    pub(crate) fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }

    /// [`header_read_timeout_secs`](Self::header_read_timeout_secs) as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs.max(1))
    }

    /// [`idle_timeout_secs`](Self::idle_timeout_secs) as a duration.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }

    /// [`shutdown_timeout_secs`](Self::shutdown_timeout_secs) as a duration.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// Sets the header read timeout.
    #[must_use]
    pub fn with_header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout_secs = timeout.as_secs().max(1);
        self
    }

    /// Sets the idle connection timeout.
    #[must_use]
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout_secs = timeout.as_secs().max(1);
        self
    }

    /// Sets the connection cap (`None`: from the open-file limit).
    #[must_use]
    pub fn with_max_connections(mut self, max: Option<usize>) -> Self {
        self.max_connections = max;
        self
    }

    /// Sets the shutdown deadline.
    #[must_use]
    pub fn with_shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout_secs = timeout.as_secs();
        self
    }
}

/// Whether a server listening on `addr` with `auth_enabled` is open to anyone
/// who can reach it: auth off and an address beyond loopback.
pub fn is_insecure_listener(addr: SocketAddr, auth_enabled: bool) -> bool {
    !auth_enabled && !addr.ip().is_loopback()
}

/// Everything the cfgsync routes share: the config source, limits, auth, metrics.
/// Cheap to clone.
#[derive(Clone)]
pub struct CfgsyncServerState {
    pub(crate) inner: Arc<StateInner>,
}

pub(crate) struct StateInner {
    pub source: Arc<dyn ConfigSource>,
    pub limits: ServerLimits,
    pub auth: AuthConfig,
    pub registry: Registry,
    pub metrics: ServerMetrics,
    pub shutdown: CancellationToken,
    pub insecure_listener: AtomicBool,
    pub tracker: FetchTracker,
    pub app: AppInfo,
    pub sections: Vec<Arc<dyn StatusSection>>,
    pub started_at: DateTime<Utc>,
}

/// The name and version a status page shows.
#[derive(Debug, Clone)]
pub(crate) struct AppInfo {
    pub name: String,
    pub version: String,
}

impl Default for AppInfo {
    fn default() -> Self {
        Self {
            name: "cfgsync".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

impl CfgsyncServerState {
    /// State serving `source` with default limits, auth off, and its own metrics
    /// registry. Use [`builder`](Self::builder) to set more.
    pub fn new(source: Arc<dyn ConfigSource>) -> Self {
        Self::builder(source).build()
    }

    /// A builder for state serving `source`.
    pub fn builder(source: Arc<dyn ConfigSource>) -> CfgsyncServerStateBuilder {
        CfgsyncServerStateBuilder {
            source,
            limits: ServerLimits::default(),
            auth: AuthConfig::default(),
            registry: Registry::default(),
            app: AppInfo::default(),
            sections: Vec::new(),
        }
    }

    /// The config source.
    pub fn source(&self) -> &Arc<dyn ConfigSource> {
        &self.inner.source
    }

    /// The limits in force.
    pub fn limits(&self) -> &ServerLimits {
        &self.inner.limits
    }

    /// Whether auth is on.
    pub fn auth_enabled(&self) -> bool {
        self.inner.auth.is_enabled()
    }

    /// Records that the server listens on `addr`: when that is beyond loopback
    /// with auth off, logs a WARN, sets `cfgsync_insecure_listener` to 1 on
    /// `/metrics` and [`insecure_listener`](Self::insecure_listener) to true.
    /// The serve functions of this crate call it; call it for any other
    /// listener that serves this state's routes. Returns whether it is insecure.
    pub fn note_listener(&self, addr: SocketAddr) -> bool {
        let insecure = is_insecure_listener(addr, self.auth_enabled());
        if insecure {
            tracing::warn!(
                %addr,
                "INSECURE: listening beyond loopback with auth off: anyone who can reach {addr} \
                 can register nodes and read every node's files; set auth tokens or bind 127.0.0.1"
            );
            self.inner.insecure_listener.store(true, Ordering::Relaxed);
            self.inner.metrics.insecure_listener.set(1);
        }
        insecure
    }

    /// Whether a listener of this state is open beyond loopback with auth off
    /// (see [`note_listener`](Self::note_listener)), for status pages.
    pub fn insecure_listener(&self) -> bool {
        self.inner.insecure_listener.load(Ordering::Relaxed)
    }

    /// The `/metrics` text: the registry's metrics, ours included.
    pub fn metrics_text(&self) -> std::result::Result<String, fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.inner.registry)?;
        Ok(text)
    }

    /// What each node last did (registered, fetched, ETag served).
    pub fn tracker(&self) -> &FetchTracker {
        &self.inner.tracker
    }

    /// The server's status now: what `GET /api/v1/status` answers, and the
    /// HTML of the app's sections for `GET /`. Asks the source and every
    /// section; a failure of one is shown in its place, never fails the rest.
    pub async fn status(&self) -> (ServerStatus, Vec<maud::Markup>) {
        let inner = &self.inner;
        let (source, error) = match inner.source.status().await {
            Ok(source) => (source, None),
            Err(e) => {
                tracing::warn!(error = %e, "config source cannot tell its status");
                (SourceStatus::new("unknown"), Some(e.to_string()))
            }
        };
        let (nodes, mut counts) = node_rows(source.nodes, &inner.tracker);
        counts.long_polls_held = u64::try_from(inner.metrics.long_polls_waiting.get()).unwrap_or(0);
        let mut sections = BTreeMap::new();
        let mut html = Vec::with_capacity(inner.sections.len());
        for section in &inner.sections {
            let key = section.key().to_owned();
            match section.render().await {
                Ok(rendered) => {
                    sections.insert(key, rendered.json);
                    html.push(rendered.html);
                }
                Err(e) => {
                    tracing::warn!(section = %key, error = %e, "status section failed");
                    let message = e.to_string();
                    html.push(maud::html! {
                        section { h2 { (key) } p.err { "cannot show this section: " (message) } }
                    });
                    sections.insert(key, serde_json::json!({ "error": message }));
                }
            }
        }
        let status = ServerStatus {
            server: inner.app.name.clone(),
            version: inner.app.version.clone(),
            started_at: inner.started_at,
            generated_at: Utc::now(),
            auth: inner.auth.is_enabled(),
            insecure_listener: inner.insecure_listener.load(Ordering::Relaxed),
            source: SourceSummary {
                kind: source.kind,
                file: source.file,
                generation: source.generation,
                reload: source.reload,
                error,
            },
            counts,
            nodes,
            sections,
        };
        (status, html)
    }

    /// Ends held long-polls (each answers what it has); `serve_cfgsync*` call this
    /// when shutdown begins.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.cancel();
    }
}

/// Builds a [`CfgsyncServerState`].
pub struct CfgsyncServerStateBuilder {
    source: Arc<dyn ConfigSource>,
    limits: ServerLimits,
    auth: AuthConfig,
    registry: Registry,
    app: AppInfo,
    sections: Vec<Arc<dyn StatusSection>>,
}

impl CfgsyncServerStateBuilder {
    /// Sets the request limits.
    #[must_use]
    pub fn with_limits(mut self, limits: ServerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the accepted tokens (auth is off while none is set).
    #[must_use]
    pub fn with_auth(mut self, auth: AuthConfig) -> Self {
        self.auth = auth;
        self
    }

    /// Serves `registry` on `/metrics` with the cfgsync metrics added to it, so an
    /// app's own metrics appear beside ours.
    #[must_use]
    pub fn with_metrics_registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Names the server on its status page and in `GET /api/v1/status`
    /// (default: `cfgsync` and this crate's version).
    #[must_use]
    pub fn with_app(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.app = AppInfo {
            name: name.into(),
            version: version.into(),
        };
        self
    }

    /// Adds an app's section to the status page and its JSON twin, shown in
    /// the order added, between the server summary and the node table.
    #[must_use]
    pub fn with_status_section(mut self, section: Arc<dyn StatusSection>) -> Self {
        self.sections.push(section);
        self
    }

    /// The state.
    pub fn build(mut self) -> CfgsyncServerState {
        let metrics = ServerMetrics::register(&mut self.registry);
        CfgsyncServerState {
            inner: Arc::new(StateInner {
                source: self.source,
                limits: self.limits,
                auth: self.auth,
                registry: self.registry,
                metrics,
                shutdown: CancellationToken::new(),
                insecure_listener: AtomicBool::new(false),
                tracker: FetchTracker::new(),
                app: self.app,
                sections: self.sections,
                started_at: Utc::now(),
            }),
        }
    }
}

impl fmt::Debug for CfgsyncServerStateBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfgsyncServerStateBuilder")
            .field("source", &self.source)
            .field("limits", &self.limits)
            .field("auth", &self.auth)
            .field("sections", &self.sections)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for CfgsyncServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CfgsyncServerState")
            .field("source", &self.inner.source)
            .field("limits", &self.inner.limits)
            .field("auth", &self.inner.auth)
            .finish_non_exhaustive()
    }
}
