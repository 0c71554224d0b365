//! Live reload of the bundle / artifacts file of a config-driven server.
//!
//! The file is polled (its size, mtime, inode) off the request path; a change
//! that has settled for one poll is read, compared by SHA-256 with what is
//! served, parsed, checked, and swapped in at once. `SIGHUP` (in the binary)
//! reloads too. A file that cannot be read, parsed or checked leaves the last
//! good set serving; the error is logged, counted on `/metrics` and shown on
//! the status page until a good version arrives.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use cfgsync_adapter::StaticArtifactsMaterializer;
use cfgsync_artifacts::ArtifactSet;
use cfgsync_core::document::parse_document;
use cfgsync_core::status::{ReloadOutcome, ReloadStatus};
use cfgsync_core::{
    BundleConfigSource, ConfigResolveResponse, ConfigSource, NodeArtifactsBundle, NodeRegistration,
    RegistrationArtifacts, SourceStatus,
};
use chrono::Utc;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::{Error, Result};

/// How the served file is watched (`reload:` in the server config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadConfig {
    /// Poll the file and reload it when it changes (default `true`). `SIGHUP`
    /// reloads either way.
    pub watch: bool,
    /// How often the file is looked at, in milliseconds (default 500). A change
    /// is loaded once it held for one poll, so within two polls.
    pub poll_interval_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            poll_interval_ms: 500,
        }
    }
}

impl ReloadConfig {
    /// The poll interval (at least 10 ms).
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
}

/// What the file is loaded into.
#[derive(Debug, Clone)]
enum Target {
    Bundle(Arc<BundleConfigSource>),
    Artifacts(Arc<StaticArtifactsMaterializer>),
}

/// What the file holds, by kind.
enum Document {
    Bundle(NodeArtifactsBundle),
    Artifacts(RegistrationArtifacts),
}

/// Which kind of file a [`FileReloader`] serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FileKind {
    /// A bundle (`nodes: [{identifier, files}]`, `shared_files`).
    Bundle,
    /// An artifacts map (`nodes: {id: {files}}`, `shared: {files}`).
    Artifacts,
}

impl FileKind {
    fn what(self) -> &'static str {
        match self {
            Self::Bundle => "cfgsync bundle",
            Self::Artifacts => "cfgsync artifacts file",
        }
    }
}

/// What the poller looks at: a change of any of these means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    File {
        len: u64,
        modified: Option<SystemTime>,
        inode: (u64, u64),
    },
    Unreadable(std::io::ErrorKind),
}

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(meta) => Stamp::File {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: inode(&meta),
        },
        Err(e) => Stamp::Unreadable(e.kind()),
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn inode(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// Reload metrics, registered as `cfgsync_reload_*` and `cfgsync_source_generation`.
#[derive(Debug, Clone, Default)]
struct ReloadMetrics {
    successes: Counter,
    failures: Counter,
    last_success: Gauge,
    failing: Gauge,
    generation: Gauge,
}

impl ReloadMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let registry = registry.sub_registry_with_prefix("cfgsync");
        registry.register(
            "reload_success",
            "Reloads of the served file that succeeded (applied or unchanged)",
            metrics.successes.clone(),
        );
        registry.register(
            "reload_failures",
            "Reloads of the served file that failed (the last good set kept serving)",
            metrics.failures.clone(),
        );
        registry.register(
            "reload_last_success_timestamp_seconds",
            "Unix time of the last successful load of the served file",
            metrics.last_success.clone(),
        );
        registry.register(
            "reload_failing",
            "1 while the last reload of the served file failed, else 0",
            metrics.failing.clone(),
        );
        registry.register(
            "source_generation",
            "Versions of the served file loaded since start (1 = the first)",
            metrics.generation.clone(),
        );
        metrics
    }
}

#[derive(Debug)]
struct State {
    status: ReloadStatus,
    digest: [u8; 32],
    generation: u64,
    /// The file as it was when last read (by any trigger).
    seen: Stamp,
}

/// Loads a served file and loads it again on demand ([`reload`](Self::reload))
/// or when it changes ([`watch`](Self::watch)), swapping the new set in at
/// once and keeping the last good set on a bad version.
#[derive(Debug)]
pub struct FileReloader {
    path: PathBuf,
    kind: FileKind,
    target: Target,
    state: Mutex<State>,
    metrics: ReloadMetrics,
}

