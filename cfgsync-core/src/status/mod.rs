//! The status of a cfgsync server, for people (`GET /`, an HTML page) and for
//! tools (`GET /api/v1/status`, its JSON twin).
//!
//! The facts come from three places:
//! - the [`ConfigSource`](crate::ConfigSource) describes itself and its nodes
//!   ([`SourceStatus`], from [`ConfigSource::status`](crate::ConfigSource::status));
//! - the server tracks what each node last fetched ([`FetchTracker`]);
//! - an app adds its own sections ([`StatusSection`]), rendered in the same page
//!   shell ([`page`]) and added under `sections` in the JSON.
//!
//! Every value that came from a node (identifiers, IPs, metadata) goes through
//! [`maud`]'s escaping, so it is shown as text and never runs as markup.

mod page;
mod tracker;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use maud;
pub use page::{DEFAULT_REFRESH_SECS, STYLE, page, render_status_page, status_sections, timestamp};
pub use tracker::{FetchTracker, NodeActivity};

use crate::{NodeRegistration, Result};

/// What a node's source would answer it now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum NodeAnswer {
    /// Its payload is ready (`200`).
    Ready {
        /// The ETag of the payload it would get now.
        etag: String,
        /// How many files the payload holds.
        files: usize,
    },
    /// Not yet (`425`), and why.
    NotReady {
        /// Why not, for people.
        reason: String,
    },
    /// There is no config for it (`404`).
    Missing {
        /// Why, for people.
        reason: String,
    },
    /// The source failed to answer (`500`).
    Failed {
        /// The error.
        error: String,
    },
    /// The source does not tell (it does not enumerate its nodes); the node is
    /// known from its requests only.
    Unknown,
}

impl NodeAnswer {
    /// Whether the node would get its payload now.
    pub fn is_ready(&self) -> bool {
        matches!(self, Self::Ready { .. })
    }

    /// The answer of [`ConfigSource::resolve`](crate::ConfigSource::resolve),
    /// with `not_ready` as the reason given for a `425` whose source named none.
    pub fn from_resolved(
        answer: Result<crate::ConfigResolveResponse>,
        not_ready: impl Into<String>,
    ) -> Self {
        match answer {
            Ok(crate::ConfigResolveResponse::Ready(payload)) => Self::Ready {
                etag: payload.etag().to_owned(),
                files: payload.file_count(),
            },
            Ok(crate::ConfigResolveResponse::NotReady) => Self::NotReady {
                reason: not_ready.into(),
            },
            Ok(crate::ConfigResolveResponse::NotReadyBecause { reason }) => {
                Self::NotReady { reason }
            }
            Ok(crate::ConfigResolveResponse::Missing) => Self::Missing {
                reason: "the source has no config for this node".into(),
            },
            Err(error) => Self::Failed {
                error: error.to_string(),
            },
        }
    }
}

/// One node as its source sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceNode {
    /// The node.
    pub identifier: String,
    /// Its registration, when the source holds one.
    pub registration: Option<NodeRegistration>,
    /// What it would be answered now.
    pub answer: NodeAnswer,
}

impl SourceNode {
    /// A node and its answer.
    pub fn new(identifier: impl Into<String>, answer: NodeAnswer) -> Self {
        Self {
            identifier: identifier.into(),
            registration: None,
            answer,
        }
    }

    /// With the registration the source holds.
    #[must_use]
    pub fn with_registration(mut self, registration: NodeRegistration) -> Self {
        self.registration = Some(registration);
        self
    }
}

/// How the last reload of a source's file went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ReloadOutcome {
    /// The file changed and the new set is served.
    Applied,
    /// The file was read again and had not changed.
    Unchanged,
    /// The file could not be loaded; the last good set is still served.
    Failed,
}

/// The reloads of a source's file: when, how, and the error while it fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReloadStatus {
    /// What triggers a reload, for people (e.g. "file polled every 500 ms; SIGHUP").
    pub triggers: String,
    /// When the served set was loaded.
    pub loaded_at: Option<DateTime<Utc>>,
    /// When a reload was last tried.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// How it went.
    pub last_outcome: Option<ReloadOutcome>,
    /// The error of the last reload while it failed; cleared by a good one.
    pub last_error: Option<String>,
    /// Reloads that succeeded (applied or unchanged).
    pub successes: u64,
    /// Reloads that failed.
    pub failures: u64,
}

