//! `lablet-sync-bench`: how close the lablet sync gets to the I/O limit, how much
//! memory it needs, and whether an unchanged re-sync uploads anything.
//!
//! It builds an incompressible package on disk, serves it from a local HTTP server
//! (which also plays the resolver, LDS and SE), and for each store (`file://`, and
//! S3 served in-process by `s3s-fs`) runs, each in its own child process:
//! a plain streaming copy HTTP → object_store (the I/O limit), a sync, and an
//! unchanged re-sync. It prints wall times, their ratio, the children's peak RSS
//! and the bytes the re-sync uploaded. Correctness (sync succeeded, the stored
//! object's SHA-256 is the package's, the recorded fields are the package's, the
//! re-sync uploaded 0 bytes) is checked on every run and fails the process;
//! times never do.

mod child;
mod package;
mod server;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, bail, ensure};
use cfgsync_test_support::S3Harness;
use clap::{Parser, Subcommand, ValueEnum};

use child::{ChildOutput, ChildSpec, Role, StoreSpec};
use package::Package;

const MIB: f64 = 1024.0 * 1024.0;
const QUICK_SIZE: u64 = 8 * 1024 * 1024;
/// Issue 13: the S3 sync within 1.1x of the plain copy (issue 11 asked 1.3x).
const TARGET_RATIO: f64 = 1.1;
const TARGET_RSS_MIB: f64 = 64.0;

/// Benchmark the lablet sync against a plain streaming copy of the same bytes.
#[derive(Debug, Parser)]
#[command(name = "lablet-sync-bench", version)]
struct Cli {
    /// Package size: bytes or with a binary unit (`1GiB`, `100MiB`, `512KiB`).
    /// Default 1GiB, or 8MiB with --quick.
    #[arg(long, value_parser = package::parse_size)]
    size: Option<u64>,
    /// Stores to sync into, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "file,s3")]
    stores: Vec<StoreKind>,
    /// Copy + sync repetitions per store; the table shows the fastest of each.
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Small package (8 MiB unless --size): a correctness check for CI, no targets.
    #[arg(long)]
    quick: bool,
    /// Working directory (package, stores, data dirs); default a temp dir.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the working directory and stored objects.
    #[arg(long)]
    keep: bool,
    #[command(subcommand)]
    child: Option<Hidden>,
}

