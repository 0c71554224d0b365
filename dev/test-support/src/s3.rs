//! In-process S3 server (s3s + s3s-fs) with request and upload-byte counters and
//! fault injection ([`S3Faults`]).

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const ENV_ENDPOINT: &str = "CFGSYNC_TEST_S3_ENDPOINT";
const ENV_BUCKET: &str = "CFGSYNC_TEST_S3_BUCKET";

/// Traffic seen by the in-process server.
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    put_requests: AtomicU64,
    put_body_bytes: AtomicU64,
    upload_parts: AtomicU64,
    aborts: AtomicU64,
    completes: AtomicU64,
    lists: AtomicU64,
}

/// Faults the in-process server injects, switchable while it runs (all off by
/// default). Injected failures answer `500 InternalError` without reading the
/// request body.
#[derive(Debug, Default)]
pub struct S3Faults {
    /// Fail every `UploadPart` from this part on (1-based count of parts received
    /// since the last reset; 0 = off).
    fail_parts_from: AtomicU64,
    /// Answer every request with this status (0 = off).
    fail_all: AtomicU16,
    /// Delay every request by this many milliseconds before answering.
    delay_ms: AtomicU64,
    /// Answer every conditional `PUT` with `412 Precondition Failed`.
    conflict_conditional_puts: AtomicBool,
}

impl S3Faults {
    /// Fail the `n`th `UploadPart` (counted from now) and every later one.
    pub fn fail_upload_parts_from(&self, n: u64) {
        self.fail_parts_from.store(n, Ordering::SeqCst);
    }

    /// Answer every request with `status` (e.g. 503).
    pub fn fail_all_with(&self, status: u16) {
        self.fail_all.store(status, Ordering::SeqCst);
    }

    /// Hold every request for `delay` before answering.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms.store(
            u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Answer every conditional `PUT` (one with `If-Match` or `If-None-Match`)
    /// with `412 Precondition Failed`, as S3 does when another writer changed
    /// the object first: every compare-and-swap loses.
    pub fn conflict_conditional_puts(&self) {
        self.conflict_conditional_puts.store(true, Ordering::SeqCst);
    }

    /// Turn every fault off.
    pub fn clear(&self) {
        self.conflict_conditional_puts
            .store(false, Ordering::SeqCst);
        self.fail_parts_from.store(0, Ordering::SeqCst);
        self.fail_all.store(0, Ordering::SeqCst);
        self.delay_ms.store(0, Ordering::SeqCst);
    }
}