impl ReloadStatus {
    /// No reload yet; reloads are triggered by `triggers`.
    pub fn new(triggers: impl Into<String>) -> Self {
        Self {
            triggers: triggers.into(),
            loaded_at: None,
            last_attempt_at: None,
            last_outcome: None,
            last_error: None,
            successes: 0,
            failures: 0,
        }
    }
}

/// What a [`ConfigSource`](crate::ConfigSource) tells about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceStatus {
    /// What kind of source, e.g. `bundle`, `registration`.
    pub kind: String,
    /// The file it serves from, if any.
    pub file: Option<PathBuf>,
    /// Changes whenever what the source serves changes.
    pub generation: u64,
    /// Reloads of its file, when it is watched.
    pub reload: Option<ReloadStatus>,
    /// Its nodes and what each would be answered now; `None` when the source
    /// cannot enumerate them (the page then lists the nodes seen in requests).
    pub nodes: Option<Vec<SourceNode>>,
}

impl SourceStatus {
    /// A source of `kind` that does not enumerate its nodes.
    pub fn new(kind: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            file: None,
            generation: 0,
            reload: None,
            nodes: None,
        }
    }

    /// With its generation.
    #[must_use]
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// With its nodes.
    #[must_use]
    pub fn with_nodes(mut self, nodes: Vec<SourceNode>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// With the file it serves from.
    #[must_use]
    pub fn with_file(mut self, file: impl Into<PathBuf>) -> Self {
        self.file = Some(file.into());
        self
    }

    /// With the reloads of its file.
    #[must_use]
    pub fn with_reload(mut self, reload: ReloadStatus) -> Self {
        self.reload = Some(reload);
        self
    }
}

/// The source part of [`ServerStatus`] (its nodes are listed beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct SourceSummary {
    /// See [`SourceStatus::kind`].
    pub kind: String,
    /// See [`SourceStatus::file`].
    pub file: Option<PathBuf>,
    /// See [`SourceStatus::generation`].
    pub generation: u64,
    /// See [`SourceStatus::reload`].
    pub reload: Option<ReloadStatus>,
    /// Why the source could not describe itself, when it could not.
    pub error: Option<String>,
}

/// One node on the status page: what its source says and what it last fetched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeStatus {
    /// The node.
    pub identifier: String,
    /// Its address: registered, or else the one its last request named.
    pub ip: Option<IpAddr>,
    /// Its registration metadata, when the source holds it.
    pub metadata: Option<serde_json::Value>,
    /// When this server last accepted its registration.
    pub registered_at: Option<DateTime<Utc>>,
    /// When it last asked for its files.
    pub last_fetch_at: Option<DateTime<Utc>>,
    /// The HTTP status of that answer.
    pub last_status: Option<u16>,
    /// The ETag it was last served (`200`) or confirmed (`304`).
    pub etag_served: Option<String>,
    /// Whether it would get its payload now.
    pub ready: bool,
    /// What it would be answered now (`state`, and `etag`/`reason`/`error`).
    #[serde(flatten)]
    pub answer: NodeAnswer,
}

/// Node counts of [`ServerStatus`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct StatusCounts {
    /// Nodes listed.
    pub nodes: usize,
    /// Nodes that would get their payload now.
    pub ready: usize,
    /// Nodes waiting: registered but not ready (`425`).
    pub waiting: usize,
    /// Nodes without config (`404`).
    pub missing: usize,
    /// Nodes whose answer failed.
    pub failed: usize,
    /// `POST /node?wait=` requests held right now.
    pub long_polls_held: u64,
}

/// The whole status of a cfgsync server: the JSON of `GET /api/v1/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerStatus {
    /// The server's name, e.g. `cfgsync-server`.
    pub server: String,
    /// Its version.
    pub version: String,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When this status was taken.
    pub generated_at: DateTime<Utc>,
    /// Whether auth is on.
    pub auth: bool,
    /// Whether a listener serving these routes is open beyond loopback with
    /// auth off (anyone who reaches it can register and read every node's
    /// files); the page shows a warning while it is.
    pub insecure_listener: bool,
    /// The config source.
    pub source: SourceSummary,
    /// Node counts.
    pub counts: StatusCounts,
    /// The nodes, sorted by identifier.
    pub nodes: Vec<NodeStatus>,
    /// The app's sections, by [`StatusSection::key`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sections: BTreeMap<String, serde_json::Value>,
}

