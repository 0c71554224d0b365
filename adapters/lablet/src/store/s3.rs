//! The `s3://` backend (RustFS, MinIO, AWS): `object_store`'s `AmazonS3`, one
//! client per bucket, the package SHA-256 in a sidecar object (and, for whole
//! uploads, as user metadata too, which older versions read), multipart uploads
//! written down in the upload journal while open, buckets per lablet created on
//! first use.

use std::collections::{HashMap, HashSet};
use std::path::Path as FsPath;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::{FuturesUnordered, StreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, BackoffConfig, ClientConfigKey, GetOptions, ObjectStore,
    PutMultipartOptions, RetryConfig,
};

use super::bucket::create_bucket;
use super::journal::{OpenUpload, UploadJournal};
use super::location::validate_bucket;
use super::overlap::{OverlappedUpload, write_sidecar};
use super::parts::PartReader;
use super::sidecar::{self, is_sha256};
use super::{
    S3Options, SHA256_METADATA, StoreBackend, StoreError, StoreLocation, StoredObject,
    UPLOAD_CONCURRENCY, Upload, os_err,
};
use crate::config::HttpConfig;

/// S3 buckets reached through one endpoint.
pub(super) struct S3Backend {
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

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackageStore")
            .field("s3_bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

impl S3Backend {
    /// The store `url` (`s3://bucket[/prefix]`): settings from the `AWS_*`
    /// variables, overridden by `options`; timeouts and retries from
    /// `http_config`; the upload journal at `journal`.
    pub(super) fn open(
        url: &str,
        options: &S3Options,
        http_config: &HttpConfig,
        journal: &FsPath,
        http: reqwest::Client,
    ) -> Result<Self, StoreError> {
        let rest = url.strip_prefix("s3://").unwrap_or(url);
        let (bucket, prefix) = match rest.split_once('/') {
            Some((b, p)) => (b.to_owned(), p.trim_matches('/').to_owned()),
            None => (rest.to_owned(), String::new()),
        };
        if bucket.is_empty() {
            return Err(StoreError::Config(format!(
                "store URL {url:?} names no bucket"
            )));
        }
        let builder = s3_builder(options, http_config);
        let region = builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .unwrap_or_else(|| "us-east-1".to_owned());
        let builder = builder.with_region(&region);
        let endpoint = builder
            .get_config_value(&AmazonS3ConfigKey::Endpoint)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let builder = match options.allow_http {
            Some(allow) => builder.with_allow_http(allow),
            None if is_loopback(&endpoint) => builder.with_allow_http(true),
            None => builder,
        };
        let this = Self {
            builder,
            bucket,
            prefix,
            endpoint,
            region,
            http,
            stores: Mutex::new(HashMap::new()),
            ready_buckets: tokio::sync::Mutex::new(HashSet::new()),
            journal: UploadJournal::open(journal)?,
        };
        // fail early on bad settings
        this.store_for(&this.bucket)?;
        Ok(this)
    }

    fn store_for(&self, bucket: &str) -> Result<Arc<AmazonS3>, StoreError> {
        let mut stores = self
            .stores
            .lock()
            .map_err(|_| StoreError::Config("store cache poisoned".to_owned()))?;
        if let Some(store) = stores.get(bucket) {
            return Ok(Arc::clone(store));
        }
        // The store builds its own HTTP client: ring must be the process's
        // TLS provider first (see cfgsync_core::tls).
        cfgsync_core::tls::ensure_crypto_provider();
        #[allow(clippy::disallowed_methods)] // provider ensured above
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

    /// Stream the upload's file as an S3 multipart upload, written down in the
    /// upload journal from its creation until it is completed or aborted; on any
    /// failure the upload is aborted.
    async fn multipart(&self, store: &AmazonS3, upload: &Upload<'_>) -> Result<u64, StoreError> {
        let loc = upload.loc;
        let url = loc.url.as_str();
        let path = Path::from(loc.key.as_str());
        let mut reader = PartReader::open(upload.file)?;
        let attributes = Attributes::from_iter([(
            Attribute::Metadata(SHA256_METADATA.into()),
            AttributeValue::from(upload.sha256.to_owned()),
        )]);
        let upload_id = store
            .create_multipart_opts(&path, PutMultipartOptions::from(attributes))
            .await
            .map_err(os_err("upload", url))?;
        let open = OpenUpload {
            lablet: upload.lablet.to_owned(),
            bucket: loc.bucket.clone(),
            key: loc.key.clone(),
            upload_id: upload_id.clone(),
        };
        if let Err(e) = self.journal.add(&open).await {
            let _ = store.abort_multipart(&path, &upload_id).await;
            return Err(e);
        }
        let sent = put_parts(store, &path, &upload_id, &mut reader, upload).await;
        let done = match sent {
            Ok((parts, total)) => store
                .complete_multipart(&path, &upload_id, parts)
                .await
                .map(|_| total)
                .map_err(os_err("complete upload", url)),
            Err(e) => Err(e),
        };
        self.close(store, &path, &upload_id, done.is_ok()).await;
        let total = done?;
        if let Err(e) = write_sidecar(store, loc, upload.sha256, total, upload.upstream).await {
            // the metadata written at creation still carries the digest
            tracing::warn!(error = %e, url, "stored the package but not its sidecar");
        }
        Ok(total)
    }

    /// Strikes a finished upload off the journal, aborting it first when it
    /// failed. An entry left behind by a failure here is harmless (aborting a
    /// completed upload finds nothing) and is dealt with by the next sync.
    async fn close(&self, store: &AmazonS3, path: &Path, upload_id: &str, completed: bool) {
        if !completed && let Err(abort) = store.abort_multipart(path, &upload_id.to_owned()).await {
            tracing::warn!(error = %abort, upload_id, "cannot abort the failed upload; the next sync of this lablet retries");
            return;
        }
        if let Err(e) = self.journal.remove(upload_id).await {
            tracing::warn!(error = %e, upload_id, "cannot strike a finished upload off the journal");
        }
    }
}

#[async_trait]
impl StoreBackend for S3Backend {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    fn locate(
        &self,
        _template: &str,
        bucket: &str,
        key: &str,
    ) -> Result<StoreLocation, StoreError> {
        validate_bucket(bucket)?;
        let key = if bucket == self.bucket && !self.prefix.is_empty() {
            format!("{}/{key}", self.prefix)
        } else {
            key.to_owned()
        };
        Ok(StoreLocation {
            bucket: bucket.to_owned(),
            url: format!("s3://{bucket}/{key}"),
            key,
        })
    }

    /// A `HEAD` of the object, then its sidecar: the digest is the sidecar's
    /// when the sidecar names the object's ETag and size, else the metadata's
    /// (objects stored whole, by this version or an older one), else unknown.
    async fn stored(&self, loc: &StoreLocation) -> Result<Option<StoredObject>, StoreError> {
        let store = self.store_for(&loc.bucket)?;
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        let head = match store.get_opts(&Path::from(loc.key.as_str()), opts).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(os_err("head", &loc.url)(e)),
        };
        let size = head.meta.size;
        let side = sidecar::read(store.as_ref(), &loc.key, &loc.url)
            .await?
            .filter(|s| s.describes(head.meta.e_tag.as_deref(), size));
        let metadata = head
            .attributes
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
            .map(|v| v.as_ref().to_owned())
            .filter(|v| is_sha256(v));
        Ok(Some(StoredObject {
            size,
            sha256: side.as_ref().map(|s| s.sha256.clone()).or(metadata),
            upstream_etag: side.and_then(|s| s.upstream_etag),
        }))
    }

    async fn overlapped(
        &self,
        lablet: &str,
        loc: &StoreLocation,
    ) -> Result<Option<OverlappedUpload>, StoreError> {
        self.ensure_bucket(&loc.bucket).await?;
        let store = self.store_for(&loc.bucket)?;
        Ok(Some(OverlappedUpload::new(
            store,
            self.journal.clone(),
            lablet,
            loc,
        )))
    }

    async fn put(&self, upload: Upload<'_>) -> Result<u64, StoreError> {
        self.ensure_bucket(&upload.loc.bucket).await?;
        let store = self.store_for(&upload.loc.bucket)?;
        self.multipart(&store, &upload).await
    }

    async fn abort_abandoned_uploads(&self, lablet: &str) -> Result<usize, StoreError> {
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

/// `AmazonS3Builder::from_env()` with `options` on top, bounded by the
/// configured timeouts and retries as every other call is (object_store's own
/// defaults retry for up to 3 minutes).
fn s3_builder(options: &S3Options, http: &HttpConfig) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env();
    if let Some(v) = &options.endpoint {
        builder = builder.with_endpoint(v);
    }
    if let Some(v) = &options.region {
        builder = builder.with_region(v);
    }
    if let Some(v) = &options.access_key_id {
        builder = builder.with_access_key_id(v);
    }
    if let Some(v) = &options.secret_access_key {
        builder = builder.with_secret_access_key(v.expose());
    }
    let secs = |d: std::time::Duration| format!("{}s", d.as_secs());
    let retry = &http.retry;
    builder
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            secs(http.connect_timeout()),
        )
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ReadTimeout),
            secs(http.read_timeout()),
        )
        .with_retry(RetryConfig {
            max_retries: retry.max_attempts.saturating_sub(1),
            backoff: BackoffConfig {
                init_backoff: std::time::Duration::from_millis(retry.initial_backoff_ms),
                max_backoff: std::time::Duration::from_millis(
                    retry.max_backoff_ms.max(retry.initial_backoff_ms),
                ),
                base: 2.0,
            },
            ..RetryConfig::default()
        })
}

fn is_loopback(endpoint: &str) -> bool {
    url::Url::parse(endpoint)
        .ok()
        .is_some_and(|u| match u.host() {
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            Some(url::Host::Domain(d)) => d == "localhost",
            None => false,
        })
}

/// Sends every part of `reader` (at most [`UPLOAD_CONCURRENCY`] at a time) and
/// returns their ids in order, with the bytes sent.
async fn put_parts(
    store: &AmazonS3,
    path: &Path,
    upload_id: &object_store::MultipartId,
    reader: &mut PartReader,
    upload: &Upload<'_>,
) -> Result<(Vec<PartId>, u64), StoreError> {
    let url = upload.loc.url.as_str();
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
        (upload.on_bytes)(total);
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

impl S3Backend {
    /// The configured bucket and the store's key prefix, for the shared state
    /// replicas keep beside the packages (leases, key claims, retry queue).
    pub(super) fn state_store(&self) -> Result<(Arc<AmazonS3>, String), StoreError> {
        Ok((self.store_for(&self.bucket)?, self.prefix.clone()))
    }
}
