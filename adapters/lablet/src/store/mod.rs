//! Where package bytes live (stage `store`): [`PackageStore`] over one backend,
//! `file://` (`file.rs`) or `s3://` (`s3.rs`), each behind the crate-private
//! `StoreBackend` trait.
//!
//! Upload streams the temp file in parts (memory bounded by part size x
//! concurrency) and never leaves a partial object at the final key: S3 multipart
//! uploads are aborted on failure, and the file store writes a temp file it
//! renames into place on completion. Each S3 upload is written down in
//! `DATA_DIR/uploads.redb` while open, so one left open by a killed process is
//! aborted by the next sync of its lablet.
//!
//! **SHA-256 bookkeeping.** On S3 the package's SHA-256 lives in a sidecar object
//! `KEY.sha256.json` (`sidecar.rs`) written after the object completed and naming
//! the object's ETag, so it vouches only for the object it was written for; an
//! upload fed during the download (`OverlappedUpload`, `overlap.rs`) cannot put
//! the digest in the object's metadata, which S3 fixes when the upload is
//! created. Objects stored by older versions carry it as user metadata
//! (`x-amz-meta-sha256`), still read when no sidecar describes the object. The
//! local file store keeps a plain-text sidecar `KEY.sha256` next to the object:
//! removed *before* a new upload and written (atomically) *after* it, so a
//! sidecar never vouches for bytes it does not describe. An upload is skipped
//! when the stored object already carries the package's SHA-256.

mod bucket;
mod config;
mod error;
mod file;
mod journal;
mod location;
mod overlap;
mod parts;
mod s3;
mod shared;
mod sidecar;

use std::collections::BTreeMap;
use std::path::Path as FsPath;

use async_trait::async_trait;

use crate::config::LabletSyncConfig;
use crate::template;

pub use config::{BUCKET_PER_LABLET_LOCATION, DEFAULT_LOCATION, S3Options, StoreConfig};
pub use error::StoreError;
pub use location::{StoreLocation, slug};
pub(crate) use overlap::{FEED_CHUNKS, Feed, OverlappedUpload};
pub(crate) use shared::SharedArea;
pub use sidecar::SIDECAR_SUFFIX;

/// Multipart part size of an upload: memory per upload is about
/// `UPLOAD_CHUNK_BYTES * (UPLOAD_CONCURRENCY + 2)` (parts in flight, one being
/// filled, one being read).
pub const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 2;
/// Metadata key carrying the package SHA-256 on S3 (objects uploaded whole).
pub const SHA256_METADATA: &str = "sha256";
/// The value of [`SHA256_METADATA`] on an object uploaded during its download:
/// its digest is in the sidecar ([`SIDECAR_SUFFIX`]).
pub const SHA256_SIDECAR_MARKER: &str = "sidecar";

/// What Mosaic said about a package it sent: the validators kept in the
/// sidecar, and the length it announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Upstream {
    /// The response's `ETag`.
    pub(crate) etag: Option<String>,
    /// The response's `Last-Modified`.
    pub(crate) last_modified: Option<String>,
    /// The response's `Content-Length`.
    pub(crate) content_length: Option<u64>,
}

/// What the store holds at a location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredObject {
    /// Object size.
    pub(crate) size: u64,
    /// Its SHA-256 when the store knows it.
    pub(crate) sha256: Option<String>,
    /// The upstream `ETag` of the package it was stored from, when known.
    pub(crate) upstream_etag: Option<String>,
}

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOutcome {
    /// `false` when skipped because the stored object already had this SHA-256.
    pub uploaded: bool,
    /// Bytes sent (0 when skipped).
    pub bytes: u64,
}

/// One upload handed to a backend.
pub(crate) struct Upload<'a> {
    /// The lablet whose package it is.
    lablet: &'a str,
    /// Where it goes.
    loc: &'a StoreLocation,
    /// The package file.
    file: &'a FsPath,
    /// Its SHA-256, stored with the object.
    sha256: &'a str,
    /// What Mosaic said about it (kept in the S3 sidecar).
    upstream: &'a Upstream,
    /// Told the bytes handed to the store so far.
    on_bytes: &'a (dyn Fn(u64) + Send + Sync),
}

