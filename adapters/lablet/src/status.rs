//! The `lablets` section of `serve`'s status page (`GET /`) and of its JSON
//! twin (`GET /api/v1/status`, under `sections.lablets`): every lablet the
//! server knows (from the catalog, its own sync attempts, the retry queue, the
//! outbox and the nodes' registrations), what was synced, whether every target
//! was told, what waits in the outbox, and the nodes registered for it.
//!
//! Every value that came from a package or a node goes through `maud`'s
//! escaping: it is shown as text, never run as markup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use cfgsync_adapter::RegistrationStore;
use cfgsync_core::status::timestamp;
use cfgsync_core::{RenderedSection, StatusSection};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use serde::Serialize;

use crate::catalog::{CatalogFilter, DeliveryStatus, LabletDefinition, SyncStatus, TargetResult};
use crate::fanout::QueuedDelivery;
use crate::materializer::LabletMaterializer;
use crate::outbox::PendingRecord;
use crate::pipeline::LabletSync;
use crate::{Error, Result};

/// The path of the status page's sync form (`POST`, form field `lablet`).
pub const SYNC_FORM_ROUTE: &str = "/lablets/sync";

/// How many sync attempts are remembered (the oldest is forgotten first).
const ATTEMPTS_KEPT: usize = 1024;

/// How many node identifiers a lablet's row lists (the count covers all).
const NODES_LISTED: usize = 20;

/// The last sync attempt of one lablet through this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncAttempt {
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// When it ended (`None` while it runs).
    pub finished_at: Option<DateTime<Utc>>,
    /// Whether it succeeded (`None` while it runs).
    pub ok: Option<bool>,
    /// The stage it failed at.
    pub stage: Option<&'static str>,
    /// Its error.
    pub error: Option<String>,
}

/// The last sync attempt of each lablet through this server (API, status
/// page), in memory: a sync by the CLI or another replica shows in the catalog,
/// its failures only in its own output.
#[derive(Debug, Default)]
pub(crate) struct SyncAttempts {
    last: Mutex<BTreeMap<String, SyncAttempt>>,
}

impl SyncAttempts {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, SyncAttempt>> {
        self.last.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sync of `name` starts.
    pub(crate) fn started(&self, name: &str) {
        let mut last = self.lock();
        if !last.contains_key(name)
            && last.len() >= ATTEMPTS_KEPT
            && let Some(oldest) = last
                .iter()
                .min_by_key(|(_, a)| a.started_at)
                .map(|(k, _)| k.clone())
        {
            last.remove(&oldest);
        }
        last.insert(
            name.to_owned(),
            SyncAttempt {
                started_at: Utc::now(),
                finished_at: None,
                ok: None,
                stage: None,
                error: None,
            },
        );
    }

    /// The sync of `name` ended with `result`.
    pub(crate) fn finished<T>(&self, name: &str, result: &Result<T>) {
        let mut last = self.lock();
        let attempt = last.entry(name.to_owned()).or_insert_with(|| SyncAttempt {
            started_at: Utc::now(),
            finished_at: None,
            ok: None,
            stage: None,
            error: None,
        });
        attempt.finished_at = Some(Utc::now());
        attempt.ok = Some(result.is_ok());
        attempt.stage = result
            .as_ref()
            .err()
            .and_then(Error::stage)
            .map(|s| s.as_str());
        attempt.error = result.as_ref().err().map(ToString::to_string);
    }