impl FileReloader {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The file served.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Versions of the file loaded so far (1 = the first).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// How loading went so far.
    pub fn status(&self) -> ReloadStatus {
        self.lock().status.clone()
    }

    /// Reloads on every `SIGHUP` from now on (a task runs until the reloader
    /// is dropped), and says so on the status page.
    #[cfg(unix)]
    pub fn reload_on_sighup(self: &Arc<Self>) -> Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup()).map_err(|source| Error::Signal {
            signal: "SIGHUP",
            source,
        })?;
        {
            let mut state = self.lock();
            if !state.status.triggers.contains("SIGHUP") {
                state.status.triggers.push_str("; SIGHUP");
            }
        }
        let weak = Arc::downgrade(self);
        Ok(tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                let Some(reloader) = weak.upgrade() else {
                    return;
                };
                tracing::info!(file = %reloader.path.display(), "SIGHUP: reloading");
                reloader.reload_async().await;
            }
        }))
    }

    /// Reads the file again and serves it if it changed. Blocking file I/O:
    /// call from a blocking context (`spawn_blocking`) inside a server.
    pub fn reload(&self) -> ReloadOutcome {
        // One reload at a time, read and swap under the lock: two triggers at
        // once never swap an older read over a newer one.
        let mut state = self.lock();
        state.seen = stamp(&self.path);
        let loaded = read(&self.path, self.kind);
        let now = Utc::now();
        state.status.last_attempt_at = Some(now);
        let outcome = match loaded {
            Ok((digest, _)) if digest == state.digest => Ok(ReloadOutcome::Unchanged),
            Ok((digest, document)) => self.apply(document).map(|()| {
                state.digest = digest;
                state.generation += 1;
                state.status.loaded_at = Some(now);
                ReloadOutcome::Applied
            }),
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(outcome) => {
                state.status.successes += 1;
                state.status.last_error = None;
                self.metrics.successes.inc();
                self.metrics.failing.set(0);
                self.metrics.last_success.set(now.timestamp());
                self.metrics
                    .generation
                    .set(i64::try_from(state.generation).unwrap_or(i64::MAX));
                match outcome {
                    ReloadOutcome::Applied => tracing::info!(
                        file = %self.path.display(),
                        generation = state.generation,
                        "reloaded: the new set is served"
                    ),
                    _ => tracing::debug!(file = %self.path.display(), "reload: file unchanged"),
                }
                outcome
            }
            Err(error) => {
                state.status.failures += 1;
                state.status.last_error = Some(error.to_string());
                self.metrics.failures.inc();
                self.metrics.failing.set(1);
                tracing::error!(
                    file = %self.path.display(),
                    generation = state.generation,
                    error = %error,
                    "reload failed; still serving the last good set"
                );
                ReloadOutcome::Failed
            }
        };
        state.status.last_outcome = Some(outcome);
        outcome
    }

    fn apply(&self, document: Document) -> Result<()> {
        match (&self.target, document) {
            (Target::Bundle(source), Document::Bundle(bundle)) => source
                .replace_bundle(bundle)
                .map_err(|e| invalid(&self.path, self.kind, e)),
            (Target::Artifacts(materializer), Document::Artifacts(artifacts)) => materializer
                .replace_artifacts(artifacts)
                .map_err(|e| invalid(&self.path, self.kind, e)),
            // `read` parses by `self.kind`, which chose the target.
            _ => Err(Error::Config {
                path: self.path.clone(),
                message: "file kind and target disagree".into(),
            }),
        }
    }

    /// Reloads on a blocking thread (see [`reload`](Self::reload)).
    pub async fn reload_async(self: &Arc<Self>) -> ReloadOutcome {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.reload())
            .await
            .unwrap_or(ReloadOutcome::Failed)
    }

    /// Polls the file every `interval` and reloads it once a change held for
    /// one poll (an editor's write in several steps is read once, complete).
    /// Runs until the reloader is dropped.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut previous: Option<Stamp> = None;
            loop {
                ticker.tick().await;
                let Some(reloader) = weak.upgrade() else {
                    return;
                };
                let path = reloader.path.clone();
                let Ok(now) = tokio::task::spawn_blocking(move || stamp(&path)).await else {
                    continue;
                };
                let settled = previous.as_ref() == Some(&now);
                if settled && reloader.lock().seen != now {
                    reloader.reload_async().await;
                }
                previous = Some(now);
            }
        })
    }
}

