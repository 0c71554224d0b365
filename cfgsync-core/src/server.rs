//! [`CfgsyncServerState`] (source, auth, limits, metrics) and its builder, and
//! [`ServerLimits`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::ConfigSource;
use crate::auth::AuthConfig;
use crate::metrics::ServerMetrics;
use crate::registration::DEFAULT_MAX_METADATA_BYTES;

/// Request limits of a cfgsync server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerLimits {
    /// Largest request body, in bytes (413 above). Default 2 MiB, as the original.
    pub max_body_bytes: usize,
    /// Largest registration metadata, as JSON bytes (400 above). Default 64 KiB.
    pub max_metadata_bytes: usize,
    /// Longest long-poll a client may ask for with `?wait=`, in seconds. Default 60.
    pub max_wait_secs: u64,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 2 * 1024 * 1024,
            max_metadata_bytes: DEFAULT_MAX_METADATA_BYTES,
            max_wait_secs: 60,
        }
    }
}

impl ServerLimits {
    pub(crate) fn max_wait(&self) -> Duration {
        Duration::from_secs(self.max_wait_secs)
    }
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
