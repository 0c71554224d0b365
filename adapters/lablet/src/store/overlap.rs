//! [`OverlappedUpload`]: an S3 multipart upload fed with the package's bytes as
//! the download receives them, completed only once inspect accepted the package.
//!
//! The download sends [`Feed`] messages through a bounded channel; the upload
//! gathers chunks into [`UPLOAD_CHUNK_BYTES`] parts and keeps at most
//! [`UPLOAD_CONCURRENCY`] of them in flight, so a slow store slows the download
//! down instead of growing memory. The multipart upload is created with the
//! first full part (or at the end, for a small package), written down in the
//! upload journal while open, and aborted on every way out that is not
//! [`OverlappedUpload::complete`]: a failed part, a download that ends without
//! [`Feed::End`] (failed or cancelled), [`OverlappedUpload::abort`] (inspect
//! refused the package), or the value dropped (the sync cancelled; best effort,
//! the journal covers a killed process). Nothing is visible at the key before
//! the completion.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, MultipartId, PutMultipartOptions, PutPayload,
};
use tokio::sync::mpsc;

use super::journal::{OpenUpload, UploadJournal};
use super::sidecar::{self, Sidecar};
use super::{
    SHA256_METADATA, SHA256_SIDECAR_MARKER, StoreError, StoreLocation, UPLOAD_CHUNK_BYTES,
    UPLOAD_CONCURRENCY, Upstream, os_err,
};

/// Chunks the channel from the download holds at most. Few: a chunk's `Bytes`
/// may keep a receive buffer of hundreds of KiB alive until it is copied into
/// its part (64 queued chunks cost the sync ~20 MiB of peak RSS at 1 GiB).
pub(crate) const FEED_CHUNKS: usize = 8;

/// What the download tells the upload.
#[derive(Debug)]
pub(crate) enum Feed {
    /// A download attempt starts (again): forget everything received so far.
    Restart,
    /// The next bytes of the package.
    Chunk(Bytes),
    /// The download completed: send the last part.
    End,
}

/// One part being sent, on its own task (so signing and sending a part use the
/// other core while the download hashes and writes): its index and the
/// store's answer. Dropping it stops the send.
struct PartTask {
    idx: usize,
    task: tokio::task::JoinHandle<object_store::Result<PartId>>,
}

impl Future for PartTask {
    type Output = (usize, object_store::Result<PartId>);

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let idx = self.idx;
        std::pin::Pin::new(&mut self.task).poll(cx).map(|joined| {
            let sent =
                joined.unwrap_or_else(|source| Err(object_store::Error::JoinError { source }));
            (idx, sent)
        })
    }
}

impl Drop for PartTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An S3 multipart upload fed while the download runs; see the module docs.
pub(crate) struct OverlappedUpload {
    store: Arc<AmazonS3>,
    journal: UploadJournal,
    lablet: String,
    loc: StoreLocation,
    path: Path,
    /// The open multipart upload, once created.
    open: Option<MultipartId>,
    /// Every part sent, in order, once [`Feed::End`] arrived and all landed.
    parts: Option<Vec<PartId>>,
    total: u64,
}

impl std::fmt::Debug for OverlappedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverlappedUpload")
            .field("url", &self.loc.url)
            .field("open", &self.open)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

impl OverlappedUpload {
    pub(super) fn new(
        store: Arc<AmazonS3>,
        journal: UploadJournal,
        lablet: &str,
        loc: &StoreLocation,
    ) -> Self {
        Self {
            store,
            journal,
            lablet: lablet.to_owned(),
            path: Path::from(loc.key.as_str()),
            loc: loc.clone(),
            open: None,
            parts: None,
            total: 0,
        }
    }

    /// Where it goes.
    pub(crate) fn location(&self) -> &StoreLocation {
        &self.loc
    }

    /// Whether every byte of a completed download has landed in parts, so the
    /// upload can be completed.
    pub(crate) fn is_ready(&self) -> bool {
        self.open.is_some() && self.parts.is_some()
    }

    /// Takes what the download sends until it ends, uploading parts as they
    /// fill, telling `on_bytes(sent)` as parts are handed to the store. Returns
    /// `Ok` when the download ended, successfully (then [`is_ready`](Self::is_ready)
    /// unless the package fit in one part, which the store stage uploads from
    /// the temp file after inspect) or not (then the upload is aborted), or
    /// declined to feed at all. On a
    /// store error the upload is aborted, the rest of the download is drained
    /// (the download goes on into its temp file) and the error returned.
    pub(crate) async fn feed(
        &mut self,
        mut rx: mpsc::Receiver<Feed>,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        let sent = self.feed_parts(&mut rx, on_bytes).await;
        match sent {
            Ok(true) => Ok(()),
            Ok(false) => {
                self.abort().await;
                Ok(())
            }
            Err(e) => {
                self.abort().await;
                while rx.recv().await.is_some() {}
                Err(e)
            }
        }
    }

