//! Where package bytes live: `file://` or `s3://` through `object_store`.
//!
//! Upload streams the temp file in parts (memory bounded by part size x
//! concurrency) and never leaves a partial object at the final key: S3 multipart
//! uploads are aborted on failure, and the file store writes a temp file it
//! renames into place on completion. Each S3 upload is written down in
//! `DATA_DIR/uploads.redb` while open, so one left open by a killed process is
//! aborted by the next sync of its lablet.
//!
//! **SHA-256 bookkeeping.** On S3 the package's SHA-256 travels as user metadata
//! (`x-amz-meta-sha256`, [`object_store::Attribute::Metadata`]) and is read back with
//! a `HEAD`. The local file store cannot keep attributes, so it keeps a sidecar
//! `KEY.sha256` next to the object: removed *before* a new upload and written
//! (atomically) *after* it, so a sidecar never vouches for bytes it does not describe.
//! An upload is skipped when the stored object already carries the package's SHA-256.

mod bucket;
mod client;
mod error;
mod journal;
mod location;

pub use client::{PackageStore, UPLOAD_CHUNK_BYTES, UPLOAD_CONCURRENCY, UploadOutcome};
pub use error::StoreError;
pub use journal::OpenUpload;
pub use location::{StoreLocation, slug};
