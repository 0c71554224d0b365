//! The end-to-end demo, on embedded defaults with no outside service: inside one
//! process, on loopback ports, a form-environment-resolver, a Mosaic package
//! server, LDS and SE receivers, and `lablet-sync serve` (`file://` store,
//! embedded catalog). It syncs LAB-1.1.1, boots three nodes that register and
//! receive the lablet's files, publishes a new package version, re-syncs, and
//! shows the nodes picking it up. Each step prints the `lablet-sync`,
//! `cfgsync-client` or `curl` command that does it by hand.
//!
//! ```text
//! cargo run -p cfgsync-examples --bin demo                  # files in a temp dir, removed at exit
//! cargo run -p cfgsync-examples --bin demo -- --keep DIR    # files kept in DIR
//! ```

use std::io::Write as _;
use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::{get, post};
use cfgsync_core::{CfgsyncClient, FetchOptions, FetchOutcome, NodeRegistration};
use cfgsync_lablet::{LabletSyncConfig, ServeOptions, build_lablet_app, serve_lablets};
use cfgsync_runtime::{ArtifactOutputMap, register_and_fetch_artifacts};
use clap::Parser;

type Failure = Box<dyn std::error::Error + Send + Sync>;

const LAB: &str = "LAB-1.1.1";

/// The end-to-end lablet demo: resolver, Mosaic, LDS and SE on loopback, `lablet-sync
/// serve`, three nodes; exits 0 only if every step worked.
#[derive(Debug, Parser)]
#[command(name = "demo")]
struct Args {
    /// Write the lablet-sync data dir and the nodes' files under DIR and keep
    /// them (created if missing; must be empty). Default: a temporary
    /// directory removed at exit.
    #[arg(long, value_name = "DIR")]
    keep: Option<PathBuf>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(message) = run(args).await {
        eprintln!("demo failed: {message}");
        std::process::exit(1);
    }
}

