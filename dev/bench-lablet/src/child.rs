//! What runs in a child process: one sync, or one plain streaming copy. A child
//! holds nothing but its own work (the HTTP and S3 servers live in the parent), so
//! its `VmHWM` is the peak RSS of that work.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use cfgsync_lablet::config::S3Options;
use cfgsync_lablet::store::{UPLOAD_CHUNK_BYTES, UPLOAD_CONCURRENCY};
use cfgsync_lablet::{LabletSync, LabletSyncConfig, Secret};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use serde::{Deserialize, Serialize};

/// Environment variable carrying the [`ChildSpec`] as JSON.
pub const SPEC_ENV: &str = "LABLET_SYNC_BENCH_CHILD_SPEC";

/// What a child does.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Role {
    /// `LabletSync::sync` of one lablet.
    Sync,
    /// GET the package and stream it into a multipart upload, nothing else.
    Copy,
}

/// Where bytes go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum StoreSpec {
    File {
        dir: PathBuf,
    },
    S3 {
        endpoint: String,
        bucket: String,
        region: String,
        access_key: String,
        secret_key: String,
    },
}

impl StoreSpec {
    fn url(&self) -> String {
        match self {
            Self::File { dir } => format!("file://{}", dir.display()),
            Self::S3 { bucket, .. } => format!("s3://{bucket}"),
        }
    }
}

/// A child's instructions.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildSpec {
    pub role: Role,
    /// Base URL of the parent's HTTP server.
    pub base: String,
    pub store: StoreSpec,
    /// Sync: the pipeline's data directory.
    pub data_dir: PathBuf,
    /// Sync: the lablet name.
    pub name: String,
    /// Copy: the object key written.
    pub copy_key: String,
    pub max_package_bytes: u64,
}

/// What a child prints (one JSON line on stdout).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildOutput {
    /// Seconds of the work itself (process start-up excluded).
    pub secs: f64,
    /// `VmHWM` at the end: the peak RSS of the whole child.
    pub peak_rss_kib: u64,
    /// `VmHWM` just before the work started (runtime and clients set up).
    pub start_rss_kib: u64,
    /// CPU seconds (user + system, all threads) of the work itself.
    #[serde(default)]
    pub cpu_secs: f64,
    /// CPU seconds the parent (HTTP server and in-process S3 server) spent
    /// while this child ran; filled in by the parent.
    #[serde(default)]
    pub server_cpu_secs: f64,
    /// Copy: bytes copied. Sync: `uploaded_bytes` of the report.
    pub bytes: u64,
    /// Sync: the [`cfgsync_lablet::SyncReport`] as JSON.
    pub report: Option<serde_json::Value>,
}

/// CPU seconds (user + system, every thread) this process has used so far,
/// from `/proc/self/stat` (clock ticks of 1/100 s); 0 where unknown.
pub fn cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // fields after the parenthesised command name; utime and stime are
            // fields 14 and 15 of the whole line
            let rest = s.rsplit_once(')')?.1;
            let mut fields = rest.split_whitespace().skip(11);
            let utime: u64 = fields.next()?.parse().ok()?;
            let stime: u64 = fields.next()?.parse().ok()?;
            Some((utime + stime) as f64 / 100.0)
        })
        .unwrap_or(0.0)
}

/// Peak resident set of this process (`VmHWM`, KiB); 0 where unknown.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn config(spec: &ChildSpec) -> LabletSyncConfig {
    let mut config = LabletSyncConfig::default()
        .with_resolver_url(&spec.base)
        .with_lds_url(&spec.base)
        .with_se_url(&spec.base)
        .with_data_dir(&spec.data_dir)
        .with_store(spec.store.url())
        .with_max_package_bytes(spec.max_package_bytes);
    if let StoreSpec::S3 {
        endpoint,
        region,
        access_key,
        secret_key,
        ..
    } = &spec.store
    {
        config = config.with_s3(S3Options {
            endpoint: Some(endpoint.clone()),
            region: Some(region.clone()),
            access_key_id: Some(access_key.clone()),
            secret_access_key: Some(Secret::new(secret_key.clone())),
            allow_http: Some(true),
        });
    }
    config
}

/// Run the child described by [`SPEC_ENV`] and print its [`ChildOutput`].
pub async fn run() -> anyhow::Result<()> {
    let spec = std::env::var(SPEC_ENV).with_context(|| format!("{SPEC_ENV} is not set"))?;
    let spec: ChildSpec = serde_json::from_str(&spec).context("bad child spec")?;
    // stage timings on stderr when asked for (`RUST_LOG=cfgsync_lablet=debug`)
    if std::env::var_os("RUST_LOG").is_some() {
        cfgsync_runtime::logging::init_logging(cfgsync_runtime::logging::LogFormat::Text, "warn");
    }
    let output = match spec.role {
        Role::Sync => sync(&spec).await?,
        Role::Copy => copy(&spec).await?,
    };
    println!("{}", serde_json::to_string(&output)?);
    Ok(())
}

async fn sync(spec: &ChildSpec) -> anyhow::Result<ChildOutput> {
    let sync = LabletSync::from_config(config(spec))?;
    let start_rss_kib = peak_rss_kib();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let report = sync.sync(&spec.name).await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(ChildOutput {
        secs,
        peak_rss_kib: peak_rss_kib(),
        start_rss_kib,
        cpu_secs: cpu_secs() - cpu0,
        server_cpu_secs: 0.0,
        bytes: report.uploaded_bytes,
        report: Some(serde_json::to_value(&report)?),
    })
}

/// The I/O limit: HTTP GET streamed straight into a multipart upload with the
/// pipeline's HTTP client, part size and parts in flight. No temp file, no hash, no
/// inspection.
async fn copy(spec: &ChildSpec) -> anyhow::Result<ChildOutput> {
    let config = config(spec);
    let http = config.http_client()?;
    let store: Arc<dyn ObjectStore> = match &spec.store {
        StoreSpec::File { dir } => Arc::new(LocalFileSystem::new_with_prefix(dir)?),
        StoreSpec::S3 {
            endpoint,
            bucket,
            region,
            access_key,
            secret_key,
        } => Arc::new({
            cfgsync_core::tls::ensure_crypto_provider();
            #[allow(clippy::disallowed_methods)] // provider ensured above
            AmazonS3Builder::new()
                .with_endpoint(endpoint)
                .with_allow_http(true)
                .with_region(region)
                .with_access_key_id(access_key)
                .with_secret_access_key(secret_key)
                .with_bucket_name(bucket)
                .build()?
        }),
    };
    let url = format!("{}/package.zip", spec.base);
    let start_rss_kib = peak_rss_kib();
    let cpu0 = cpu_secs();
    let t0 = Instant::now();
    let response = http.get(&url).send().await?.error_for_status()?;
    let upload = store
        .put_multipart(&ObjectPath::from(spec.copy_key.as_str()))
        .await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, UPLOAD_CHUNK_BYTES);
    let mut stream = response.bytes_stream();
    let mut total: u64 = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                let _ = writer.abort().await;
                return Err(err.into());
            }
        };
        if let Err(err) = writer.wait_for_capacity(UPLOAD_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(err.into());
        }
        total += chunk.len() as u64;
        writer.put(chunk);
    }
    writer.finish().await?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(ChildOutput {
        secs,
        peak_rss_kib: peak_rss_kib(),
        start_rss_kib,
        cpu_secs: cpu_secs() - cpu0,
        server_cpu_secs: 0.0,
        bytes: total,
        report: None,
    })
}
