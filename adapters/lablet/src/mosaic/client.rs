//! [`MosaicClient`]: stream a package to a temp file while hashing it.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::http::TransportError;
use crate::retry::RetryPolicy;

use super::{DownloadError, MosaicConfig};

/// A downloaded package: a temp file (deleted on drop), its SHA-256 and size.
#[derive(Debug)]
pub(crate) struct DownloadedPackage {
    /// The temp file; removed when this value is dropped.
    pub(crate) path: tempfile::TempPath,
    /// SHA-256 (lower-case hex) of the whole file.
    pub(crate) sha256: String,
    /// Size in bytes.
    pub(crate) size: u64,
}

/// Client of Mosaic's package download.
#[derive(Debug, Clone)]
pub(crate) struct MosaicClient {
    http: reqwest::Client,
    retry: RetryPolicy,
    max_bytes: u64,
}

impl MosaicClient {
    /// A client accepting packages up to the part's `max_package_bytes`.
    pub(crate) fn new(http: reqwest::Client, config: &MosaicConfig, retry: RetryPolicy) -> Self {
        Self {
            http,
            retry,
            max_bytes: config.max_package_bytes,
        }
    }

    /// `GET url` (whose address comes from `setting`), streaming the body into a temp file in `dir` while hashing it,
    /// telling `on_bytes(done, total)` after every chunk (`total` from
    /// `Content-Length` when the server sends it). Memory use is bounded by the
    /// HTTP chunk size; a retry starts a fresh file.
    pub(crate) async fn download(
        &self,
        url: &str,
        setting: &str,
        dir: &Path,
        on_bytes: &(dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> Result<DownloadedPackage, DownloadError> {
        self.retry
            .run(
                "download",
                || self.attempt(url, setting, dir, on_bytes),
                DownloadError::is_retryable,
            )
            .await
    }

    async fn attempt(
        &self,
        url: &str,
        setting: &str,
        dir: &Path,
        on_bytes: &(dyn Fn(u64, Option<u64>) + Send + Sync),
    ) -> Result<DownloadedPackage, DownloadError> {
        let temp_err = |source| DownloadError::TempFile {
            dir: dir.display().to_string(),
            source,
        };
        let request_err =
            |source| DownloadError::Request(TransportError::new(url, setting, source));
        let response = self.http.get(url).send().await.map_err(request_err)?;
        let status = response.status();
        if !status.is_success() {
            return Err(DownloadError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let too_large = || DownloadError::TooLarge {
            url: url.to_owned(),
            limit: self.max_bytes,
        };
        if response
            .content_length()
            .is_some_and(|len| len > self.max_bytes)
        {
            return Err(too_large());
        }

        let dir_owned: PathBuf = dir.to_path_buf();
        let named = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&dir_owned)?;
            tempfile::Builder::new()
                .prefix("package-")
                .suffix(".zip.part")
                .tempfile_in(&dir_owned)
        })
        .await
        .map_err(|e| temp_err(std::io::Error::other(e)))?
        .map_err(temp_err)?;
        let (std_file, path) = named.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);

        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let total = response.content_length();
        on_bytes(0, total);
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(request_err)?;
            size = size.saturating_add(chunk.len() as u64);
            if size > self.max_bytes {
                return Err(too_large());
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(temp_err)?;
            on_bytes(size, total);
        }
        // No fsync: the temp file is read back at once from the page cache and
        // deleted after the sync; a crash loses nothing that a re-run would not
        // download again. (Syncing it cost seconds per GiB, see dev/bench-lablet.)
        file.flush().await.map_err(temp_err)?;
        Ok(DownloadedPackage {
            path,
            sha256: hex::encode(hasher.finalize()),
            size,
        })
    }
}
