//! The form-environment-resolver: lablet name -> environment variables.

mod client;
mod error;

pub use client::{ResolvedVars, ResolverClient};
pub use error::ResolveError;
