use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::{Arc, Mutex};

use futures::stream::{FuturesUnordered, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientConfigKey, GetOptions, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, RetryConfig, WriteMultipart,
};

use crate::config::LabletSyncConfig;
use crate::template;

use super::bucket::create_bucket;
use super::journal::{OpenUpload, UploadJournal};
use super::location::validate_bucket;
use super::{StoreError, StoreLocation};

/// Multipart part size of an upload: memory per upload is about
/// `UPLOAD_CHUNK_BYTES * (UPLOAD_CONCURRENCY + 2)` (parts in flight, one being
/// filled, one being read).
pub const UPLOAD_CHUNK_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one upload in flight at once.
pub const UPLOAD_CONCURRENCY: usize = 2;
/// Metadata key carrying the package SHA-256 on S3.
pub const SHA256_METADATA: &str = "sha256";

/// What an upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadOutcome {
    /// `false` when skipped because the stored object already had this SHA-256.
    pub uploaded: bool,
    /// Bytes sent (0 when skipped).
    pub bytes: u64,
}

/// The package store: a `file://` directory or S3 buckets.
pub struct PackageStore {
    inner: Inner,
}

enum Inner {
    File {
        dir: PathBuf,
        bucket: String,
        store: Arc<LocalFileSystem>,
    },
    S3(Box<S3Store>),
}

struct S3Store {
    builder: AmazonS3Builder,
    bucket: String,
    prefix: String,
    endpoint: String,
    region: String,
    http: reqwest::Client,
    stores: Mutex<HashMap<String, Arc<AmazonS3>>>,
    ready_buckets: tokio::sync::Mutex<HashSet<String>>,
    journal: UploadJournal,
}

impl std::fmt::Debug for PackageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::File { dir, .. } => f.debug_struct("PackageStore").field("file", &dir).finish(),
            Inner::S3(s3) => f
                .debug_struct("PackageStore")
                .field("s3_bucket", &s3.bucket)
                .field("prefix", &s3.prefix)
                .field("endpoint", &s3.endpoint)
                .finish_non_exhaustive(),
        }
    }
}