    /// The loop of [`feed`](Self::feed); `Ok(true)` once [`Feed::End`] arrived and
    /// every part landed, `Ok(false)` when the download stopped without it.
    async fn feed_parts(
        &mut self,
        rx: &mut mpsc::Receiver<Feed>,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<bool, StoreError> {
        let url = self.loc.url.clone();
        let mut in_flight: FuturesUnordered<PartTask> = FuturesUnordered::new();
        let mut parts: Vec<Option<PartId>> = Vec::new();
        // the part being filled: chunks are copied in, so a part holds exactly
        // its bytes (a chunk's `Bytes` may keep a larger receive buffer alive)
        let mut pending = BytesMut::with_capacity(UPLOAD_CHUNK_BYTES);
        self.total = 0;
        loop {
            let busy = !in_flight.is_empty();
            let room = in_flight.len() < UPLOAD_CONCURRENCY;
            tokio::select! {
                Some((idx, landed)) = in_flight.next(), if busy => {
                    let id = landed.map_err(os_err("upload part", &url))?;
                    if let Some(slot) = parts.get_mut(idx) {
                        *slot = Some(id);
                    }
                }
                msg = rx.recv(), if room => match msg {
                    None => return Ok(false),
                    Some(Feed::Restart) => {
                        in_flight = FuturesUnordered::new();
                        parts.clear();
                        pending.clear();
                        self.total = 0;
                    }
                    Some(Feed::Chunk(mut chunk)) => {
                        while !chunk.is_empty() {
                            let free = UPLOAD_CHUNK_BYTES - pending.len();
                            let take = chunk.split_to(free.min(chunk.len()));
                            pending.extend_from_slice(&take);
                            if pending.len() == UPLOAD_CHUNK_BYTES {
                                let part = pending.split().freeze();
                                pending.reserve(UPLOAD_CHUNK_BYTES);
                                let sending = self.send_part(&mut parts, part).await?;
                                in_flight.push(sending);
                                on_bytes(self.total);
                            }
                        }
                    }
                    Some(Feed::End) => {
                        // all of it fits in one part: nothing gained by sending
                        // it before inspect, so the store stage uploads it
                        if parts.is_empty() {
                            return Ok(false);
                        }
                        tracing::debug!(
                            parts = parts.len(),
                            in_flight = in_flight.len(),
                            "download ended; sending the last part"
                        );
                        let started = std::time::Instant::now();
                        if !pending.is_empty() {
                            let part = pending.split().freeze();
                            let sending = self.send_part(&mut parts, part).await?;
                            in_flight.push(sending);
                            on_bytes(self.total);
                        }
                        while let Some((idx, landed)) = in_flight.next().await {
                            let id = landed.map_err(os_err("upload part", &url))?;
                            if let Some(slot) = parts.get_mut(idx) {
                                *slot = Some(id);
                            }
                        }
                        tracing::debug!(
                            ms = started.elapsed().as_millis(),
                            "every part landed"
                        );
                        let parts = parts.into_iter().collect::<Option<Vec<_>>>().ok_or_else(
                            || StoreError::Config(format!("upload of {url}: a part went missing")),
                        )?;
                        self.parts = Some(parts);
                        return Ok(true);
                    }
                },
            }
        }
    }

    /// The future sending `part` as the next part, creating the upload first
    /// when this is its first part.
    async fn send_part(
        &mut self,
        parts: &mut Vec<Option<PartId>>,
        part: Bytes,
    ) -> Result<PartTask, StoreError> {
        let upload_id = self.ensure_open().await?;
        let idx = parts.len();
        parts.push(None);
        self.total += part.len() as u64;
        let store = Arc::clone(&self.store);
        let path = self.path.clone();
        let task = tokio::spawn(async move {
            store
                .put_part(&path, &upload_id, idx, PutPayload::from(part))
                .await
        });
        Ok(PartTask { idx, task })
    }

    /// The upload id, creating the upload (and its journal entry) on first use.
    /// Its metadata `sha256` says "sidecar": the digest is not known yet, and a
    /// value is set so no server keeps an older object's digest on the new one.
    async fn ensure_open(&mut self) -> Result<MultipartId, StoreError> {
        if let Some(id) = &self.open {
            return Ok(id.clone());
        }
        let url = self.loc.url.as_str();
        let attributes = Attributes::from_iter([(
            Attribute::Metadata(SHA256_METADATA.into()),
            AttributeValue::from(SHA256_SIDECAR_MARKER),
        )]);
        let upload_id = self
            .store
            .create_multipart_opts(&self.path, PutMultipartOptions::from(attributes))
            .await
            .map_err(os_err("upload", url))?;
        let entry = OpenUpload {
            lablet: self.lablet.clone(),
            bucket: self.loc.bucket.clone(),
            key: self.loc.key.clone(),
            upload_id: upload_id.clone(),
        };
        if let Err(e) = self.journal.add(&entry).await {
            let _ = self.store.abort_multipart(&self.path, &upload_id).await;
            return Err(e);
        }
        self.open = Some(upload_id.clone());
        Ok(upload_id)
    }

    /// Completes the upload (the object appears at the key), then writes the
    /// sidecar naming `sha256` and `upstream`; returns the bytes uploaded. A
    /// sidecar that cannot be written only costs the next sync its skip (the
    /// object then has no digest it can trust), so it is logged, not failed.
    pub(crate) async fn complete(
        mut self,
        sha256: &str,
        upstream: &Upstream,
    ) -> Result<u64, StoreError> {
        let url = self.loc.url.clone();
        let (Some(upload_id), Some(parts)) = (self.open.clone(), self.parts.take()) else {
            return Err(StoreError::Config(format!(
                "upload of {url} completed before all its parts were sent"
            )));
        };
        let started = std::time::Instant::now();
        let completed = self
            .store
            .complete_multipart(&self.path, &upload_id, parts)
            .await
            .map_err(os_err("complete upload", &url));
        tracing::debug!(
            ms = started.elapsed().as_millis(),
            "multipart upload completed"
        );
        if let Err(e) = completed {
            self.abort().await;
            return Err(e);
        }
        self.open = None;
        if let Err(e) = self.journal.remove(&upload_id).await {
            tracing::warn!(error = %e, upload_id, "cannot strike a finished upload off the journal");
        }
        let size = self.total;
        let started = std::time::Instant::now();
        let sidecar = write_sidecar(self.store.as_ref(), &self.loc, sha256, size, upstream).await;
        tracing::debug!(ms = started.elapsed().as_millis(), "sidecar written");
        if let Err(e) = sidecar {
            tracing::warn!(error = %e, url, "stored the package but not its sidecar; the next sync uploads it again");
        }
        Ok(size)
    }

    /// Aborts the upload when one is open and strikes it off the journal; an
    /// abort that fails leaves the entry for the next sync of this lablet.
    pub(crate) async fn abort(&mut self) {
        if let Some(upload_id) = self.open.take() {
            abort_and_forget(&self.store, &self.journal, &self.path, &upload_id).await;
        }
    }
}

impl Drop for OverlappedUpload {
    /// Cancelled mid-way (the sync's future dropped): abort on the runtime.
    fn drop(&mut self) {
        let Some(upload_id) = self.open.take() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            let journal = self.journal.clone();
            let path = self.path.clone();
            rt.spawn(async move { abort_and_forget(&store, &journal, &path, &upload_id).await });
        }
    }
}