/// A content package as Mosaic publishes it.
fn package(version: &str, routers: usize) -> Result<Vec<u8>, Failure> {
    let nodes: String = (1..=routers)
        .map(|i| format!("  - id: n{i}\n    label: r{i}\n    node_definition: iosv\n"))
        .collect();
    let cml = format!("lab:\n  title: Routing basics\n  version: {version}\nnodes:\n{nodes}");
    let devices: Vec<_> = (1..=routers)
        .map(|i| serde_json::json!({"name": format!("r{i}"), "type": "iosv"}))
        .collect();
    let meta = serde_json::json!({
        "Version": version, "DatePublished": "2026-11-20T09:00:00Z",
        "InstanceName": "mosaic-demo", "FormId": "form-1-1-1",
    });
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default();
    for (name, bytes) in [
        ("LAB-1.1.1/cml.yaml", cml.into_bytes()),
        (
            "LAB-1.1.1/devices.json",
            serde_json::to_vec_pretty(&devices)?,
        ),
        (
            "LAB-1.1.1/grading/grade.xml",
            b"<grade><check id=\"ping\"/></grade>\n".to_vec(),
        ),
        (
            "LAB-1.1.1/mosaic_meta.json",
            serde_json::to_vec_pretty(&meta)?,
        ),
        ("LAB-1.1.1/guide/README.md", b"# Routing basics\n".to_vec()),
    ] {
        zip.start_file(name, options)?;
        zip.write_all(&bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// Serves `router` on a loopback port; returns its base URL.
async fn spawn(router: Router) -> Result<String, Failure> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

async fn operator_sync(url: &str) -> Result<serde_json::Value, Failure> {
    let response = cfgsync_core::tls::http_client_builder()
        .build()?
        .post(format!("{url}/api/v1/lablets/{LAB}/sync"))
        .send()
        .await?;
    let status = response.status();
    let body: serde_json::Value = response.json().await?;
    if !status.is_success() {
        return Err(format!("sync answered {status}: {body}").into());
    }
    let d = &body["definition"];
    println!(
        "   synced {LAB}: upstream {} -> content version {}, status {}",
        d["upstream_version"].as_str().unwrap_or("?"),
        d["content_version"],
        d["status"].as_str().unwrap_or("?")
    );
    println!(
        "   package sha256 {}",
        d["content_package_hash"].as_str().unwrap_or("?")
    );
    println!(
        "   stored at {} ({} bytes uploaded)",
        d["store"]["url"].as_str().unwrap_or("?"),
        body["uploaded_bytes"]
    );
    for target in d["fanout"].as_array().into_iter().flatten() {
        println!(
            "   fan-out {}: {}",
            target["target"].as_str().unwrap_or("?"),
            target["status"].as_str().unwrap_or("?")
        );
    }
    Ok(body)
}

/// Where the demo writes: a kept directory, or a temporary one removed on drop.
enum WorkDir {
    Kept(PathBuf),
    Temp(tempfile::TempDir),
}

impl WorkDir {
    fn new(keep: Option<PathBuf>) -> Result<Self, Failure> {
        let Some(dir) = keep else {
            return Ok(Self::Temp(tempfile::tempdir()?));
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("--keep {}: cannot create it: {e}", dir.display()))?;
        let mut entries = std::fs::read_dir(&dir)
            .map_err(|e| format!("--keep {}: cannot read it: {e}", dir.display()))?;
        if entries.next().is_some() {
            return Err(format!(
                "--keep {}: the directory is not empty (a previous run's catalog would change \
                 the versions); give a new or empty directory",
                dir.display()
            )
            .into());
        }
        Ok(Self::Kept(std::fs::canonicalize(&dir)?))
    }

    fn path(&self) -> &FsPath {
        match self {
            Self::Kept(dir) => dir,
            Self::Temp(dir) => dir.path(),
        }
    }
}

/// One command that does a step by hand, indented under the step.
fn by_hand(command: &str) {
    println!("   by hand: {command}");
}

/// The registration body a node sends, as the shell would quote it.
fn body_json(registration: &NodeRegistration) -> Result<String, Failure> {
    Ok(serde_json::to_string(registration)?)
}

async fn run(args: Args) -> Result<(), Failure> {
    let work = WorkDir::new(args.keep)?;
    let data_dir = work.path().join("lablet-sync");
    println!("1. starting the outside services on loopback");
    let published = Arc::new(RwLock::new(package("1.0.0", 2)?));
    let mosaic = spawn(Router::new().route(
        "/content/{name}/package.zip",
        get({
            let published = published.clone();
            move || async move { published.read().map(|p| p.clone()).unwrap_or_default() }
        }),
    ))
    .await?;
    let resolver = spawn(Router::new().route(
        "/resolve/{name}",
        get({
            let mosaic = mosaic.clone();
            move |Path(name): Path<String>| async move {
                axum::Json(
                    serde_json::json!({"MOSAIC_BASE_URL": format!("{mosaic}/content/{name}")}),
                )
            }
        }),
    ))
    .await?;
    let deliveries = Arc::new(AtomicUsize::new(0));
    let receiver = |route: &'static str| {
        let deliveries = deliveries.clone();
        Router::new().route(
            route,
            post(move || async move {
                deliveries.fetch_add(1, Ordering::SeqCst);
                "ok"
            }),
        )
    };
    let lds = spawn(receiver("/sync")).await?;
    let se = spawn(receiver("/sync_content")).await?;
    println!("   resolver {resolver}, Mosaic {mosaic}, LDS {lds}, SE {se}");
    println!(
        "   (outside the demo these are your services; the commands below name them by these URLs)"
    );

    println!("2. starting lablet-sync serve (file:// store, embedded catalog)");
    let config = LabletSyncConfig::default()
        .with_resolver_url(resolver.clone())
        .with_lds_url(lds.clone())
        .with_se_url(se.clone())
        .with_data_dir(data_dir.clone());
    let options = ServeOptions::default();
    let app = build_lablet_app(
        config,
        Arc::new(cfgsync_adapter::MemoryRegistrationStore::new()),
        &options,
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        serve_lablets(app, listener, &options, async {
            let _ = stopped.await;
        })
        .await
    });
    println!("   serving the operator API and the node routes on {url}");
    let env = format!("LABLET_RESOLVER_URL={resolver} LABLET_LDS_URL={lds} LABLET_SE_URL={se}");
    let listen = url.trim_start_matches("http://");
    by_hand(&format!(
        "{env} lablet-sync --data-dir {} serve --listen {listen}",
        data_dir.display()
    ));

    println!("3. operator syncs {LAB}");
    operator_sync(&url).await?;
    by_hand(&format!("curl -s -X POST {url}/api/v1/lablets/{LAB}/sync"));
    by_hand(&format!(
        "{env} lablet-sync --data-dir {} sync {LAB}   (without serve running)",
        data_dir.display()
    ));

    println!("4. three nodes boot, register with {{\"lablet\": \"{LAB}\"}} and fetch their files");
    let nodes: Vec<(NodeRegistration, ArtifactOutputMap)> = (1..=3)
        .map(|i| {
            let registration =
                NodeRegistration::new(format!("pod-{i}"), format!("127.0.0.{}", 10 + i).parse()?)
                    .with_metadata(&serde_json::json!({"lablet": LAB}))?;
            Ok((
                registration,
                ArtifactOutputMap::new().with_root(work.path().join(format!("pod-{i}"))),
            ))
        })
        .collect::<Result<_, Failure>>()?;
    let mut shown = None;
    for (registration, outputs) in &nodes {
        let written = register_and_fetch_artifacts(registration, &url, outputs).await?;
        let files: Vec<String> = written
            .iter()
            .map(|w| format!("{} ({} B)", w.path.display(), w.bytes))
            .collect();
        println!("   {} wrote {}", registration.identifier, files.join(", "));
        if shown.is_none() {
            shown = written
                .iter()
                .find(|w| w.artifact == "cml.yaml")
                .map(|w| w.path.clone());
        }
    }
    let shown = shown.ok_or("no node received cml.yaml")?;
    println!("   {}:", shown.display());
    for line in std::fs::read_to_string(&shown)?.lines() {
        println!("   | {line}");
    }
    let (first, _) = nodes.first().ok_or("no node")?;
    let body = body_json(first)?;
    by_hand(&format!(
        "cfgsync-client --server {url} --identifier {} --ip {} --metadata-json '{}' --output-root {}",
        first.identifier,
        first.ip,
        serde_json::to_string(&first.metadata)?,
        work.path().join("pod-1").display()
    ));
    by_hand(&format!(
        "curl -s -X POST {url}/register -H 'content-type: application/json' -d '{body}'"
    ));
    by_hand(&format!(
        "curl -si -X POST {url}/node -H 'content-type: application/json' -d '{body}'   (the files as JSON, with an ETag)"
    ));

    println!("5. Mosaic publishes 1.1.0 (a third router); the nodes wait for a change");
    let client = CfgsyncClient::new(&url)?;
    let mut waiting = Vec::new();
    for (registration, outputs) in nodes {
        let FetchOutcome::Updated { etag, .. } = client
            .fetch_node_config_with(&registration, &FetchOptions::default())
            .await?
        else {
            return Err("expected the current payload".into());
        };
        if waiting.is_empty() {
            by_hand(&format!(
                "curl -si -X POST '{url}/node?wait=30' -H 'content-type: application/json' \
                 -H 'If-None-Match: {}' -d '{}'   (held until the files change)",
                etag.as_deref().unwrap_or("*"),
                body_json(&registration)?
            ));
        }
        let client = client.clone();
        waiting.push(tokio::spawn(async move {
            let options = FetchOptions {
                if_none_match: etag,
                wait: Some(Duration::from_secs(30)),
            };
            match client
                .fetch_node_config_with(&registration, &options)
                .await?
            {
                FetchOutcome::Updated { payload, .. } => {
                    let written =
                        tokio::task::spawn_blocking(move || outputs.write_files(&payload.files))
                            .await??;
                    Ok::<_, Failure>((registration.identifier, written))
                }
                _ => Err(format!("{} saw no change", registration.identifier).into()),
            }
        }));
    }
    *published.write().map_err(|_| "package lock poisoned")? = package("1.1.0", 3)?;

    println!("6. operator re-syncs {LAB}");
    operator_sync(&url).await?;
    by_hand(&format!("curl -s -X POST {url}/api/v1/lablets/{LAB}/sync"));
    for task in waiting {
        let (identifier, written) = tokio::time::timeout(Duration::from_secs(30), task)
            .await??
            .map_err(|e| e.to_string())?;
        let manifest = written
            .iter()
            .find(|w| w.artifact == "content.json")
            .ok_or("no content.json")?;
        let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest.path)?)?;
        println!(
            "   {identifier} rewrote {} files: now content version {} (upstream {})",
            written.len(),
            manifest["version"],
            manifest["upstream_version"].as_str().unwrap_or("?")
        );
        if manifest["version"] != 2 {
            return Err(format!("{identifier} did not get version 2").into());
        }
    }
    println!(
        "   LDS and SE were told {} times in all",
        deliveries.load(Ordering::SeqCst)
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    by_hand(&format!(
        "curl -s {url}/api/v1/lablets/{LAB}   (the catalog record)"
    ));
    println!("7. done: every step succeeded");
    match &work {
        WorkDir::Kept(dir) => {
            println!("   kept {}:", dir.display());
            println!(
                "   {}  lablet-sync's data dir (catalog.redb, store/ with the package)",
                data_dir.display()
            );
            for i in 1..=3 {
                println!(
                    "   {}  the files pod-{i} wrote",
                    dir.join(format!("pod-{i}")).display()
                );
            }
            by_hand(&format!(
                "lablet-sync --data-dir {} catalog show {LAB}",
                data_dir.display()
            ));
        }
        WorkDir::Temp(dir) => println!(
            "   the files above were in {}, removed now; --keep DIR keeps them",
            dir.path().display()
        ),
    }
    Ok(())
}
