//! The servers under test, each run in a child process (this binary re-executed
//! with a hidden subcommand) so its peak RSS is its own: `__serve` is our
//! server with the peer-list materializer, `__bare` a bare axum handler that
//! counts `POST /register` and answers `POST /node` with `425` until N nodes
//! registered, then with the same payload bytes, precomputed (identity only).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use cfgsync_adapter::{
    MemoryRegistrationStore, NodeArtifactsCatalog, RegistrationSnapshot,
    RegistrationSnapshotMaterializer, SnapshotConfigSource, SnapshotMaterialization,
};
use cfgsync_core::{CfgsyncServerState, NodeArtifactsPayload, ServedPayload, serve_cfgsync_on};
use cfgsync_examples::peer_list::PeerListMaterializer;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, Command};

use crate::fleet::{Fleet, PEER_PORT};

/// Which server a child process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Cfgsync,
    Bare,
}

impl ServerKind {
    fn subcommand(self) -> &'static str {
        match self {
            Self::Cfgsync => "__serve",
            Self::Bare => "__bare",
        }
    }
}

const LISTENING: &str = "listening ";
const ENCODED: &str = "encoded-us ";
const BREAKDOWN: &str = "breakdown ";

/// Completes when the parent closes our stdin (or dies).
async fn parent_gone() {
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}

/// Accept backlog of both bench servers (the kernel caps it at
/// `net.core.somaxconn`, 4096 here): with tokio's default of 1024, the burst
/// of 10 000 connections overflowed the queue and the kernel fell back to SYN
/// cookies.
const BACKLOG: u32 = 16_384;

async fn bind_and_announce() -> anyhow::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let listener = socket.listen(BACKLOG)?;
    println!("{LISTENING}http://{}", listener.local_addr()?);
    Ok(listener)
}

/// `__serve`: our server, ready once `nodes` registered.
pub async fn run_cfgsync_server(nodes: usize) -> anyhow::Result<()> {
    let source = SnapshotConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        PeerListMaterializer::new(nodes, PEER_PORT),
    );
    let state = CfgsyncServerState::new(Arc::new(source));
    let listener = bind_and_announce().await?;
    serve_cfgsync_on(listener, state, parent_gone()).await?;
    Ok(())
}

/// The bare handler's state: every node's body, and how many registered.
struct Bare {
    bodies: HashMap<String, Bytes>,
    registered: AtomicUsize,
    expected: usize,
}

/// `__bare`: `POST /register` counts and answers `202`; `POST /node` answers
/// `425` until `nodes` registrations arrived, then the payload of the body's
/// `identifier`.
pub async fn run_bare_server(nodes: usize) -> anyhow::Result<()> {
    let bare = Arc::new(Bare {
        bodies: payload_bodies(nodes).await?,
        registered: AtomicUsize::new(0),
        expected: nodes,
    });
    let router = axum::Router::new()
        .route("/register", axum::routing::post(bare_register))
        .route("/node", axum::routing::post(bare_node))
        .with_state(bare);
    let listener = bind_and_announce().await?;
    axum::serve(listener, router)
        .with_graceful_shutdown(parent_gone())
        .await?;
    Ok(())
}

/// The exact bytes our server sends each node: the same materializer and the
/// same encoding, computed up front.
async fn payload_bodies(nodes: usize) -> anyhow::Result<HashMap<String, Bytes>> {
    let fleet = Fleet::new(nodes)?;
    let snapshot = RegistrationSnapshot::new(1, fleet.registrations()?);
    let materializer = PeerListMaterializer::new(nodes, PEER_PORT);
    let SnapshotMaterialization::Ready(catalog) =
        materializer.materialize_snapshot(&snapshot).await?
    else {
        anyhow::bail!("the peer-list materializer is not ready with all {nodes} nodes");
    };
    let started = Instant::now();
    let bodies = fleet
        .nodes
        .iter()
        .map(|node| {
            let files = catalog
                .payload_files(&node.identifier)
                .with_context(|| format!("no files for {}", node.identifier))?;
            let served = ServedPayload::new(files)?;
            Ok((node.identifier.clone(), served.body()))
        })
        .collect::<anyhow::Result<HashMap<_, _>>>()?;
    println!("{ENCODED}{}", started.elapsed().as_micros());
    breakdown(&fleet, &catalog, &bodies)?;
    Ok(bodies)
}