/// A running S3 endpoint for tests: in-process by default, or an outside S3 when
/// `CFGSYNC_TEST_S3_ENDPOINT` is set.
pub struct S3Harness {
    /// `http://127.0.0.1:PORT` (or the outside endpoint).
    pub endpoint: String,
    /// The default bucket, created at start.
    pub bucket: String,
    /// Access key id accepted by the server.
    pub access_key: String,
    /// Secret access key accepted by the server.
    pub secret_key: String,
    /// Region to sign with.
    pub region: String,
    /// Key prefix tests should write under: empty for the in-process server (a fresh
    /// server per harness), unique per harness for an outside S3 (shared bucket).
    pub prefix: String,
    /// Store bound to [`S3Harness::bucket`].
    pub store: Arc<dyn ObjectStore>,
    /// Directory holding the buckets (one sub-directory per bucket); `None` for an
    /// outside S3.
    pub root: Option<PathBuf>,
    counters: Option<Arc<Counters>>,
    faults: Arc<S3Faults>,
    server: Option<JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl fmt::Debug for S3Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Harness")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .field("secret_key", &"***")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Drop for S3Harness {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl S3Harness {
    /// Start an S3 server on `127.0.0.1:0` over a fresh temporary directory, with the
    /// bucket `test-bucket` created; or target the outside S3 named by
    /// `CFGSYNC_TEST_S3_ENDPOINT`.
    pub async fn start() -> io::Result<Self> {
        if let Ok(endpoint) = std::env::var(ENV_ENDPOINT) {
            return Self::outside(endpoint);
        }
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let bucket = "test-bucket".to_owned();
        std::fs::create_dir_all(root.join(&bucket))?;

        let access_key = "cfgsync-test-key".to_owned();
        let secret_key = format!("cfgsync-test-secret-{}", std::process::id());
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| io::Error::other(format!("s3s-fs: {e:?}")))?;
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(
            access_key.clone(),
            secret_key.clone(),
        ));
        let service = builder.build();

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let faults = Arc::new(S3Faults::default());
        let server = tokio::spawn(serve(
            listener,
            service,
            Arc::clone(&counters),
            Arc::clone(&faults),
        ));

        let endpoint = format!("http://{addr}");
        let region = "us-east-1".to_owned();
        let store = build_store(&endpoint, &bucket, &access_key, &secret_key, &region)?;
        Ok(Self {
            endpoint,
            bucket,
            access_key,
            secret_key,
            region,
            prefix: String::new(),
            store,
            root: Some(root),
            counters: Some(counters),
            faults,
            server: Some(server),
            _dir: Some(dir),
        })
    }

    fn outside(endpoint: String) -> io::Result<Self> {
        let bucket = std::env::var(ENV_BUCKET).unwrap_or_else(|_| "cfgsync-test".to_owned());
        let access_key = std::env::var("AWS_ACCESS_KEY_ID").map_err(|_| {
            io::Error::other(format!(
                "{ENV_ENDPOINT} is set but AWS_ACCESS_KEY_ID is not"
            ))
        })?;
        let secret_key = std::env::var("AWS_SECRET_ACCESS_KEY").map_err(|_| {
            io::Error::other(format!(
                "{ENV_ENDPOINT} is set but AWS_SECRET_ACCESS_KEY is not"
            ))
        })?;
        let region = std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".to_owned());
        eprintln!(
            "!!! cfgsync-test-support: {ENV_ENDPOINT} is set, tests use the OUTSIDE S3 at {endpoint} \
             (bucket {bucket}); traffic counters are unavailable !!!"
        );
        let store = build_store(&endpoint, &bucket, &access_key, &secret_key, &region)?;
        Ok(Self {
            endpoint,
            bucket,
            access_key,
            secret_key,
            region,
            prefix: unique_prefix(),
            store,
            root: None,
            counters: None,
            faults: Arc::default(),
            server: None,
            _dir: None,
        })
    }

    /// Whether this harness runs its own in-process server (counters available).
    pub fn is_in_process(&self) -> bool {
        self.counters.is_some()
    }

    /// Create a bucket directory (in-process server only; a no-op for an outside S3).
    pub fn create_bucket(&self, name: &str) -> io::Result<()> {
        match &self.root {
            Some(root) => std::fs::create_dir_all(root.join(name)),
            None => Ok(()),
        }
    }

    /// Whether a bucket exists (in-process server only; `None` for an outside S3).
    pub fn bucket_exists(&self, name: &str) -> Option<bool> {
        self.root.as_deref().map(|root| root.join(name).is_dir())
    }

    /// An [`AmazonS3Builder`] preconfigured for this endpoint and credentials.
    pub fn builder(&self) -> AmazonS3Builder {
        builder(
            &self.endpoint,
            &self.access_key,
            &self.secret_key,
            &self.region,
        )
    }

    /// A store bound to another bucket of this server.
    pub fn store_for_bucket(&self, bucket: &str) -> io::Result<Arc<dyn ObjectStore>> {
        build_store(
            &self.endpoint,
            bucket,
            &self.access_key,
            &self.secret_key,
            &self.region,
        )
    }

    /// One traffic counter (`None` against an outside S3, which is not counted).
    fn counter(&self, pick: impl Fn(&Counters) -> &AtomicU64) -> Option<u64> {
        self.counters
            .as_ref()
            .map(|c| pick(c).load(Ordering::SeqCst))
    }

    /// Requests received so far.
    pub fn requests(&self) -> Option<u64> {
        self.counter(|c| &c.requests)
    }

    /// `PUT` requests received so far (PutObject, UploadPart, CreateBucket,
    /// copies), leaving out writes of shared state (a key with a path segment
    /// starting with `_`, such as `_leases/…`, `_claims/…`, `_queue/…`), so
    /// tests count the package bytes a sync uploads.
    pub fn put_requests(&self) -> Option<u64> {
        self.counter(|c| &c.put_requests)
    }

    /// Body bytes received in `PUT` requests so far: the bytes uploaded
    /// (shared-state writes left out, as in [`put_requests`](Self::put_requests)).
    pub fn put_body_bytes(&self) -> Option<u64> {
        self.counter(|c| &c.put_body_bytes)
    }

    /// `UploadPart` requests received so far.
    pub fn upload_parts(&self) -> Option<u64> {
        self.counter(|c| &c.upload_parts)
    }

    /// Listing requests (`ListObjectsV2`, `GET ?list-type=2`) received so far.
    pub fn list_requests(&self) -> Option<u64> {
        self.counter(|c| &c.lists)
    }

    /// `AbortMultipartUpload` requests received so far.
    pub fn aborted_uploads(&self) -> Option<u64> {
        self.counter(|c| &c.aborts)
    }

    /// `CompleteMultipartUpload` requests received so far.
    pub fn completed_uploads(&self) -> Option<u64> {
        self.counter(|c| &c.completes)
    }

    /// Multipart uploads the in-process server holds open (created, neither
    /// completed nor aborted): s3s-fs keeps one `.upload-ID.json` per upload in
    /// its root.
    pub fn open_uploads(&self) -> Option<usize> {
        let root = self.root.as_deref()?;
        let entries = std::fs::read_dir(root).ok()?;
        Some(
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    name.starts_with(".upload-") && name.ends_with(".json")
                })
                .count(),
        )
    }

    /// The faults of the in-process server (they do nothing for an outside S3).
    pub fn faults(&self) -> &S3Faults {
        &self.faults
    }

    /// Set all counters back to zero.
    pub fn reset_counters(&self) {
        if let Some(c) = &self.counters {
            for counter in [
                &c.requests,
                &c.put_requests,
                &c.put_body_bytes,
                &c.upload_parts,
                &c.aborts,
                &c.completes,
                &c.lists,
            ] {
                counter.store(0, Ordering::SeqCst);
            }
        }
    }

    /// The directory of one object (in-process server only).
    pub fn object_path(&self, bucket: &str, key: &str) -> Option<PathBuf> {
        self.root
            .as_deref()
            .map(|root| object_path(root, bucket, key))
    }
}

