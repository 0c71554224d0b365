//! Mosaic: download the content package, streamed to a temp file while hashed
//! (stage `download`).

mod client;
mod config;
mod error;
mod kept;

pub(crate) use client::{DownloadedPackage, MosaicClient, Tee};
pub use config::{DEFAULT_DOWNLOAD_URL, MosaicConfig};
pub use error::DownloadError;
pub(crate) use kept::KeptFile;
