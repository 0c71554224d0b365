//! Serving from a config file, or from code with a snapshot materializer.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use cfgsync_adapter::{
    DurableRegistrationStore, MaterializingConfigSource, MemoryRegistrationStore,
    ObjectRegistrationStore, ObjectStoreOptions, RegistrationSnapshotMaterializer,
    RegistrationStore, SnapshotConfigSource, StaticArtifactsMaterializer,
};
use cfgsync_core::{BundleConfigSource, CfgsyncServerState, ConfigSource, serve_cfgsync};

use crate::config::{CfgsyncServerConfig, CfgsyncServingMode, RegistrationStoreConfig};
use crate::{Error, Result};

/// Loads `path` and serves it until SIGTERM or ctrl-c.
pub async fn serve_cfgsync_from_config(path: impl AsRef<Path>) -> Result<()> {
    let config = CfgsyncServerConfig::from_path(path)?;
    let state = build_server_state(&config).await?;
    Ok(serve_cfgsync(config.socket_addr(), state).await?)
}

/// The server state a config describes: its source (with the registration
/// store opened), limits and auth.
pub async fn build_server_state(config: &CfgsyncServerConfig) -> Result<CfgsyncServerState> {
    let source: Arc<dyn ConfigSource> = match &config.source {
        CfgsyncServingMode::Bundle { artifacts_path } => {
            Arc::new(BundleConfigSource::from_path(artifacts_path)?)
        }
        CfgsyncServingMode::Registration { artifacts_path } => {
            let materializer = StaticArtifactsMaterializer::from_path(artifacts_path)?;
            let store = open_registration_store(&config.registration_store).await?;
            Arc::new(MaterializingConfigSource::new(store, materializer))
        }
    };
    tracing::info!(
        source = ?config.source,
        registration_store = %config.registration_store,
        auth = config.auth.is_enabled(),
        "cfgsync config loaded"
    );
    Ok(CfgsyncServerState::builder(source)
        .with_limits(config.limits.clone())
        .with_auth(config.auth.clone())
        .build())
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