/// What a store scheme implements; [`PackageStore`] adds the location template
/// and the skip of an upload whose bytes are stored already.
#[async_trait]
pub(crate) trait StoreBackend: Send + Sync + std::fmt::Debug {
    /// The bucket `{bucket}` renders to.
    fn bucket(&self) -> &str;

    /// The location of `key` in `bucket` (rendered from `template`), refused when
    /// this scheme does not support the layout.
    fn locate(&self, template: &str, bucket: &str, key: &str) -> Result<StoreLocation, StoreError>;

    /// What is stored at `loc`, `None` without object.
    async fn stored(&self, loc: &StoreLocation) -> Result<Option<StoredObject>, StoreError>;

    /// Stores the upload's file at its location, carrying its SHA-256; returns
    /// the bytes sent. Never leaves a partial object at the location.
    async fn put(&self, upload: Upload<'_>) -> Result<u64, StoreError>;

    /// Aborts the uploads of `lablet` a killed process left open; returns how
    /// many.
    async fn abort_abandoned_uploads(&self, lablet: &str) -> Result<usize, StoreError>;

    /// An upload of `lablet`'s package to `loc` fed while it downloads (the
    /// bucket created first when missing); `None` when this scheme stores whole
    /// files only.
    async fn overlapped(
        &self,
        _lablet: &str,
        _loc: &StoreLocation,
    ) -> Result<Option<OverlappedUpload>, StoreError> {
        Ok(None)
    }
}

/// The package store: a `file://` directory or S3 buckets.
pub struct PackageStore {
    backend: Box<dyn StoreBackend>,
    shared: SharedArea,
}

impl std::fmt::Debug for PackageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.backend.fmt(f)
    }
}

