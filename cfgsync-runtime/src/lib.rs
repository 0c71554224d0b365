#![doc = include_str!("../README.md")]

pub mod config;
mod error;
mod server;

pub use config::{CfgsyncServerConfig, CfgsyncServingMode, RegistrationStoreConfig};
pub use error::{Error, Result};
pub use server::{
    build_server_state, open_registration_store, serve_cfgsync_from_config, serve_snapshot_cfgsync,
};