    fn snapshot(&self) -> BTreeMap<String, SyncAttempt> {
        self.lock().clone()
    }
}

/// A queued delivery, as the status shows it (the body is the record's).
#[derive(Debug, Clone, Serialize)]
struct QueuedView {
    target: String,
    attempts: u32,
    last_error: String,
    queued_at: String,
}

/// A kept catalog record, as the status shows it.
#[derive(Debug, Clone, Serialize)]
struct KeptView {
    content_package_hash: String,
    attempts: u32,
    last_error: String,
    queued_at: String,
}

/// The nodes registered for a lablet.
#[derive(Debug, Clone, Default, Serialize)]
struct NodesView {
    /// Their identifiers, sorted.
    registered: Vec<String>,
    /// How many of them wait for content (`425`).
    waiting: usize,
}

/// One lablet in `sections.lablets.lablets`.
#[derive(Debug, Clone, Serialize)]
struct LabletView {
    name: String,
    /// `synced`, `stale`, or `not_synced` (no record in the catalog).
    status: &'static str,
    /// The targets not told yet while `stale`.
    stale_targets: Vec<String>,
    definition_id: Option<String>,
    content_version: Option<u64>,
    upstream_version: Option<String>,
    upstream_date_published: Option<String>,
    upstream_instance_name: Option<String>,
    content_package_hash: Option<String>,
    content_package_size: Option<u64>,
    store: Option<crate::store::StoreLocation>,
    synced_at: Option<String>,
    fanout: Vec<TargetResult>,
    last_attempt: Option<SyncAttempt>,
    queued_deliveries: Vec<QueuedView>,
    kept_records: Vec<KeptView>,
    nodes: NodesView,
}

/// The JSON of the section.
#[derive(Debug, Clone, Serialize)]
struct SectionView {
    lablets: Vec<LabletView>,
    /// What could not be read (the catalog, the queue, the registrations);
    /// the rest is shown.
    errors: Vec<String>,
    /// Where the status page's sync form posts.
    sync_form: &'static str,
}

/// The `lablets` [`StatusSection`] of `serve`.
#[derive(Debug)]
pub(crate) struct LabletsSection {
    pub(crate) sync: Arc<LabletSync>,
    pub(crate) registrations: Arc<dyn RegistrationStore>,
    pub(crate) attempts: Arc<SyncAttempts>,
}

impl LabletsSection {
    async fn view(&self) -> SectionView {
        let mut errors = Vec::new();
        let definitions = self
            .sync
            .catalog()
            .list(&CatalogFilter::default())
            .await
            .unwrap_or_else(|e| {
                errors.push(format!("catalog: {e}"));
                Vec::new()
            });
        let queued = self.sync.pending_deliveries().await.unwrap_or_else(|e| {
            errors.push(format!("retry queue: {e}"));
            Vec::new()
        });
        let kept = self.sync.pending_records().await.unwrap_or_else(|e| {
            errors.push(format!("outbox: {e}"));
            Vec::new()
        });
        let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match self.registrations.snapshot().await {
            Ok(snapshot) => {
                for registration in snapshot.iter() {
                    if let Ok(lablet) = LabletMaterializer::lablet_of(registration) {
                        nodes
                            .entry(lablet)
                            .or_default()
                            .push(registration.identifier.clone());
                    }
                }
            }
            Err(e) => errors.push(format!("registrations: {e}")),
        }
        let attempts = self.attempts.snapshot();

        let mut by_name: BTreeMap<String, LabletDefinition> = definitions
            .into_iter()
            .map(|d| (d.content.lablet.clone(), d))
            .collect();
        let names: BTreeSet<String> = by_name
            .keys()
            .chain(attempts.keys())
            .chain(nodes.keys())
            .cloned()
            .chain(queued.iter().map(|q| q.body.lablet.clone()))
            .chain(kept.iter().map(|k| k.lablet().to_owned()))
            .collect();
        // A catalog that cannot list (CPA guarantees only the record call)
        // may still answer for one definition, as it does for the nodes.
        let unlisted: Vec<&String> = names.iter().filter(|n| !by_name.contains_key(*n)).collect();
        for name in unlisted {
            let Ok(id) = self.sync.definition_id(name) else {
                continue;
            };
            match self.sync.catalog().get(&id).await {
                Ok(Some(definition)) => {
                    by_name.insert(name.clone(), definition);
                }
                Ok(None) => {}
                Err(e) => errors.push(format!("catalog, {name}: {e}")),
            }
        }
        let lablets = names
            .into_iter()
            .map(|name| {
                let definition = by_name.get(&name);
                let mut registered = nodes.remove(&name).unwrap_or_default();
                registered.sort();
                let waiting = if definition.is_some() {
                    0
                } else {
                    registered.len()
                };
                lablet_view(
                    name.clone(),
                    definition,
                    attempts.get(&name).cloned(),
                    queued.iter().filter(|q| q.body.lablet == name),
                    kept.iter().filter(|k| k.lablet() == name),
                    NodesView {
                        registered,
                        waiting,
                    },
                )
            })
            .collect();
        SectionView {
            lablets,
            errors,
            sync_form: SYNC_FORM_ROUTE,
        }
    }
}

fn lablet_view<'a>(
    name: String,
    definition: Option<&LabletDefinition>,
    last_attempt: Option<SyncAttempt>,
    queued: impl Iterator<Item = &'a QueuedDelivery>,
    kept: impl Iterator<Item = &'a PendingRecord>,
    nodes: NodesView,
) -> LabletView {
    let content = definition.map(|d| &d.content);
    let status = match content.map(|c| c.status) {
        Some(SyncStatus::Synced) => "synced",
        Some(SyncStatus::Stale) => "stale",
        _ => "not_synced",
    };
    let fanout = content.map(|c| c.fanout.clone()).unwrap_or_default();
    let stale_targets = fanout
        .iter()
        .filter(|t| t.status != DeliveryStatus::Delivered)
        .map(|t| t.target.clone())
        .collect();
    LabletView {
        name,
        status,
        stale_targets,
        definition_id: definition.map(|d| d.id.clone()),
        content_version: content.map(|c| c.content_version),
        upstream_version: content.and_then(|c| c.upstream_version.clone()),
        upstream_date_published: content.and_then(|c| c.upstream_date_published.clone()),
        upstream_instance_name: content.and_then(|c| c.upstream_instance_name.clone()),
        content_package_hash: content.map(|c| c.content_package_hash.clone()),
        content_package_size: content.map(|c| c.content_package_size),
        store: content.map(|c| c.store.clone()),
        synced_at: content.map(|c| c.synced_at.clone()),
        fanout,
        last_attempt,
        queued_deliveries: queued
            .map(|q| QueuedView {
                target: q.target.clone(),
                attempts: q.attempts,
                last_error: q.last_error.clone(),
                queued_at: q.queued_at.clone(),
            })
            .collect(),
        kept_records: kept
            .map(|k| KeptView {
                content_package_hash: k.content.content_package_hash.clone(),
                attempts: k.attempts,
                last_error: k.last_error.clone(),
                queued_at: k.queued_at.clone(),
            })
            .collect(),
        nodes,
    }
}

