//! [`MosaicClient`]: stream a package to a temp file while hashing it.

use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::http::TransportError;
use crate::retry::RetryPolicy;
use crate::store::{Feed, UPLOAD_CHUNK_BYTES, Upstream};

use super::kept::{Ranges, ZipScan};
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
    /// What Mosaic said about it (validators, announced length).
    pub(crate) upstream: Upstream,
    /// `Some`: only these ranges of the file were written (a download fed to
    /// an overlapped upload keeps what inspect reads, see `mosaic::kept`);
    /// read it through [`super::KeptFile`]. `None`: the whole package.
    pub(crate) kept: Option<std::sync::Arc<Ranges>>,
}

/// Where a download's bytes go besides the temp file: an upload fed as they
/// arrive. Whether it is fed at all is decided once, by `wants`, on the first
/// successful answer's headers; a retried attempt restarts the feed. The
/// channel closes when the download ends, after [`Feed::End`] only on success.
pub(crate) struct Tee<'a> {
    sender: mpsc::Sender<Feed>,
    wants: &'a (dyn Fn(&Upstream) -> bool + Send + Sync),
    chosen: std::sync::Mutex<Option<bool>>,
}

impl<'a> Tee<'a> {
    pub(crate) fn new(
        sender: mpsc::Sender<Feed>,
        wants: &'a (dyn Fn(&Upstream) -> bool + Send + Sync),
    ) -> Self {
        Self {
            sender,
            wants,
            chosen: std::sync::Mutex::new(None),
        }
    }

    /// Whether this attempt's bytes are fed (decided on the first answer).
    fn feeds(&self, upstream: &Upstream) -> bool {
        let mut chosen = match self.chosen.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        *chosen.get_or_insert_with(|| (self.wants)(upstream))
    }

    /// Sends `feed`; an upload that stopped listening (it failed and reports
    /// that itself) does not stop the download.
    async fn send(&self, feed: Feed) {
        let _ = self.sender.send(feed).await;
    }
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
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
    /// HTTP chunk size; a retry starts a fresh file. With a `tee`, the bytes
    /// also go to it as they arrive (see [`Tee`]); when it feeds and the
    /// package is larger than two upload parts with a known length, the file
    /// keeps only what inspect reads ([`DownloadedPackage::kept`], see
    /// `mosaic::kept`).
    pub(crate) async fn download(
        &self,
        url: &str,
        setting: &str,
        dir: &Path,
        on_bytes: &(dyn Fn(u64, Option<u64>) + Send + Sync),
        tee: Option<Tee<'_>>,
    ) -> Result<DownloadedPackage, DownloadError> {
        let tee = tee.as_ref();
        self.retry
            .run(
                "download",
                || self.attempt(url, setting, dir, on_bytes, tee),
                DownloadError::is_retryable,
            )
            .await
        // the tee dropped here: the upload's channel closes
    }

    async fn attempt(
        &self,
        url: &str,
        setting: &str,
        dir: &Path,
        on_bytes: &(dyn Fn(u64, Option<u64>) + Send + Sync),
        tee: Option<&Tee<'_>>,
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
        let upstream = Upstream {
            etag: header(&response, reqwest::header::ETAG),
            last_modified: header(&response, reqwest::header::LAST_MODIFIED),
            content_length: response.content_length(),
        };
        let tee = tee.filter(|t| t.feeds(&upstream));
        if let Some(tee) = tee {
            tee.send(Feed::Restart).await;
        }
        // fed to an upload, of a known length beyond one part: the file keeps
        // only what inspect reads (a package that fits in one part is
        // uploaded from the file after inspect, so it is written whole)
        let mut scan = match (tee, upstream.content_length) {
            (Some(_), Some(len)) if len > 2 * UPLOAD_CHUNK_BYTES as u64 => Some(ZipScan::new(len)),
            _ => None,
        };
        let mut file_pos: u64 = 0;

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
            match scan.as_mut() {
                None => file.write_all(&chunk).await.map_err(temp_err)?,
                Some(scan) => {
                    for (at, range) in scan.next(&chunk) {
                        if at != file_pos {
                            file.seek(std::io::SeekFrom::Start(at))
                                .await
                                .map_err(temp_err)?;
                        }
                        file.write_all(&chunk[range.clone()])
                            .await
                            .map_err(temp_err)?;
                        file_pos = at + range.len() as u64;
                    }
                }
            }
            if let Some(tee) = tee {
                tee.send(Feed::Chunk(chunk)).await;
            }
            on_bytes(size, total);
        }
        // No fsync: the temp file is read back at once from the page cache and
        // deleted after the sync; a crash loses nothing that a re-run would not
        // download again. (Syncing it cost seconds per GiB, see dev/bench-lablet.)
        file.flush().await.map_err(temp_err)?;
        if scan.is_some() {
            file.set_len(size).await.map_err(temp_err)?;
        }
        if let Some(tee) = tee {
            tee.send(Feed::End).await;
        }
        Ok(DownloadedPackage {
            path,
            sha256: hex::encode(hasher.finalize()),
            size,
            upstream,
            kept: scan.map(|s| std::sync::Arc::new(s.kept().clone())),
        })
    }
}