fn os_err(
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

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

impl PackageStore {
    /// Open the store named by [`LabletSyncConfig::store_url`].
    pub fn from_config(
        config: &LabletSyncConfig,
        http: reqwest::Client,
    ) -> Result<Self, StoreError> {
        let url = config.store_url();
        if let Some(dir) = url.strip_prefix("file://") {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir)
                .map_err(io_err(format!("create store dir {}", dir.display())))?;
            let dir = dir
                .canonicalize()
                .map_err(io_err(format!("resolve store dir {}", dir.display())))?;
            let bucket = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "store".to_owned());
            let store = LocalFileSystem::new_with_prefix(&dir).map_err(os_err("open", &url))?;
            return Ok(Self {
                inner: Inner::File {
                    dir,
                    bucket,
                    store: Arc::new(store),
                },
            });
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(StoreError::Config(format!(
                "store URL {url:?} must start with file:// or s3://"
            )));
        };
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b.to_owned(), p.trim_matches('/').to_owned()),
            None => (rest.to_owned(), String::new()),
        };
        if bucket.is_empty() {
            return Err(StoreError::Config(format!(
                "store URL {url:?} names no bucket"
            )));
        }
        let mut builder = AmazonS3Builder::from_env();
        let o = &config.s3;
        if let Some(v) = &o.endpoint {
            builder = builder.with_endpoint(v);
        }
        if let Some(v) = &o.region {
            builder = builder.with_region(v);
        }
        if let Some(v) = &o.access_key_id {
            builder = builder.with_access_key_id(v);
        }
        if let Some(v) = &o.secret_access_key {
            builder = builder.with_secret_access_key(v.expose());
        }
        // the configured timeouts and retries bound S3 calls as they bound every other
        // call (object_store's own defaults retry for up to 3 minutes)
        let secs = |s: u64| format!("{}s", s.max(1));
        builder = builder
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                secs(config.connect_timeout_secs),
            )
            .with_config(
                AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout),
                secs(config.read_timeout_secs),
            )
            .with_retry(s3_retry(&config.retry));
        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder.with_region(&region);
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let loopback = url::Url::parse(&endpoint)
            .ok()
            .is_some_and(|u| match u.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(d)) => d == "localhost",
                None => false,
            });
        if let Some(allow) = o.allow_http {
            builder = builder.with_allow_http(allow);
        } else if loopback {
            builder = builder.with_allow_http(true);
        }
        let s3 = S3Store {
            builder,
            bucket,
            prefix,
            endpoint,
            region,
            http,
            stores: Mutex::new(HashMap::new()),
            ready_buckets: tokio::sync::Mutex::new(HashSet::new()),
            journal: UploadJournal::open(config.data_dir.join("uploads.redb"))?,
        };
        // fail early on bad settings
        s3.store_for(&s3.bucket)?;
        Ok(Self {
            inner: Inner::S3(Box::new(s3)),
        })
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
        let default_bucket = match &self.inner {
            Inner::File { bucket, .. } => bucket.clone(),
            Inner::S3(s3) => s3.bucket.clone(),
        };
        let mut vars = BTreeMap::from([
            ("bucket".to_owned(), default_bucket.clone()),
            ("name".to_owned(), name.to_owned()),
            ("slug".to_owned(), super::slug(name)),
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
        match &self.inner {
            Inner::File { dir, .. } => {
                if bucket != default_bucket {
                    return Err(StoreError::Config(format!(
                        "file:// stores support only the prefix layout ({{bucket}}/...), got {template_str:?}"
                    )));
                }
                Ok(StoreLocation {
                    bucket: bucket.to_owned(),
                    key: key.to_owned(),
                    url: format!("file://{}/{key}", dir.display()),
                })
            }
            Inner::S3(s3) => {
                validate_bucket(bucket)?;
                let key = if bucket == s3.bucket && !s3.prefix.is_empty() {
                    format!("{}/{key}", s3.prefix)
                } else {
                    key.to_owned()
                };
                Ok(StoreLocation {
                    bucket: bucket.to_owned(),
                    url: format!("s3://{bucket}/{key}"),
                    key,
                })
            }
        }
    }

    /// The SHA-256 the stored object carries, `None` when there is no object (or it
    /// carries none).
    pub async fn stored_sha256(&self, loc: &StoreLocation) -> Result<Option<String>, StoreError> {
        let path = Path::from(loc.key.as_str());
        match &self.inner {
            Inner::File { dir, store, .. } => {
                match store.head(&path).await {
                    Ok(_) => {}
                    Err(object_store::Error::NotFound { .. }) => return Ok(None),
                    Err(e) => return Err(os_err("head", &loc.url)(e)),
                }
                match tokio::fs::read_to_string(sidecar(dir, &loc.key)).await {
                    Ok(text) => Ok(Some(text.trim().to_owned())),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(io_err(format!("read sidecar of {}", loc.url))(e)),
                }
            }
            Inner::S3(s3) => {
                let store = s3.store_for(&loc.bucket)?;
                let opts = GetOptions {
                    head: true,
                    ..Default::default()
                };
                match store.get_opts(&path, opts).await {
                    Ok(result) => Ok(result
                        .attributes
                        .get(&Attribute::Metadata(SHA256_METADATA.into()))
                        .map(|v| v.as_ref().to_owned())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(os_err("head", &loc.url)(e)),
                }
            }
        }
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
        self.upload_observed(lablet, loc, file, sha256, &|_| {})
            .await
    }

    /// Aborts the S3 multipart uploads of `lablet` that a process killed
    /// mid-upload left open (recorded in `DATA_DIR/uploads.redb`); returns how
    /// many. Call it holding the lablet's lock, as the pipeline does before
    /// each upload. A no-op for `file://` stores.
    pub async fn abort_abandoned_uploads(&self, lablet: &str) -> Result<usize, StoreError> {
        match &self.inner {
            Inner::File { .. } => Ok(0),
            Inner::S3(s3) => s3.abort_abandoned(lablet).await,
        }
    }

    /// As [`upload`](Self::upload), telling `on_bytes(done)` as parts are handed
    /// to the store.
    pub async fn upload_observed(
        &self,
        lablet: &str,
        loc: &StoreLocation,
        file: &FsPath,
        sha256: &str,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<UploadOutcome, StoreError> {
        if self.stored_sha256(loc).await?.as_deref() == Some(sha256) {
            return Ok(UploadOutcome {
                uploaded: false,
                bytes: 0,
            });
        }
        let path = Path::from(loc.key.as_str());
        let bytes = match &self.inner {
            Inner::File { dir, store, .. } => {
                let side = sidecar(dir, &loc.key);
                match tokio::fs::remove_file(&side).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(format!("remove sidecar of {}", loc.url))(e)),
                }
                let bytes = match link_into_place(store, &path, file).await {
                    Ok(bytes) => {
                        on_bytes(bytes);
                        bytes
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, url = %loc.url, "cannot link the package into the store; copying it");
                        stream_upload(store.as_ref(), &path, file, &loc.url, on_bytes).await?
                    }
                };
                write_atomic(&side, sha256.as_bytes())
                    .await
                    .map_err(io_err(format!("write sidecar of {}", loc.url)))?;
                bytes
            }
            Inner::S3(s3) => {
                s3.ensure_bucket(&loc.bucket).await?;
                let store = s3.store_for(&loc.bucket)?;
                let attributes = Attributes::from_iter([(
                    Attribute::Metadata(SHA256_METADATA.into()),
                    AttributeValue::from(sha256.to_owned()),
                )]);
                s3.upload(&store, lablet, loc, &path, file, attributes, on_bytes)
                    .await?
            }
        };
        Ok(UploadOutcome {
            uploaded: true,
            bytes,
        })
    }
}