/// Where building a payload spends its time, measured on the same catalog:
/// the merge with the shared files alone, the SHA-256 ETag over the merged set,
/// and the alternative of encoding the shared files once and splicing them
/// after each node's own (checked byte for byte against the served body).
fn breakdown(
    fleet: &Fleet,
    catalog: &NodeArtifactsCatalog,
    bodies: &HashMap<String, Bytes>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut merged_files = 0;
    for node in &fleet.nodes {
        merged_files += catalog
            .payload_files(&node.identifier)
            .map_or(0, |f| f.len());
    }
    let merge = started.elapsed();

    let started = Instant::now();
    let mut digests = 0;
    for node in &fleet.nodes {
        if let Some(files) = catalog.payload_files(&node.identifier) {
            digests += files.digest().as_bytes()[0] as usize;
        }
    }
    let merge_and_digest = started.elapsed();

    let started = Instant::now();
    let shared = serde_json::to_vec(catalog.shared())?;
    let shared_inner = shared
        .strip_prefix(b"[")
        .and_then(|s| s.strip_suffix(b"]"))
        .context("shared files do not encode as a JSON array")?;
    let mut identical = 0;
    for node in &fleet.nodes {
        let own = catalog
            .node(&node.identifier)
            .with_context(|| format!("no files for {}", node.identifier))?;
        let own_body = serde_json::to_vec(&NodeArtifactsPayload::new(own.clone()))?;
        let head = own_body
            .strip_suffix(b"]}")
            .context("payload does not end with ]}")?;
        let mut body = Vec::with_capacity(head.len() + shared_inner.len() + 3);
        body.extend_from_slice(head);
        body.push(b',');
        body.extend_from_slice(shared_inner);
        body.extend_from_slice(b"]}");
        identical += usize::from(bodies.get(&node.identifier).map(|b| &b[..]) == Some(&body[..]));
    }
    let splice = started.elapsed();
    println!(
        "{BREAKDOWN}merge_us={} merge_digest_us={} splice_us={} splice_identical={}/{} ({merged_files} files, {digests})",
        merge.as_micros(),
        merge_and_digest.as_micros(),
        splice.as_micros(),
        identical,
        fleet.len()
    );
    Ok(())
}

#[derive(Deserialize)]
struct Identifier {
    identifier: String,
}

async fn bare_register(
    State(bare): State<Arc<Bare>>,
    axum::Json(_): axum::Json<Identifier>,
) -> StatusCode {
    bare.registered.fetch_add(1, Ordering::Relaxed);
    StatusCode::ACCEPTED
}

async fn bare_node(
    State(bare): State<Arc<Bare>>,
    axum::Json(who): axum::Json<Identifier>,
) -> Response {
    if bare.registered.load(Ordering::Relaxed) < bare.expected {
        return StatusCode::TOO_EARLY.into_response();
    }
    match bare.bodies.get(&who.identifier) {
        Some(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body.clone(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// A server under test, running in a child process.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    pub url: String,
    /// `__bare`: how long building every node's payload took (one thread).
    pub encode_time: Option<Duration>,
    /// `__bare`: where that time goes (see `breakdown`).
    pub breakdown: Option<String>,
}

impl ServerProcess {
    /// Starts `kind` for `nodes` nodes and waits until it listens.
    pub async fn start(kind: ServerKind, nodes: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let mut child = Command::new(exe)
            .arg(kind.subcommand())
            .arg("--nodes")
            .arg(nodes.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the {kind:?} server"))?;
        let pid = child.id().context("child exited at once")?;
        let stdout = child.stdout.take().context("no child stdout")?;
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(stdout).lines();
        let mut encode_time = None;
        let mut breakdown = None;
        loop {
            // The bare server encodes every payload before it listens.
            let line = tokio::time::timeout(Duration::from_secs(600), lines.next_line())
                .await
                .with_context(|| format!("the {kind:?} server did not start within 600 s"))??
                .with_context(|| format!("the {kind:?} server exited before listening"))?;
            if let Some(us) = line.strip_prefix(ENCODED) {
                encode_time = us.parse().ok().map(Duration::from_micros);
                continue;
            }
            if let Some(text) = line.strip_prefix(BREAKDOWN) {
                breakdown = Some(text.to_owned());
                continue;
            }
            let url = line
                .strip_prefix(LISTENING)
                .with_context(|| format!("unexpected line from the {kind:?} server: {line:?}"))?
                .to_owned();
            return Ok(Self {
                child,
                stdin,
                pid,
                url,
                encode_time,
                breakdown,
            });
        }
    }

    /// The child's peak resident set so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> anyhow::Result<u64> {
        peak_rss_of(self.pid)
    }

    /// CPU time the child used so far (user + system).
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .with_context(|| format!("cannot read /proc/{}/stat", self.pid))?;
        // Fields after the `(comm)` one; utime and stime are the 14th and 15th.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("malformed /proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| -> anyhow::Result<u64> {
            Ok(fields
                .get(i)
                .context("short /proc/PID/stat")?
                .parse::<u64>()?)
        };
        // Clock ticks are 1/100 s on Linux (USER_HZ).
        Ok(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
    }

    /// Reads the peak RSS, then stops the child (graceful, then killed).
    pub async fn stop(mut self) -> anyhow::Result<u64> {
        let peak = self.peak_rss()?;
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            self.child.kill().await?;
        }
        Ok(peak)
    }
}

/// `VmHWM` of a process, in bytes.
pub fn peak_rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .with_context(|| format!("no VmHWM in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}
