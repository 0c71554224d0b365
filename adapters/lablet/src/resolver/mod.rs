//! The form-environment-resolver: lablet name -> environment variables
//! (stage `resolve`).

mod client;
mod config;
mod error;

pub(crate) use client::ResolverClient;
pub use config::{DEFAULT_RESOLVE_URL, ResolverConfig};
pub use error::ResolveError;
