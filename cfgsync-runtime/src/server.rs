//! Serving from a config file, or from code with a snapshot materializer.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use cfgsync_adapter::{
    DurableRegistrationStore, MemoryRegistrationStore, ObjectRegistrationStore, ObjectStoreOptions,
    RegistrationSnapshotMaterializer, RegistrationStore, SnapshotConfigSource,
};
use cfgsync_core::{CfgsyncServerState, serve_cfgsync};
use prometheus_client::registry::Registry;

use crate::config::{CfgsyncServerConfig, CfgsyncServingMode, RegistrationStoreConfig};
use crate::reload::{FileKind, FileReloader, load_reloadable};
use crate::{Error, Result};

/// Loads `path` and serves it until SIGTERM or ctrl-c, reloading its source
/// file when it changes (unless `reload.watch` is off) and on `SIGHUP`.
pub async fn serve_cfgsync_from_config(path: impl AsRef<Path>) -> Result<()> {
    let config = CfgsyncServerConfig::from_path(path)?;
    let server = build_server(&config).await?;
    #[cfg(unix)]
    let _hangups = server.reloader.reload_on_sighup()?;
    Ok(serve_cfgsync(config.socket_addr(), server.state).await?)
}

/// A server built from its config: the state to serve, and the reloader of
/// its source file (for `SIGHUP`, see [`FileReloader::reload_on_sighup`]).
#[derive(Debug)]
pub struct ConfiguredServer {
    /// The state to serve.
    pub state: CfgsyncServerState,
    /// Reloads the source file (already watched when `reload.watch` is on).
    pub reloader: Arc<FileReloader>,
}

/// Builds what a config describes: its source from the file (with the
/// registration store opened), limits, auth, the status page named
/// `cfgsync-server`, the reload metrics, and the file watcher when
/// `reload.watch` is on (it needs a tokio runtime, and stops when the state is
/// dropped).
pub async fn build_server(config: &CfgsyncServerConfig) -> Result<ConfiguredServer> {
    let (path, kind, store) = match &config.source {
        CfgsyncServingMode::Bundle { artifacts_path } => (artifacts_path, FileKind::Bundle, None),
        CfgsyncServingMode::Registration { artifacts_path } => (
            artifacts_path,
            FileKind::Artifacts,
            Some(open_registration_store(&config.registration_store).await?),
        ),
    };
    let triggers = if config.reload.watch {
        format!(
            "file polled every {} ms",
            config.reload.interval().as_millis()
        )
    } else {
        "file not watched".to_owned()
    };
    let mut registry = Registry::default();
    let loaded = load_reloadable(path, kind, store, &mut registry, triggers)?;
    if config.reload.watch {
        drop(loaded.reloader.watch(config.reload.interval()));
    }
    tracing::info!(
        source = ?config.source,
        registration_store = %config.registration_store,
        auth = config.auth.is_enabled(),
        watch = config.reload.watch,
        "cfgsync config loaded"
    );
    let state = CfgsyncServerState::builder(loaded.source)
        .with_limits(config.limits.clone())
        .with_auth(config.auth.clone())
        .with_metrics_registry(registry)
        .with_app("cfgsync-server", env!("CARGO_PKG_VERSION"))
        .build();
    Ok(ConfiguredServer {
        state,
        reloader: loaded.reloader,
    })
}

/// The server state a config describes (see [`build_server`], whose file
/// watcher this starts too).
pub async fn build_server_state(config: &CfgsyncServerConfig) -> Result<CfgsyncServerState> {
    Ok(build_server(config).await?.state)
}

/// Opens the registration store a config names. Object store URLs take their
/// settings from the `AWS_*` (and `GOOGLE_*`, `AZURE_*`) environment variables.
pub async fn open_registration_store(
    config: &RegistrationStoreConfig,
) -> Result<Arc<dyn RegistrationStore>> {
    Ok(match config {
        RegistrationStoreConfig::Memory => Arc::new(MemoryRegistrationStore::new()),
        RegistrationStoreConfig::Durable(dir) => {
            Arc::new(DurableRegistrationStore::open(dir).await?)
        }
        RegistrationStoreConfig::Object(url) => {
            let options = std::env::vars().filter_map(|(key, value)| {
                let key = key.to_ascii_lowercase();
                ["aws_", "google_", "azure_"]
                    .iter()
                    .any(|p| key.starts_with(p))
                    .then_some((key, value))
            });
            let (store, prefix) = object_store::parse_url_opts(url, options).map_err(|e| {
                Error::RegistrationStore {
                    url: url.to_string(),
                    message: e.to_string(),
                }
            })?;
            Arc::new(
                ObjectRegistrationStore::open(
                    Arc::from(store),
                    prefix.as_ref(),
                    ObjectStoreOptions::default(),
                )
                .await?,
            )
        }
    })
}

/// Serves `materializer`'s policy on `0.0.0.0:port`, registrations in memory,
/// until SIGTERM or ctrl-c — the code-driven entry point.
pub async fn serve_snapshot_cfgsync<M: RegistrationSnapshotMaterializer>(
    port: u16,
    materializer: M,
) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let source = SnapshotConfigSource::new(Arc::new(MemoryRegistrationStore::new()), materializer);
    Ok(serve_cfgsync(addr, CfgsyncServerState::new(Arc::new(source))).await?)
}