pub(crate) fn os_err(
    operation: &'static str,
    location: &str,
) -> impl FnOnce(object_store::Error) -> StoreError {
    let location = location.to_owned();
    move |source| StoreError::ObjectStore {
        operation,
        location,
        source: Box::new(source),
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

impl PackageStore {
    /// Open the store named by [`LabletSyncConfig::store_url`], its S3 settings
    /// from the store part, timeouts and retries from the HTTP part.
    pub fn from_config(
        config: &LabletSyncConfig,
        http: reqwest::Client,
    ) -> Result<Self, StoreError> {
        let url = config.store_url();
        let (backend, shared): (Box<dyn StoreBackend>, _) =
            if let Some(dir) = url.strip_prefix("file://") {
                let backend = file::FileBackend::open(FsPath::new(dir), &url)?;
                let shared = SharedArea::new(backend.object_store(), "", &url, false);
                (Box::new(backend), shared)
            } else if url.starts_with("s3://") {
                let journal = config.data_dir.join("uploads.redb");
                let backend =
                    s3::S3Backend::open(&url, &config.store.s3, &config.http, &journal, http)?;
                let (store, prefix) = backend.state_store()?;
                let shared = SharedArea::new(store, prefix, &url, true);
                (Box::new(backend), shared)
            } else {
                return Err(StoreError::Config(format!(
                    "store URL {url:?} must start with file:// or s3://"
                )));
            };
        Ok(Self { backend, shared })
    }

    /// The state kept in the store beside the packages.
    pub(crate) fn shared(&self) -> &SharedArea {
        &self.shared
    }

    /// The **storage key** of lablet `name`: its location with `{sha256}`
    /// left unrendered (a content-addressed template gives each lablet a
    /// family of keys; the family is the unit). Two names with one storage
    /// key would write the same objects: it is the unit of locking and
    /// uniqueness. It depends only on the name and the template, never on
    /// resolved variables, so it is known before anything is downloaded.
    pub fn storage_key(&self, template_str: &str, name: &str) -> Result<StoreLocation, StoreError> {
        self.location_for(template_str, name, Some("{sha256}"))
    }

    /// Render the location template for `name` (`{bucket}`, `{name}`, `{slug}`).
    pub fn location(&self, template_str: &str, name: &str) -> Result<StoreLocation, StoreError> {
        self.location_for(template_str, name, None)
    }

    /// As [`location`](Self::location), with `{sha256}` (the package's hash) too when
    /// given: a content-addressed key, so a re-sync never overwrites the bytes an
    /// older record points at.
    pub fn location_for(
        &self,
        template_str: &str,
        name: &str,
        sha256: Option<&str>,
    ) -> Result<StoreLocation, StoreError> {
        let mut vars = BTreeMap::from([
            ("bucket".to_owned(), self.backend.bucket().to_owned()),
            ("name".to_owned(), name.to_owned()),
            ("slug".to_owned(), slug(name)),
        ]);
        if let Some(sha256) = sha256 {
            vars.insert("sha256".to_owned(), sha256.to_owned());
        }
        let rendered =
            template::render(template_str, &vars).map_err(|e| StoreError::Config(e.to_string()))?;
        let Some((bucket, key)) = rendered.split_once('/') else {
            return Err(StoreError::Config(format!(
                "location {rendered:?} must be BUCKET/KEY"
            )));
        };
        if key.is_empty()
            || key
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(StoreError::Config(format!(
                "location {rendered:?} has an invalid key"
            )));
        }
        self.backend.locate(template_str, bucket, key)
    }

    /// The SHA-256 the stored object carries, `None` when there is no object (or it
    /// carries none).
    pub async fn stored_sha256(&self, loc: &StoreLocation) -> Result<Option<String>, StoreError> {
        Ok(self.backend.stored(loc).await?.and_then(|o| o.sha256))
    }

    /// What is stored at `loc`, `None` without object.
    pub(crate) async fn stored(
        &self,
        loc: &StoreLocation,
    ) -> Result<Option<StoredObject>, StoreError> {
        self.backend.stored(loc).await
    }

    /// An upload to `loc` fed while the package downloads, `None` for `file://`.
    pub(crate) async fn overlapped(
        &self,
        lablet: &str,
        loc: &StoreLocation,
    ) -> Result<Option<OverlappedUpload>, StoreError> {
        self.backend.overlapped(lablet, loc).await
    }

    /// Upload `file` (the package of `lablet`) to `loc` unless the stored object
    /// already carries `sha256`.
    pub async fn upload(
        &self,
        lablet: &str,
        loc: &StoreLocation,
        file: &FsPath,
        sha256: &str,
    ) -> Result<UploadOutcome, StoreError> {
        self.upload_observed(lablet, loc, file, sha256, &Upstream::default(), &|_| {})
            .await
    }

    /// As [`upload`](Self::upload), keeping `upstream` in the sidecar and telling
    /// `on_bytes(done)` as parts are handed to the store.
    pub(crate) async fn upload_observed(
        &self,
        lablet: &str,
        loc: &StoreLocation,
        file: &FsPath,
        sha256: &str,
        upstream: &Upstream,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<UploadOutcome, StoreError> {
        if self.stored_sha256(loc).await?.as_deref() == Some(sha256) {
            return Ok(UploadOutcome {
                uploaded: false,
                bytes: 0,
            });
        }
        let upload = Upload {
            lablet,
            loc,
            file,
            sha256,
            upstream,
            on_bytes,
        };
        let bytes = self.backend.put(upload).await?;
        Ok(UploadOutcome {
            uploaded: true,
            bytes,
        })
    }

    /// Aborts the S3 multipart uploads of `lablet` that a process killed
    /// mid-upload left open (recorded in `DATA_DIR/uploads.redb`); returns how
    /// many. Call it holding the lablet's lock, as the pipeline does before
    /// each upload. A no-op for `file://` stores.
    pub async fn abort_abandoned_uploads(&self, lablet: &str) -> Result<usize, StoreError> {
        self.backend.abort_abandoned_uploads(lablet).await
    }
}
