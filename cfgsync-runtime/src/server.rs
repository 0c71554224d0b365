//! Serving from a config file, or from code with a snapshot materializer.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use cfgsync_adapter::{
    DurableRegistrationStore, MemoryRegistrationStore, ObjectRegistrationStore,
    RegistrationSnapshotMaterializer, RegistrationStore, SnapshotConfigSource,
};
use cfgsync_core::{CfgsyncServerState, serve_cfgsync};
use prometheus_client::registry::Registry;

use crate::config::{
    CfgsyncServerConfig, CfgsyncServingMode, RegistrationLogConfig, RegistrationStoreConfig,
};
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
    // Also for a bundle, which opens no store: the keys are wrong there too.
    config
        .registration_log
        .check_store(&config.registration_store)?;
    let (path, kind, store) = match &config.source {
        CfgsyncServingMode::Bundle { artifacts_path } => (artifacts_path, FileKind::Bundle, None),
        CfgsyncServingMode::Registration { artifacts_path } => (
            artifacts_path,
            FileKind::Artifacts,
            Some(
                open_registration_store_with(&config.registration_store, &config.registration_log)
                    .await?,
            ),
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
    let loaded = load_reloadable(path, kind, store, &mut registry, triggers)
        .map_err(|e| e.at_key(ARTIFACTS_KEY))?;
    if config.reload.watch {
        drop(loaded.reloader.watch(config.reload.interval()));
    }
    tracing::info!(
        source = ?config.source,
        registration_store = %config.registration_store,
        registration_log = %log_summary(config),
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

/// The config key of the source file, named in errors about that file.
const ARTIFACTS_KEY: &str = "source.artifacts_path";

/// Checks what a config describes without serving and without changing
/// anything on disk: the source file is read and checked as at start-up, the
/// registration store's location is looked at but not opened or created.
/// Returns the summary as `(what, value)` lines.
pub fn check_config(config: &CfgsyncServerConfig) -> Result<Vec<(&'static str, String)>> {
    let (path, kind, mode) = match &config.source {
        CfgsyncServingMode::Bundle { artifacts_path } => (
            artifacts_path,
            FileKind::Bundle,
            "static (bundle): served without registration",
        ),
        CfgsyncServingMode::Registration { artifacts_path } => (
            artifacts_path,
            FileKind::Artifacts,
            "registration: served once a node registered",
        ),
    };
    config
        .registration_log
        .check_store(&config.registration_store)?;
    let mut registry = Registry::default();
    load_reloadable(path, kind, None, &mut registry, "check")
        .map_err(|e| e.at_key(ARTIFACTS_KEY))?;
    let nodes = match kind {
        FileKind::Bundle => {
            let bundle = cfgsync_core::NodeArtifactsBundle::from_path(path)?;
            format!(
                "{} node(s), {} shared file(s)",
                bundle.nodes.len(),
                bundle.shared_files.len()
            )
        }
        FileKind::Artifacts => {
            let artifacts = cfgsync_core::RegistrationArtifacts::from_path(path)?;
            format!(
                "{} node(s), {} shared file(s)",
                artifacts.nodes.len(),
                artifacts.shared.files.len()
            )
        }
    };
    let store = match &config.registration_store {
        RegistrationStoreConfig::Memory => "memory (lost on restart)".to_owned(),
        RegistrationStoreConfig::Durable(dir) if dir.is_dir() => {
            format!("file://{} (exists)", dir.display())
        }
        RegistrationStoreConfig::Durable(dir) if dir.exists() => {
            return Err(Error::Config {
                path: dir.clone(),
                message: "registration_store: exists and is not a directory".to_owned(),
            });
        }
        RegistrationStoreConfig::Durable(dir) => {
            format!("file://{} (created at start)", dir.display())
        }
        RegistrationStoreConfig::Object(url) => {
            // An HTTP store builds its client here: the TLS provider first.
            cfgsync_core::tls::ensure_crypto_provider();
            #[allow(clippy::disallowed_methods)] // provider ensured above
            object_store::parse_url(url).map_err(|e| Error::RegistrationStore {
                url: url.to_string(),
                message: e.to_string(),
            })?;
            format!(
                "{url} (not contacted by check); {}",
                config.registration_log.describe()
            )
        }
    };
    let auth = &config.auth;
    let auth = if auth.is_enabled() {
        let mut on = Vec::new();
        if auth.shared_token.is_some() {
            on.push("shared token");
        }
        if auth.node_secret.is_some() {
            on.push("per-node tokens");
        }
        if auth.admin_token.is_some() {
            on.push("admin token");
        }
        format!("on ({})", on.join(", "))
    } else {
        "off".to_owned()
    };
    let reload = if config.reload.watch {
        format!("polled every {} ms", config.reload.interval().as_millis())
    } else {
        "not watched (SIGHUP reloads)".to_owned()
    };
    Ok(vec![
        ("listen", format!("http://{}", config.socket_addr())),
        ("source", mode.to_owned()),
        (ARTIFACTS_KEY, path.display().to_string()),
        ("nodes", nodes),
        ("registration_store", store),
        ("auth", auth),
        ("reload", reload),
    ])
}

/// The server state a config describes (see [`build_server`], whose file
/// watcher this starts too).
pub async fn build_server_state(config: &CfgsyncServerConfig) -> Result<CfgsyncServerState> {
    Ok(build_server(config).await?.state)
}

/// What the start-up log says of `registration_log`.
fn log_summary(config: &CfgsyncServerConfig) -> String {
    match config.registration_store {
        RegistrationStoreConfig::Object(_) => config.registration_log.describe(),
        _ => "none (not an object store)".to_owned(),
    }
}

/// Opens the registration store a config names. Object store URLs take their
/// settings from the `AWS_*` (and `GOOGLE_*`, `AZURE_*`) environment
/// variables; their log keeps [`cfgsync_adapter::ObjectStoreOptions`]' defaults (see
/// [`open_registration_store_with`]).
pub async fn open_registration_store(
    config: &RegistrationStoreConfig,
) -> Result<Arc<dyn RegistrationStore>> {
    open_registration_store_with(config, &RegistrationLogConfig::default()).await
}

/// [`open_registration_store`] with an object store's writer id and
/// compaction from `log`; fails with [`Error::RegistrationLogUnused`] when a
/// key of `log` is set and `config` is not an object store.
pub async fn open_registration_store_with(
    config: &RegistrationStoreConfig,
    log: &RegistrationLogConfig,
) -> Result<Arc<dyn RegistrationStore>> {
    log.check_store(config)?;
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
            // An HTTP store builds its client here: the TLS provider first.
            cfgsync_core::tls::ensure_crypto_provider();
            #[allow(clippy::disallowed_methods)] // provider ensured above
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
                    log.object_store_options(),
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