fn unique_prefix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "cfgsync-test-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn object_path(root: &FsPath, bucket: &str, key: &str) -> PathBuf {
    let mut p = root.join(bucket);
    for part in key.split('/') {
        p.push(part);
    }
    p
}

fn builder(endpoint: &str, access_key: &str, secret_key: &str, region: &str) -> AmazonS3Builder {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_allow_http(true)
        .with_access_key_id(access_key)
        .with_secret_access_key(secret_key)
        .with_region(region)
}

fn build_store(
    endpoint: &str,
    bucket: &str,
    access_key: &str,
    secret_key: &str,
    region: &str,
) -> io::Result<Arc<dyn ObjectStore>> {
    cfgsync_core::tls::ensure_crypto_provider();
    #[allow(clippy::disallowed_methods)] // provider ensured above
    let store = builder(endpoint, access_key, secret_key, region)
        .with_bucket_name(bucket)
        .build()
        .map_err(io::Error::other)?;
    Ok(Arc::new(store))
}

/// Whether `req` writes shared coordination state rather than content: a
/// key with a path segment starting with `_` (`_leases/…`, `_claims/…`,
/// `_queue/…`).
fn is_shared_state(req: &http::Request<Incoming>) -> bool {
    req.uri()
        .path()
        .split('/')
        .any(|segment| segment.starts_with('_'))
}

/// Whether the query string has `name` as a parameter.
fn has_param(req: &http::Request<Incoming>, name: &str) -> bool {
    req.uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.split('=').next() == Some(name)))
}