impl S3Store {
    fn store_for(&self, bucket: &str) -> Result<Arc<AmazonS3>, StoreError> {
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| StoreError::Config("store cache poisoned".to_owned()))?;
        if let Some(store) = stores.get(bucket) {
            return Ok(Arc::clone(store));
        }
        let store = self
            .builder
            .clone()
            .with_bucket_name(bucket)
            .build()
            .map_err(|source| StoreError::ObjectStore {
                operation: "configure",
                location: format!("s3://{bucket}"),
                source: Box::new(source),
            })?;
        let store = Arc::new(store);
        stores.insert(bucket.to_owned(), Arc::clone(&store));
        Ok(store)
    }

    /// Create a per-lablet bucket once per process; the configured bucket is assumed.
    async fn ensure_bucket(&self, bucket: &str) -> Result<(), StoreError> {
        if bucket == self.bucket {
            return Ok(());
        }
        let mut ready = self.ready_buckets.lock().await;
        if ready.contains(bucket) {
            return Ok(());
        }
        let store = self.store_for(bucket)?;
        create_bucket(&self.http, &store, &self.endpoint, &self.region, bucket).await?;
        ready.insert(bucket.to_owned());
        Ok(())
    }
}

/// object_store's retry settings from ours.
fn s3_retry(retry: &crate::retry::RetryPolicy) -> RetryConfig {
    RetryConfig {
        max_retries: retry.max_attempts.saturating_sub(1),
        backoff: BackoffConfig {
            init_backoff: std::time::Duration::from_millis(retry.initial_backoff_ms),
            max_backoff: std::time::Duration::from_millis(
                retry.max_backoff_ms.max(retry.initial_backoff_ms),
            ),
            base: 2.0,
        },
        ..RetryConfig::default()
    }
}