async fn abort_and_forget(
    store: &AmazonS3,
    journal: &UploadJournal,
    path: &Path,
    upload_id: &MultipartId,
) {
    if let Err(e) = store.abort_multipart(path, upload_id).await {
        tracing::warn!(error = %e, upload_id, "cannot abort the upload; the next sync of this lablet retries");
        return;
    }
    if let Err(e) = journal.remove(upload_id).await {
        tracing::warn!(error = %e, upload_id, "cannot strike an aborted upload off the journal");
    }
}

/// Writes the sidecar of the object just stored at `loc`: its ETag is read
/// back with a `HEAD`, so the sidecar names exactly the object it describes.
pub(super) async fn write_sidecar(
    store: &AmazonS3,
    loc: &StoreLocation,
    sha256: &str,
    size: u64,
    upstream: &Upstream,
) -> Result<(), StoreError> {
    let head = object_store::ObjectStoreExt::head(store, &Path::from(loc.key.as_str()))
        .await
        .map_err(os_err("head", &loc.url))?;
    let Some(object_etag) = head.e_tag else {
        return Err(StoreError::Config(format!(
            "{} has no ETag: its sidecar could not name it",
            loc.url
        )));
    };
    let side = Sidecar {
        sha256: sha256.to_owned(),
        size: head.size,
        object_etag,
        upstream_etag: upstream.etag.clone(),
        upstream_last_modified: upstream.last_modified.clone(),
    };
    if side.size != size {
        return Err(StoreError::Config(format!(
            "{} holds {} bytes where {size} were uploaded",
            loc.url, side.size
        )));
    }
    sidecar::write(store, &loc.key, &loc.url, &side).await
}
