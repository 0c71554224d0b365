//! Operational wiring for cfgsync: the node client (register, wait, write) and
//! the server from a config file.
#![doc = include_str!("../README.md")]

pub mod config;
mod env;
mod error;
mod fetch;
#[cfg(feature = "cli")]
pub mod logging;
mod output;
pub mod reload;
mod server;
pub mod settings;

pub use config::{
    CfgsyncServerConfig, CfgsyncServingMode, CompactionTrigger, RegistrationLogConfig,
    RegistrationStoreConfig, SERVER_SETTINGS,
};
pub use env::{
    CLIENT_SETTINGS, ClientEnv, DEFAULT_HOST_IP, DEFAULT_OUTPUT_ROOT, DEFAULT_SERVER_ADDR,
    DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS, run_cfgsync_client_from_env,
};
pub use error::{Error, Result, Step};
pub use fetch::{
    ClientOptions, DEFAULT_LONG_POLL, DEFAULT_MAX_ATTEMPTS, DEFAULT_PROGRESS_INTERVAL,
    DEFAULT_TIMEOUT, fetch_and_write_artifacts, fetch_and_write_artifacts_with,
    register_and_fetch_artifacts, register_and_fetch_artifacts_with,
};
pub use output::{ArtifactOutputMap, FORBIDDEN_MODE_BITS, GROUP_WORLD_WRITE_BITS, WrittenFile};
pub use reload::{FileKind, FileReloader, ReloadConfig, ReloadableSource, load_reloadable};
pub use server::{
    ConfiguredServer, build_server, build_server_state, check_config, open_registration_store,
    open_registration_store_with, serve_cfgsync_from_config, serve_snapshot_cfgsync,
};
