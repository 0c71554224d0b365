//! Files to deliver to a node: `ArtifactFile`, `ArtifactSet` and their digest.
#![doc = include_str!("../README.md")]

mod error;
mod file;
mod set;

pub use error::{Error, Result};
pub use file::{ArtifactEncoding, ArtifactFile};
pub use set::{ArtifactDigest, ArtifactSet};