/// The status to fail `req` with, if a fault says so; counts multipart calls.
fn inject(req: &http::Request<Incoming>, counters: &Counters, faults: &S3Faults) -> Option<u16> {
    let upload_part = req.method() == http::Method::PUT && has_param(req, "partNumber");
    let part = upload_part.then(|| counters.upload_parts.fetch_add(1, Ordering::SeqCst) + 1);
    if req.method() == http::Method::DELETE && has_param(req, "uploadId") {
        counters.aborts.fetch_add(1, Ordering::SeqCst);
    }
    if req.method() == http::Method::POST && has_param(req, "uploadId") {
        counters.completes.fetch_add(1, Ordering::SeqCst);
    }
    if req.method() == http::Method::GET && has_param(req, "list-type") {
        counters.lists.fetch_add(1, Ordering::SeqCst);
    }
    match faults.fail_all.load(Ordering::SeqCst) {
        0 => {}
        status => return Some(status),
    }
    let conditional = [http::header::IF_MATCH, http::header::IF_NONE_MATCH]
        .iter()
        .any(|header| req.headers().contains_key(header));
    if req.method() == http::Method::PUT
        && conditional
        && faults.conflict_conditional_puts.load(Ordering::SeqCst)
    {
        return Some(412);
    }
    let from = faults.fail_parts_from.load(Ordering::SeqCst);
    match part {
        Some(n) if from > 0 && n >= from => Some(500),
        _ => None,
    }
}

fn injected_error(status: u16) -> s3s::HttpResponse {
    let code = match status {
        412 => "PreconditionFailed",
        _ => "InternalError",
    };
    let mut resp = s3s::HttpResponse::new(s3s::Body::from(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>injected fault</Message></Error>"
    )));
    *resp.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    resp
}

async fn serve(
    listener: TcpListener,
    service: s3s::service::S3Service,
    counters: Arc<Counters>,
    faults: Arc<S3Faults>,
) {
    // s3s-fs checks If-Match / If-None-Match and then writes, and stores an
    // object's ETag beside its bytes, so a GET racing a PUT may pair one
    // version's body with another's ETag. Real S3 (and RustFS, MinIO) are
    // atomic per object; a per-key lock (writers exclusive, readers shared)
    // gives tests those semantics.
    let locks = Arc::new(KeyLocks::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let service = service.clone();
        let counters = Arc::clone(&counters);
        let locks = Arc::clone(&locks);
        let faults = Arc::clone(&faults);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let service = service.clone();
                let counters = Arc::clone(&counters);
                let locks = Arc::clone(&locks);
                let faults = Arc::clone(&faults);
                async move {
                    let delay = faults.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    if let Some(status) = inject(&req, &counters, &faults) {
                        counters.requests.fetch_add(1, Ordering::SeqCst);
                        return Ok::<_, Infallible>(injected_error(status));
                    }
                    let _key_lock = locks.acquire(&req).await;
                    counters.requests.fetch_add(1, Ordering::SeqCst);
                    let req = if req.method() == http::Method::PUT && !is_shared_state(&req) {
                        counters.put_requests.fetch_add(1, Ordering::SeqCst);
                        req.map(|body| CountingBody {
                            inner: body,
                            counters: Some(Arc::clone(&counters)),
                        })
                    } else {
                        req.map(|body| CountingBody {
                            inner: body,
                            counters: None,
                        })
                    };
                    let response = match call_s3(service, req).await {
                        Ok(resp) => resp,
                        Err(err) => {
                            tracing::warn!(error = ?err, "s3 harness request failed");
                            let mut resp = s3s::HttpResponse::new(s3s::Body::empty());
                            *resp.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                            resp
                        }
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = ConnBuilder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn call_s3(
    service: s3s::service::S3Service,
    req: http::Request<CountingBody>,
) -> Result<s3s::HttpResponse, s3s::HttpError> {
    service.call(req.map(s3s::Body::http_body_unsync)).await
}

/// One lock per object key (the request path): requests that change an object
/// (`PUT`, `POST`, `DELETE`) hold it exclusively, reads (`GET`, `HEAD`) shared.
#[derive(Default)]
struct KeyLocks {
    keys: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

enum KeyGuard {
    Read(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Write(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

impl KeyLocks {
    async fn acquire<B>(&self, req: &http::Request<B>) -> KeyGuard {
        let lock = {
            let mut keys = self
                .keys
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(keys.entry(req.uri().path().to_owned()).or_default())
        };
        match *req.method() {
            http::Method::GET | http::Method::HEAD => KeyGuard::Read(lock.read_owned().await),
            _ => KeyGuard::Write(lock.write_owned().await),
        }
    }
}

/// A request body that adds the bytes it yields to the upload counter.
struct CountingBody {
    inner: Incoming,
    counters: Option<Arc<Counters>>,
}

impl Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(counters)) = (&polled, &self.counters)
            && let Some(data) = frame.data_ref()
        {
            counters
                .put_body_bytes
                .fetch_add(data.len() as u64, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
