#![doc = include_str!("../README.md")]

pub mod config;
mod http;
pub mod inspect;
pub mod mosaic;
pub mod resolver;
pub mod retry;
mod secret;
pub mod store;
pub mod template;

pub use config::LabletSyncConfig;
pub use secret::Secret;