#[derive(Debug, Subcommand)]
enum Hidden {
    /// Internal: run one sync or copy described by the environment.
    #[command(hide = true)]
    Child,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreKind {
    File,
    S3,
}

impl StoreKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::S3 => "s3",
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.child {
        Some(Hidden::Child) => child::run().await,
        None => bench(cli).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lablet-sync-bench: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// One store's measurements.
#[derive(Debug)]
struct Row {
    store: StoreKind,
    copy: Vec<ChildOutput>,
    sync: Vec<ChildOutput>,
    resync: Vec<ChildOutput>,
    resync_uploaded: u64,
    loads: Vec<String>,
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    ensure!(cli.runs >= 1, "--runs must be at least 1");
    let size = cli
        .size
        .unwrap_or(if cli.quick { QUICK_SIZE } else { 1 << 30 });
    let temp = match &cli.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            None
        }
        None => Some(
            tempfile::Builder::new()
                .prefix("lablet-sync-bench-")
                .tempdir()?,
        ),
    };
    let work: PathBuf = match (&temp, &cli.work_dir) {
        (Some(t), _) => t.path().to_path_buf(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => bail!("no working directory"),
    };
    print_machine();
    eprintln!(
        "building a {:.0} MiB package in {}",
        size as f64 / MIB,
        work.display()
    );
    let package_path = work.join("package.zip");
    let pkg = {
        let path = package_path.clone();
        tokio::task::spawn_blocking(move || package::write_package(&path, size, 0x5EED)).await??
    };
    eprintln!("package: {} bytes, sha256 {}", pkg.size, pkg.sha256);
    let server = server::start(package_path.clone()).await?;
    let s3 = if cli.stores.contains(&StoreKind::S3) {
        let h = S3Harness::start().await?;
        ensure!(
            h.is_in_process(),
            "the S3 harness must run in-process for the byte counters"
        );
        Some(h)
    } else {
        None
    };

    let mut rows = Vec::new();
    for &store in &cli.stores {
        rows.push(bench_store(&cli, &work, &server.base, s3.as_ref(), store, &pkg).await?);
    }
    print_table(&pkg, &rows, cli.quick);
    if cli.keep {
        eprintln!("kept {}", work.display());
        if let Some(s3) = &s3 {
            eprintln!(
                "(the in-process S3 data goes away with this process: {:?})",
                s3.root
            );
        }
        if let Some(t) = temp {
            let _ = t.keep();
        }
    }
    Ok(())
}

async fn bench_store(
    cli: &Cli,
    work: &Path,
    base: &str,
    s3: Option<&S3Harness>,
    kind: StoreKind,
    pkg: &Package,
) -> anyhow::Result<Row> {
    let store = match kind {
        StoreKind::File => StoreSpec::File {
            dir: work.join("file-store"),
        },
        StoreKind::S3 => {
            let s3 = s3.context("no S3 harness")?;
            StoreSpec::S3 {
                endpoint: s3.endpoint.clone(),
                bucket: s3.bucket.clone(),
                region: s3.region.clone(),
                access_key: s3.access_key.clone(),
                secret_key: s3.secret_key.clone(),
            }
        }
    };
    if let StoreSpec::File { dir } = &store {
        std::fs::create_dir_all(dir)?;
    }
    let mut row = Row {
        store: kind,
        copy: Vec::new(),
        sync: Vec::new(),
        resync: Vec::new(),
        resync_uploaded: 0,
        loads: Vec::new(),
    };
    for run in 0..cli.runs {
        let name = format!("BENCH-{}-{run}", kind.as_str());
        let data_dir = work.join(format!("data-{}-{run}", kind.as_str()));
        let spec = ChildSpec {
            role: Role::Copy,
            base: base.to_owned(),
            store: store.clone(),
            data_dir: data_dir.clone(),
            name: name.clone(),
            copy_key: format!("copy/{name}.zip"),
            max_package_bytes: pkg.size.max(4 << 30),
        };
        row.loads.push(loadavg());

        // the I/O limit; run first in even runs and last in odd ones, so
        // neither the copy nor the sync always follows the previous run's
        // deletions and page-cache state
        let copy_once = || async {
            let copy = spawn_child(&spec).await.context("plain copy")?;
            ensure!(
                copy.bytes == pkg.size,
                "copy moved {} of {} bytes",
                copy.bytes,
                pkg.size
            );
            let copied = object_file(&store, s3, &spec.copy_key)?;
            check_sha(&copied, pkg, "copied object")?;
            remove_object(&copied);
            anyhow::Ok(copy)
        };
        let copied_first = if run % 2 == 0 {
            Some(copy_once().await?)
        } else {
            None
        };

        // the sync
        let sync_spec = ChildSpec {
            role: Role::Sync,
            ..spec.clone()
        };
        let sync = spawn_child(&sync_spec).await.context("sync")?;
        let report = sync.report.clone().context("sync printed no report")?;
        check_report(&report, pkg, true)?;
        let key = report["definition"]["store"]["key"]
            .as_str()
            .context("report has no store key")?
            .to_owned();
        let stored = object_file(&store, s3, &key)?;
        check_sha(&stored, pkg, "synced object")?;
        let mtime = std::fs::metadata(&stored)?.modified()?;

        // unchanged re-sync
        if let Some(s3) = s3 {
            s3.reset_counters();
        }
        let resync = spawn_child(&sync_spec).await.context("re-sync")?;
        let resync_report = resync.report.clone().context("re-sync printed no report")?;
        check_report(&resync_report, pkg, false)?;
        let uploaded = match kind {
            StoreKind::S3 => s3.and_then(S3Harness::put_body_bytes).unwrap_or(u64::MAX),
            StoreKind::File => resync.bytes,
        };
        ensure!(
            uploaded == 0 && resync.bytes == 0,
            "unchanged re-sync into {} uploaded {uploaded} bytes (report: {})",
            kind.as_str(),
            resync.bytes
        );
        ensure!(
            std::fs::metadata(&stored)?.modified()? == mtime,
            "unchanged re-sync rewrote {}",
            stored.display()
        );
        check_sha(&stored, pkg, "object after re-sync")?;
        row.resync_uploaded = row.resync_uploaded.max(uploaded);
        let copy = match copied_first {
            Some(copy) => copy,
            None => copy_once().await?,
        };
        eprintln!(
            "{} run {run}: copy {:.2}s, sync {:.2}s, re-sync {:.2}s, load {}; CPU s (child + servers): copy {:.2} + {:.2}, sync {:.2} + {:.2}, re-sync {:.2} + {:.2}",
            kind.as_str(),
            copy.secs,
            sync.secs,
            resync.secs,
            row.loads.last().map(String::as_str).unwrap_or("?"),
            copy.cpu_secs,
            copy.server_cpu_secs,
            sync.cpu_secs,
            sync.server_cpu_secs,
            resync.cpu_secs,
            resync.server_cpu_secs,
        );
        row.copy.push(copy);
        row.sync.push(sync);
        row.resync.push(resync);
        if !cli.keep {
            remove_object(&stored);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
    Ok(row)
}

/// Run this binary's hidden `child` subcommand with `spec`; its stdout is one JSON
/// line, its stderr is passed on once it ended.
async fn spawn_child(spec: &ChildSpec) -> anyhow::Result<ChildOutput> {
    let exe = std::env::current_exe().context("find the bench binary")?;
    let server_cpu0 = child::cpu_secs();
    let out = tokio::process::Command::new(exe)
        .arg("child")
        .env(child::SPEC_ENV, serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .output()
        .await
        .context("run the child process")?;
    // `output()` captures stderr whatever was asked: pass it on
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{:?} child failed ({})", spec.role, out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().context("child printed nothing")?;
    let mut output: ChildOutput =
        serde_json::from_str(line).with_context(|| format!("child printed {line:?}"))?;
    // the parent runs the HTTP and S3 servers and, meanwhile, nothing else
    output.server_cpu_secs = child::cpu_secs() - server_cpu0;
    Ok(output)
}

/// The file holding an object: the `file://` directory, or `s3s-fs`'s root.
fn object_file(store: &StoreSpec, s3: Option<&S3Harness>, key: &str) -> anyhow::Result<PathBuf> {
    match store {
        StoreSpec::File { dir } => {
            let mut p = dir.clone();
            p.extend(key.split('/'));
            Ok(p)
        }
        StoreSpec::S3 { bucket, .. } => s3
            .and_then(|h| h.object_path(bucket, key))
            .context("the S3 harness has no local root"),
    }
}

fn remove_object(path: &Path) {
    let _ = std::fs::remove_file(path);
}

fn check_sha(path: &Path, pkg: &Package, what: &str) -> anyhow::Result<()> {
    let sha = package::sha256_file(path)?;
    ensure!(
        sha == pkg.sha256,
        "{what} {} has SHA-256 {sha}, the package {}",
        path.display(),
        pkg.sha256
    );
    Ok(())
}

/// The report says what the package holds; `first` syncs upload it all, re-syncs
/// nothing.
fn check_report(report: &serde_json::Value, pkg: &Package, first: bool) -> anyhow::Result<()> {
    let def = &report["definition"];
    let field = |name: &str| def[name].as_str().unwrap_or_default().to_owned();
    ensure!(
        field("content_package_hash") == pkg.sha256,
        "recorded hash {} is not the package's {}",
        field("content_package_hash"),
        pkg.sha256
    );
    ensure!(
        def["content_package_size"].as_u64() == Some(pkg.size),
        "recorded size {} is not the package's {}",
        def["content_package_size"],
        pkg.size
    );
    ensure!(field("status") == "synced", "status {:?}", field("status"));
    ensure!(
        field("cml_yaml_path") == "cml.yaml",
        "cml_yaml_path {:?}",
        field("cml_yaml_path")
    );
    ensure!(
        field("cml_yaml_content") == package::CML_YAML,
        "cml_yaml_content differs"
    );
    ensure!(
        field("devices_json") == package::DEVICES_JSON,
        "devices_json differs"
    );
    ensure!(
        field("grade_xml_path") == package::GRADE_XML_PATH,
        "grade_xml_path {:?}",
        field("grade_xml_path")
    );
    ensure!(
        field("upstream_version") == package::META_VERSION,
        "upstream_version differs"
    );
    ensure!(
        field("upstream_instance_name") == package::META_INSTANCE,
        "upstream_instance_name differs"
    );
    let uploaded = report["uploaded"].as_bool() == Some(true);
    let bytes = report["uploaded_bytes"].as_u64().unwrap_or(u64::MAX);
    if first {
        ensure!(
            uploaded && bytes == pkg.size,
            "first sync uploaded {bytes} bytes"
        );
    } else {
        ensure!(!uploaded && bytes == 0, "re-sync uploaded {bytes} bytes");
    }
    Ok(())
}

fn min_secs(outs: &[ChildOutput]) -> f64 {
    outs.iter().map(|o| o.secs).fold(f64::INFINITY, f64::min)
}

fn max_rss_mib(outs: &[ChildOutput]) -> f64 {
    outs.iter().map(|o| o.peak_rss_kib).max().unwrap_or(0) as f64 / 1024.0
}

fn print_table(pkg: &Package, rows: &[Row], quick: bool) {
    println!();
    println!(
        "| size | store | sync wall | copy wall | sync/copy | sync peak RSS | copy peak RSS | re-sync wall | re-sync uploaded |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let (sync, copy) = (min_secs(&row.sync), min_secs(&row.copy));
        println!(
            "| {:.0} MiB | {} | {:.2} s | {:.2} s | {:.2} | {:.1} MiB | {:.1} MiB | {:.2} s | {} B |",
            pkg.size as f64 / MIB,
            row.store.as_str(),
            sync,
            copy,
            sync / copy,
            max_rss_mib(&row.sync),
            max_rss_mib(&row.copy),
            min_secs(&row.resync),
            row.resync_uploaded,
        );
    }
    if quick {
        println!(
            "\nquick run: correctness checked (sync ok, stored SHA-256 = package, recorded fields, 0 bytes on re-sync); times not judged"
        );
        return;
    }
    println!();
    for row in rows {
        let ratio = min_secs(&row.sync) / min_secs(&row.copy);
        let rss = max_rss_mib(&row.sync);
        println!(
            "{}: wall {:.2}x copy (target <= {TARGET_RATIO}x) {}; peak RSS {:.1} MiB (target <= {TARGET_RSS_MIB} MiB) {}; re-sync {} B (target 0) ok",
            row.store.as_str(),
            ratio,
            verdict(ratio <= TARGET_RATIO),
            rss,
            verdict(rss <= TARGET_RSS_MIB),
            row.resync_uploaded
        );
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "MISSED" }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".to_owned())
}

fn print_machine() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1).map(|v| v.trim().to_owned()))
        })
        .unwrap_or_else(|| "?".to_owned());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .unwrap_or(0);
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    eprintln!(
        "machine: {cores} cores, {:.1} GiB, {cpu}, load {}",
        mem as f64 / 1024.0 / 1024.0,
        loadavg()
    );
}