/// An RFC 3339 text as a moment for people, or the text itself.
fn moment(text: Option<&str>, now: DateTime<Utc>) -> Markup {
    match text {
        None => timestamp(None, now),
        Some(text) => match DateTime::parse_from_rfc3339(text) {
            Ok(at) => timestamp(Some(at.with_timezone(&Utc)), now),
            Err(_) => html! { (text) },
        },
    }
}

/// Longest package or error text shown in a cell; the whole text is its
/// `title` (and in the JSON twin).
const TEXT_SHOWN: usize = 80;

/// `text`, cut at [`TEXT_SHOWN`] characters.
fn clip(text: &str) -> Markup {
    let shown: String = text.chars().take(TEXT_SHOWN).collect();
    if shown.len() == text.len() {
        return html! { (text) };
    }
    html! { span title=(text) { (shown) "…" } }
}

/// Style of the section (the table is wide: it scrolls, never squeezes).
const SECTION_STYLE: &str = "#lablets .scroll { overflow-x: auto; } \
    #lablets table { min-width: 1100px; } \
    #lablets td { overflow-wrap: anywhere; } \
    #lablets td:first-child { max-width: 16rem; } \
    #lablets td.store { min-width: 13rem; } \
    #lablets td.last-sync, #lablets td.outbox { min-width: 11rem; } \
    #lablets td.nodes { min-width: 8rem; overflow-wrap: normal; } \
    #lablets button { white-space: nowrap; } \
    #lablets td code { word-break: normal; overflow-wrap: anywhere; } \
    #lablets ul.node-list { margin: .2rem 0 0; padding-left: 1.1rem; } \
    #lablets form { margin: 0; } \
    #lablets form.sync-new { margin-top: .8rem; }";

fn short_hash(hash: &str) -> Markup {
    let short: String = hash.chars().take(12).collect();
    html! { code title=(hash) { (short) @if hash.len() > short.len() { "…" } } }
}

fn or_dash(value: Option<&str>) -> Markup {
    match value {
        Some(value) => clip(value),
        None => html! { span.muted { "—" } },
    }
}

fn status_cell(lablet: &LabletView) -> Markup {
    html! {
        @match lablet.status {
            "synced" => span.ok { "synced" },
            "stale" => {
                span.warn { "stale" }
                @if !lablet.stale_targets.is_empty() {
                    ": " span.stale-targets { (lablet.stale_targets.join(", ")) } " not told yet"
                }
            },
            _ => span.muted { "not synced" },
        }
    }
}

fn last_sync_cell(lablet: &LabletView, now: DateTime<Utc>) -> Markup {
    html! {
        (moment(lablet.synced_at.as_deref(), now))
        @if let Some(attempt) = &lablet.last_attempt {
            @match attempt.ok {
                None => { br; span.warn { "syncing" } " since " (timestamp(Some(attempt.started_at), now)) },
                Some(false) => {
                    br;
                    span.err { "last sync failed" }
                    @if let Some(stage) = attempt.stage { " at " b { (stage) } }
                    " " (timestamp(attempt.finished_at, now)) ": "
                    code.sync-error { (clip(attempt.error.as_deref().unwrap_or_default())) }
                },
                Some(true) => {},
            }
        }
    }
}

fn outbox_cell(lablet: &LabletView, now: DateTime<Utc>) -> Markup {
    html! {
        @if lablet.queued_deliveries.is_empty() && lablet.kept_records.is_empty() {
            span.muted { "empty" }
        }
        @for q in &lablet.queued_deliveries {
            div.queued {
                span.warn { (q.target) " queued" } " (" (q.attempts) " attempts, since "
                (moment(Some(&q.queued_at), now)) "): " code { (clip(&q.last_error)) }
            }
        }
        @for k in &lablet.kept_records {
            div.kept {
                span.warn { "record kept" } " " (short_hash(&k.content_package_hash))
                " (" (k.attempts) " attempts): " code { (clip(&k.last_error)) }
            }
        }
    }
}