fn invalid(path: &Path, kind: FileKind, error: impl std::fmt::Display) -> Error {
    Error::Core(cfgsync_core::Error::ParseFile {
        path: path.to_path_buf(),
        what: kind.what(),
        message: error.to_string(),
    })
}

fn read(path: &Path, kind: FileKind) -> Result<([u8; 32], Document)> {
    let bytes = std::fs::read(path).map_err(|source| cfgsync_core::Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let document = match kind {
        FileKind::Bundle => Document::Bundle(parse_document(path, &bytes, kind.what())?),
        FileKind::Artifacts => Document::Artifacts(parse_document(path, &bytes, kind.what())?),
    };
    Ok((digest, document))
}

/// A config source served from a file that reloads, with its reloader: the
/// source for the server state, the reloader for `SIGHUP` and the watcher.
#[derive(Debug)]
pub struct ReloadableSource {
    /// The source to serve (reports the file and its reloads on the status page).
    pub source: Arc<dyn ConfigSource>,
    /// Reloads the file into it.
    pub reloader: Arc<FileReloader>,
}

/// Loads `path` as `kind`; the source serves it, over `store` for
/// [`FileKind::Artifacts`]. Reload metrics are registered in `registry`.
/// Fails (as at start-up) when the file cannot be read, parsed or checked.
pub fn load_reloadable(
    path: &Path,
    kind: FileKind,
    store: Option<Arc<dyn cfgsync_adapter::RegistrationStore>>,
    registry: &mut Registry,
    triggers: impl Into<String>,
) -> Result<ReloadableSource> {
    let seen = stamp(path);
    let (digest, document) = read(path, kind)?;
    let (target, inner): (Target, Arc<dyn ConfigSource>) = match document {
        Document::Bundle(bundle) => {
            let source = Arc::new(
                BundleConfigSource::from_bundle(bundle).map_err(|e| invalid(path, kind, e))?,
            );
            (Target::Bundle(source.clone()), source)
        }
        Document::Artifacts(artifacts) => {
            let materializer = Arc::new(
                StaticArtifactsMaterializer::new(artifacts).map_err(|e| invalid(path, kind, e))?,
            );
            let store =
                store.unwrap_or_else(|| Arc::new(cfgsync_adapter::MemoryRegistrationStore::new()));
            let source = Arc::new(cfgsync_adapter::MaterializingConfigSource::new(
                store,
                materializer.clone(),
            ));
            (Target::Artifacts(materializer), source)
        }
    };
    let now = Utc::now();
    let mut status = ReloadStatus::new(triggers);
    status.loaded_at = Some(now);
    let metrics = ReloadMetrics::register(registry);
    metrics.generation.set(1);
    metrics.last_success.set(now.timestamp());
    let reloader = Arc::new(FileReloader {
        path: path.to_path_buf(),
        kind,
        target,
        state: Mutex::new(State {
            status,
            digest,
            generation: 1,
            seen,
        }),
        metrics,
    });
    let source = Arc::new(ReloadingSource {
        inner,
        reloader: reloader.clone(),
    });
    Ok(ReloadableSource { source, reloader })
}

/// Serves `inner` and tells the status page about the file and its reloads.
#[derive(Debug)]
struct ReloadingSource {
    inner: Arc<dyn ConfigSource>,
    reloader: Arc<FileReloader>,
}

#[async_trait]
impl ConfigSource for ReloadingSource {
    async fn register(&self, registration: NodeRegistration) -> cfgsync_core::Result<()> {
        self.inner.register(registration).await
    }

    async fn resolve(
        &self,
        registration: &NodeRegistration,
    ) -> cfgsync_core::Result<ConfigResolveResponse> {
        self.inner.resolve(registration).await
    }

    async fn replace(&self, identifier: &str, files: ArtifactSet) -> cfgsync_core::Result<()> {
        self.inner.replace(identifier, files).await
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.inner.changes()
    }

    async fn check_ready(&self) -> cfgsync_core::Result<()> {
        self.inner.check_ready().await
    }

    async fn status(&self) -> cfgsync_core::Result<SourceStatus> {
        let status = self.inner.status().await?;
        let reload = self.reloader.status();
        Ok(status
            .with_file(self.reloader.path())
            .with_generation(self.reloader.generation())
            .with_reload(reload))
    }
}