fn sidecar(dir: &FsPath, key: &str) -> PathBuf {
    let mut p = dir.to_path_buf();
    for part in key.split('/') {
        p.push(part);
    }
    let mut name = p.into_os_string();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Put `file` at `path` of a local store as a hard link: the downloaded temp file
/// already holds the bytes on the same file system, so copying them again would
/// only double the disk traffic. Atomic like the store's own writes (a link under
/// a temporary name in the target directory, then a rename); fails (and the caller
/// copies instead) e.g. across file systems. Returns the package size.
async fn link_into_place(
    store: &LocalFileSystem,
    path: &Path,
    file: &FsPath,
) -> std::io::Result<u64> {
    let dest = store
        .path_to_filesystem(path)
        .map_err(std::io::Error::other)?;
    let file = file.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let dir = dest
            .parent()
            .ok_or_else(|| std::io::Error::other("object path has no parent"))?;
        std::fs::create_dir_all(dir)?;
        let staged = tempfile::Builder::new()
            .prefix(".link-")
            .make_in(dir, |p| std::fs::hard_link(&file, p))?;
        let size = std::fs::metadata(staged.path())?.len();
        #[cfg(unix)]
        {
            // the temp download is private (0600); stored objects are not
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        staged.persist(&dest).map_err(|e| e.error)?;
        Ok(size)
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Reads a file one upload part at a time, each part straight into its own
/// buffer (one blocking-pool hop per part), so it is handed on without another
/// copy.
struct PartReader {
    file: Option<std::fs::File>,
    path: PathBuf,
}

impl PartReader {
    fn open(path: &FsPath) -> Result<Self, StoreError> {
        let file = std::fs::File::open(path).map_err(io_err(format!("open {}", path.display())))?;
        Ok(Self {
            file: Some(file),
            path: path.to_path_buf(),
        })
    }

    /// The next part; empty at the end of the file.
    async fn next(&mut self) -> Result<Vec<u8>, StoreError> {
        let read = match self.file.take() {
            Some(f) => tokio::task::spawn_blocking(move || {
                let mut part = Vec::with_capacity(UPLOAD_CHUNK_BYTES);
                let n = (&f).take(UPLOAD_CHUNK_BYTES as u64).read_to_end(&mut part);
                n.map(|_| (f, part))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r),
            None => Err(std::io::Error::other("upload source lost")),
        };
        let (file, part) = read.map_err(io_err(format!("read {}", self.path.display())))?;
        self.file = Some(file);
        Ok(part)
    }
}

/// Stream `file` into a multipart upload of a local store; abort on any failure.
async fn stream_upload(
    store: &dyn ObjectStore,
    path: &Path,
    file: &FsPath,
    url: &str,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64, StoreError> {
    let mut reader = PartReader::open(file)?;
    let upload = store
        .put_multipart_opts(path, PutMultipartOptions::default())
        .await
        .map_err(os_err("upload", url))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_CHUNK_BYTES);
    let mut total: u64 = 0;
    loop {
        let part = match reader.next().await {
            Ok(part) => part,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        };
        if part.is_empty() {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(os_err("upload", url)(e));
        }
        total += part.len() as u64;
        writer.put(bytes::Bytes::from(part));
        on_bytes(total);
    }
    writer.finish().await.map_err(os_err("upload", url))?;
    Ok(total)
}

impl S3Store {
    /// Stream `file` to `path` as an S3 multipart upload, written down in the
    /// upload journal from its creation until it is completed or aborted; on
    /// any failure the upload is aborted.
    #[allow(clippy::too_many_arguments)]
    async fn upload(
        &self,
        store: &AmazonS3,
        lablet: &str,
        loc: &StoreLocation,
        path: &Path,
        file: &FsPath,
        attributes: Attributes,
        on_bytes: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<u64, StoreError> {
        let url = loc.url.as_str();
        let mut reader = PartReader::open(file)?;
        let upload_id = store
            .create_multipart_opts(path, PutMultipartOptions::from(attributes))
            .await
            .map_err(os_err("upload", url))?;
        let open = OpenUpload {
            lablet: lablet.to_owned(),
            bucket: loc.bucket.clone(),
            key: loc.key.clone(),
            upload_id: upload_id.clone(),
        };
        if let Err(e) = self.journal.add(&open).await {
            let _ = store.abort_multipart(path, &upload_id).await;
            return Err(e);
        }
        let sent = put_parts(store, path, &upload_id, &mut reader, url, on_bytes).await;
        let done = match sent {
            Ok((parts, total)) => store
                .complete_multipart(path, &upload_id, parts)
                .await
                .map(|_| total)
                .map_err(os_err("complete upload", url)),
            Err(e) => Err(e),
        };
        match done {
            Ok(total) => {
                // Completed: an entry left by a failure here is harmless (aborting
                // a completed upload finds nothing) and is struck off next time.
                if let Err(e) = self.journal.remove(&upload_id).await {
                    tracing::warn!(error = %e, upload_id, "cannot strike a completed upload off the journal");
                }
                Ok(total)
            }
            Err(e) => {
                match store.abort_multipart(path, &upload_id).await {
                    Ok(()) => {
                        let _ = self.journal.remove(&upload_id).await;
                    }
                    Err(abort) => {
                        tracing::warn!(error = %abort, upload_id, "cannot abort the failed upload; the next sync of this lablet retries");
                    }
                }
                Err(e)
            }
        }
    }

    /// Aborts the uploads of `lablet` that a killed process left open.
    async fn abort_abandoned(&self, lablet: &str) -> Result<usize, StoreError> {
        let mut aborted = 0;
        for open in self.journal.of_lablet(lablet).await? {
            let store = self.store_for(&open.bucket)?;
            let path = Path::from(open.key.as_str());
            match store.abort_multipart(&path, &open.upload_id).await {
                // Gone already (completed, or aborted by a lifecycle rule): S3
                // says NoSuchUpload, some servers deny access to an unknown id.
                Ok(())
                | Err(object_store::Error::NotFound { .. })
                | Err(object_store::Error::PermissionDenied { .. }) => {}
                Err(e) => {
                    return Err(os_err(
                        "abort upload",
                        &format!("s3://{}/{}", open.bucket, open.key),
                    )(e));
                }
            }
            self.journal.remove(&open.upload_id).await?;
            aborted += 1;
        }
        Ok(aborted)
    }
}

/// Sends every part of `reader` (at most [`UPLOAD_CONCURRENCY`] at a time) and
/// returns their ids in order, with the bytes sent.
async fn put_parts(
    store: &AmazonS3,
    path: &Path,
    upload_id: &object_store::MultipartId,
    reader: &mut PartReader,
    url: &str,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
) -> Result<(Vec<PartId>, u64), StoreError> {
    let mut in_flight = FuturesUnordered::new();
    let mut parts: Vec<Option<PartId>> = Vec::new();
    let send = |idx: usize, payload: object_store::PutPayload| async move {
        (idx, store.put_part(path, upload_id, idx, payload).await)
    };
    let mut total: u64 = 0;
    loop {
        let part = reader.next().await?;
        // S3 needs at least one part, even for an empty file.
        if part.is_empty() && !parts.is_empty() {
            break;
        }
        while in_flight.len() >= UPLOAD_CONCURRENCY {
            let sent: Option<(usize, object_store::Result<PartId>)> = in_flight.next().await;
            if let Some((idx, result)) = sent {
                parts[idx] = Some(result.map_err(os_err("upload part", url))?);
            }
        }
        let idx = parts.len();
        parts.push(None);
        let last = part.is_empty();
        total += part.len() as u64;
        let payload = object_store::PutPayload::from(bytes::Bytes::from(part));
        in_flight.push(send(idx, payload));
        on_bytes(total);
        if last {
            break;
        }
    }
    while let Some((idx, result)) = in_flight.next().await {
        parts[idx] = Some(result.map_err(os_err("upload part", url))?);
    }
    let parts = parts
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| StoreError::Config(format!("upload of {url}: a part went missing")))?;
    Ok((parts, total))
}

/// Write `bytes` to `path` atomically: temp file in the same directory, fsync, rename.
pub(crate) async fn write_atomic(path: &FsPath, bytes: &[u8]) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let bytes = bytes.to_vec();
    tokio::task::spawn_blocking(move || {
        let dir = path
            .parent()
            .map(FsPath::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        std::fs::create_dir_all(&dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
        tmp.write_all(&bytes)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&path).map_err(|e| e.error)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })
    .await
    .map_err(std::io::Error::other)?
}
