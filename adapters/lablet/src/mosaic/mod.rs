//! Mosaic: download the content package, streamed to a temp file while hashed.

mod client;
mod error;

pub use client::{DownloadedPackage, MosaicClient};
pub use error::DownloadError;