fn nodes_cell(lablet: &LabletView) -> Markup {
    let nodes = &lablet.nodes;
    html! {
        @if nodes.registered.is_empty() {
            span.muted { "none" }
        } @else {
            b { (nodes.registered.len()) } " registered"
            @if nodes.waiting > 0 { ", " b.warn { (nodes.waiting) } " waiting" }
            ul.node-list {
                @for id in nodes.registered.iter().take(NODES_LISTED) { li { code { (id) } } }
                @if nodes.registered.len() > NODES_LISTED {
                    li.muted { "… and " (nodes.registered.len() - NODES_LISTED) " more" }
                }
            }
        }
    }
}

fn sync_button(name: &str) -> Markup {
    html! {
        form method="post" action=(SYNC_FORM_ROUTE) {
            input type="hidden" name="lablet" value=(name);
            button type="submit" { "Sync now" }
        }
    }
}

fn lablet_row(lablet: &LabletView, now: DateTime<Utc>) -> Markup {
    html! {
        tr id={ "lablet-" (lablet.name) } data-lablet=(lablet.name) {
            td {
                code.lablet { (lablet.name) }
                @if let Some(instance) = &lablet.upstream_instance_name {
                    br; span.muted.instance { (clip(instance)) }
                }
            }
            td.version {
                @if let Some(v) = lablet.content_version { "v" (v) } @else { span.muted { "—" } }
            }
            td.upstream {
                (or_dash(lablet.upstream_version.as_deref()))
                @if let Some(date) = &lablet.upstream_date_published { br; span.muted { (clip(date)) } }
            }
            td { @if let Some(hash) = &lablet.content_package_hash { (short_hash(hash)) } @else { span.muted { "—" } } }
            td.store { @if let Some(store) = &lablet.store { code { (store.url) } } @else { span.muted { "—" } } }
            td.status { (status_cell(lablet)) }
            td.last-sync { (last_sync_cell(lablet, now)) }
            td.outbox { (outbox_cell(lablet, now)) }
            td.nodes { (nodes_cell(lablet)) }
            td { (sync_button(&lablet.name)) }
        }
    }
}

fn render_html(view: &SectionView, now: DateTime<Utc>) -> Markup {
    let stale = view.lablets.iter().filter(|l| l.status == "stale").count();
    let waiting: usize = view.lablets.iter().map(|l| l.nodes.waiting).sum();
    html! {
        section #lablets {
            style { (maud::PreEscaped(SECTION_STYLE)) }
            h2 { "Lablets" }
            @for error in &view.errors {
                div.alert.error role="alert" { strong { "Cannot read" } " " code { (error) } }
            }
            ul.counts {
                li { b { (view.lablets.len()) } "lablets" }
                li { b.warn #stale-lablets { (stale) } "stale" }
                li { b.warn #lablet-nodes-waiting { (waiting) } "nodes waiting for content" }
            }
            @if view.lablets.is_empty() {
                p.muted { "No lablets yet: sync one below." }
            } @else {
                div.scroll { table {
                    thead { tr {
                        th { "Lablet" } th { "Version" } th { "Upstream" } th { "Package" }
                        th { "Stored at" } th { "Status" } th { "Last sync" }
                        th { "Outbox" } th { "Nodes" } th { "" }
                    } }
                    tbody { @for lablet in &view.lablets { (lablet_row(lablet, now)) } }
                } }
            }
            form.sync-new method="post" action=(SYNC_FORM_ROUTE) {
                p {
                    label for="sync-lablet" { "Sync a lablet: " }
                    input #sync-lablet type="text" name="lablet" required
                        pattern="[A-Za-z0-9_][A-Za-z0-9._-]{0,127}" placeholder="LAB-1.1.1";
                    " "
                    button type="submit" { "Sync" }
                    " " span.muted { "(runs the whole sync; the page comes back when it ends)" }
                }
            }
        }
    }
}

#[async_trait]
impl StatusSection for LabletsSection {
    fn key(&self) -> &str {
        "lablets"
    }

    async fn render(&self) -> cfgsync_core::Result<RenderedSection> {
        let view = self.view().await;
        let json = serde_json::to_value(&view).map_err(|e| {
            cfgsync_core::Error::source_failure("cannot encode the lablets section", e)
        })?;
        let html = render_html(&view, Utc::now());
        Ok(RenderedSection::new(json, html))
    }
}