/// A section an app adds to the status page and its JSON twin (register it
/// with [`CfgsyncServerStateBuilder::with_status_section`](crate::CfgsyncServerStateBuilder::with_status_section)).
#[async_trait]
pub trait StatusSection: Send + Sync + std::fmt::Debug + 'static {
    /// The key of this section's facts under `sections` in `GET /api/v1/status`.
    fn key(&self) -> &str;

    /// The section now: its facts and the HTML that shows them. Build the HTML
    /// with [`maud::html!`], which escapes every value spliced in.
    async fn render(&self) -> Result<RenderedSection>;
}

/// One rendering of a [`StatusSection`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RenderedSection {
    /// The facts, as JSON.
    pub json: serde_json::Value,
    /// The HTML (a `<section>` or a few), shown after the server summary.
    pub html: maud::Markup,
}

impl RenderedSection {
    /// A rendering of `json` shown as `html`.
    pub fn new(json: serde_json::Value, html: maud::Markup) -> Self {
        Self { json, html }
    }
}

/// The operator's token in a request: a bearer token, or the password of HTTP
/// Basic auth (what a browser sends after a `401` with a Basic challenge; the
/// user name is ignored). The status routes check it with
/// [`AuthConfig::authorize`](crate::AuthConfig::authorize) for
/// [`Access::Admin`](crate::auth::Access::Admin); an app's operator routes that
/// people reach from the page can do the same (guard browser form posts
/// against cross-site requests: a browser sends Basic credentials with them).
pub fn operator_token(headers: &http::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(credentials.to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (_, password) = text.split_once(':')?;
    Some(password.to_owned())
}

/// Puts the source's view and the tracker's together, one row per node.
pub(crate) fn node_rows(
    nodes: Option<Vec<SourceNode>>,
    tracker: &FetchTracker,
) -> (Vec<NodeStatus>, StatusCounts) {
    let activity = tracker.snapshot();
    let rows: Vec<NodeStatus> = match nodes {
        Some(nodes) => {
            // The tracker holds nodes the source knows (or knew): forget the
            // others so it stays as large as the source's node set.
            let known: HashSet<&str> = nodes.iter().map(|n| n.identifier.as_str()).collect();
            tracker.retain(|id| known.contains(id));
            let mut nodes = nodes;
            nodes.sort_by(|a, b| a.identifier.cmp(&b.identifier));
            nodes
                .into_iter()
                .map(|node| {
                    let seen = activity.get(&node.identifier).cloned().unwrap_or_default();
                    let (ip, metadata) = match &node.registration {
                        Some(r) => (
                            Some(r.ip),
                            (!r.metadata.is_empty()).then(|| r.metadata.as_value().clone()),
                        ),
                        None => (seen.ip, None),
                    };
                    row(node.identifier, ip, metadata, &seen, node.answer)
                })
                .collect()
        }
        None => {
            let mut seen: Vec<_> = activity.into_iter().collect();
            seen.sort_by(|a, b| a.0.cmp(&b.0));
            seen.into_iter()
                .map(|(identifier, seen)| {
                    let ip = seen.ip;
                    row(identifier, ip, None, &seen, NodeAnswer::Unknown)
                })
                .collect()
        }
    };
    let mut counts = StatusCounts {
        nodes: rows.len(),
        ..StatusCounts::default()
    };
    for row in &rows {
        match row.answer {
            NodeAnswer::Ready { .. } => counts.ready += 1,
            NodeAnswer::NotReady { .. } => counts.waiting += 1,
            NodeAnswer::Missing { .. } => counts.missing += 1,
            NodeAnswer::Failed { .. } => counts.failed += 1,
            NodeAnswer::Unknown => {}
        }
    }
    (rows, counts)
}

fn row(
    identifier: String,
    ip: Option<IpAddr>,
    metadata: Option<serde_json::Value>,
    seen: &NodeActivity,
    answer: NodeAnswer,
) -> NodeStatus {
    NodeStatus {
        identifier,
        ip,
        metadata,
        registered_at: seen.registered_at,
        last_fetch_at: seen.last_fetch_at,
        last_status: seen.last_status,
        etag_served: seen.etag_served.clone(),
        ready: answer.is_ready(),
        answer,
    }
}
