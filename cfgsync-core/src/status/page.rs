//! The HTML status page: a shell any cfgsync server's page shares, and the
//! sections of a cfgsync server. Plain HTML and CSS, readable without
//! JavaScript; it reloads itself with a meta refresh.

use chrono::{DateTime, SecondsFormat, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{NodeAnswer, NodeStatus, ReloadOutcome, ServerStatus};

/// How often a status page reloads itself, in seconds.
pub const DEFAULT_REFRESH_SECS: u32 = 5;

/// The page's style sheet (no outside resources).
pub const STYLE: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5rem 2rem; color: #1d2430; background: #fafbfc; }
h1 { font-size: 1.5rem; margin: 0 0 .2rem; }
h1 .version { font-size: .9rem; font-weight: normal; color: #5b6675; }
h2 { font-size: 1.1rem; margin: 1.6rem 0 .5rem; }
p.meta { color: #5b6675; margin: 0 0 1rem; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .25rem 1rem; margin: 0; }
dl.facts dt { color: #5b6675; }
dl.facts dd { margin: 0; }
ul.counts { list-style: none; display: flex; gap: .75rem; padding: 0; margin: 0; flex-wrap: wrap; }
ul.counts li { background: #fff; border: 1px solid #d8dee6; border-radius: 6px; padding: .4rem .8rem; }
ul.counts b { font-size: 1.2rem; margin-right: .3rem; }
table { border-collapse: collapse; width: 100%; background: #fff; }
th, td { border: 1px solid #d8dee6; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #eef1f5; font-weight: 600; }
code { font: 12px/1.4 ui-monospace, monospace; word-break: break-all; }
.ok { color: #116329; font-weight: 600; }
.warn { color: #8a5a00; font-weight: 600; }
.err { color: #b42318; font-weight: 600; }
.muted { color: #7a8594; }
.alert { border-radius: 6px; padding: .7rem 1rem; margin: 1rem 0; }
.alert.error { background: #fdecea; border: 1px solid #f3b8b2; }
"#;

/// The page shell: `title`, the style sheet, a meta refresh every
/// `refresh_secs` (none when 0), and `body`.
pub fn page(title: &str, refresh_secs: u32, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if refresh_secs > 0 {
                    meta http-equiv="refresh" content=(refresh_secs);
                }
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { (body) }
        }
    }
}

/// A moment for people: `2026-12-01 22:40:03 UTC (12 s ago)`, or `—`.
pub fn timestamp(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Markup {
    let Some(at) = at else {
        return html! { span.muted { "—" } };
    };
    let ago = (now - at).num_seconds().max(0);
    let ago = match ago {
        0..60 => format!("{ago} s ago"),
        60..3600 => format!("{} min ago", ago / 60),
        3600..86_400 => format!("{} h ago", ago / 3600),
        _ => format!("{} d ago", ago / 86_400),
    };
    html! {
        time datetime=(at.to_rfc3339_opts(SecondsFormat::Secs, true)) {
            (at.format("%Y-%m-%d %H:%M:%S UTC"))
        }
        " " span.muted { "(" (ago) ")" }
    }
}

fn etag_short(etag: &str) -> Markup {
    let bare = etag.trim_matches('"');
    let short: String = bare.chars().take(12).collect();
    html! {
        code title=(etag) { (short) @if bare.len() > short.len() { "…" } }
    }
}

fn answer_cell(answer: &NodeAnswer) -> Markup {
    match answer {
        NodeAnswer::Ready { files, .. } => html! {
            span.ok { "ready" } " " span.muted { "(" (files) " files)" }
        },
        NodeAnswer::NotReady { reason } => html! { span.warn { "waiting" } ": " (reason) },
        NodeAnswer::Missing { reason } => html! { span.err { "no config" } ": " (reason) },
        NodeAnswer::Failed { error } => html! { span.err { "error" } ": " (error) },
        NodeAnswer::Unknown => html! { span.muted { "—" } },
    }
}

const METADATA_SHOWN: usize = 200;

fn metadata_cell(metadata: Option<&serde_json::Value>) -> Markup {
    let Some(value) = metadata else {
        return html! { span.muted { "—" } };
    };
    let text = value.to_string();
    let shown: String = text.chars().take(METADATA_SHOWN).collect();
    html! { code { (shown) @if text.len() > shown.len() { "…" } } }
}

fn node_row(node: &NodeStatus, now: DateTime<Utc>) -> Markup {
    html! {
        tr data-node=(node.identifier) {
            td { code.identifier { (node.identifier) } }
            td { @if let Some(ip) = node.ip { (ip) } @else { span.muted { "—" } } }
            td { (timestamp(node.registered_at, now)) }
            td {
                (timestamp(node.last_fetch_at, now))
                @if let Some(status) = node.last_status { " " code { (status) } }
            }
            td { @if let Some(etag) = &node.etag_served { (etag_short(etag)) } @else { span.muted { "—" } } }
            td.state { (answer_cell(&node.answer)) }
            td { (metadata_cell(node.metadata.as_ref())) }
        }
    }
}

fn outcome(outcome: Option<ReloadOutcome>) -> Markup {
    match outcome {
        Some(ReloadOutcome::Applied) => html! { span.ok { "applied" } },
        Some(ReloadOutcome::Unchanged) => html! { span.ok { "unchanged" } },
        Some(ReloadOutcome::Failed) => html! { span.err { "failed" } },
        None => html! { span.muted { "none yet" } },
    }
}

/// A cfgsync server's sections: summary, reload error (while there is one),
/// source, counts, then `app_sections`, then the nodes.
pub fn status_sections(status: &ServerStatus, app_sections: &[Markup]) -> Markup {
    let now = status.generated_at;
    let source = &status.source;
    let reload_error = source
        .reload
        .as_ref()
        .and_then(|r| r.last_error.as_ref().map(|e| (r, e)));
    html! {
        header {
            h1 { (status.server) " " span.version { "v" (status.version) } }
            p.meta {
                "Status at " (timestamp(Some(now), now))
                " · up since " (timestamp(Some(status.started_at), now))
                " · auth " b #auth { @if status.auth { "on" } @else { "off" } }
                " · refreshes every " (DEFAULT_REFRESH_SECS) " s"
            }
        }
        @if status.insecure_listener {
            div.alert.error #insecure-listener role="alert" {
                strong { "Insecure: listening beyond loopback with auth off" } ": "
                "anyone who can reach this port can register nodes and read every node's files. "
                "Set auth tokens, or listen on 127.0.0.1."
            }
        }
        @if let Some(error) = &source.error {
            div.alert.error #source-error role="alert" {
                strong { "The source cannot tell its state" } ": " code { (error) }
            }
        }
        @if let Some((reload, error)) = reload_error {
            div.alert.error #reload-error role="alert" {
                strong { "Reload failed" } " at " (timestamp(reload.last_attempt_at, now)) ": "
                code { (error) }
                br;
                "Still serving generation " (source.generation) ", loaded "
                (timestamp(reload.loaded_at, now))
                ". Fix the file: it is loaded again when it changes (or on SIGHUP)."
            }
        }
        section #source {
            h2 { "Source" }
            dl.facts {
                dt { "kind" } dd #source-kind { (source.kind) }
                dt { "file" } dd {
                    @if let Some(file) = &source.file { code { (file.display()) } }
                    @else { span.muted { "—" } }
                }
                dt { "generation" } dd #source-generation { (source.generation) }
                @if let Some(reload) = &source.reload {
                    dt { "reloads" } dd { (reload.triggers) }
                    dt { "loaded" } dd { (timestamp(reload.loaded_at, now)) }
                    dt { "last reload" } dd #last-reload {
                        (timestamp(reload.last_attempt_at, now)) " " (outcome(reload.last_outcome))
                    }
                    dt { "reload count" } dd {
                        (reload.successes) " ok, " (reload.failures) " failed"
                    }
                }
            }
        }
        section #counts {
            h2 { "Nodes at a glance" }
            ul.counts {
                li { b { (status.counts.nodes) } "nodes" }
                li { b.ok { (status.counts.ready) } "ready" }
                li { b.warn #waiting { (status.counts.waiting) } "waiting" }
                li { b { (status.counts.missing) } "without config" }
                @if status.counts.failed > 0 { li { b.err { (status.counts.failed) } "failing" } }
                li { b #long-polls { (status.counts.long_polls_held) } "long-polls held" }
            }
        }
        @for section in app_sections { (section) }
        section #nodes {
            h2 { "Nodes" }
            @if status.nodes.is_empty() {
                p.muted { "No nodes yet." }
            } @else {
                table {
                    thead { tr {
                        th { "Identifier" } th { "IP" } th { "Registered" } th { "Last fetch" }
                        th { "ETag served" } th { "Ready, or why not" } th { "Metadata" }
                    } }
                    tbody { @for node in &status.nodes { (node_row(node, now)) } }
                }
            }
        }
    }
}

/// The whole page of `status`, with `app_sections` (see [`status_sections`]).
pub fn render_status_page(status: &ServerStatus, app_sections: &[Markup]) -> String {
    page(
        &format!("{} status", status.server),
        DEFAULT_REFRESH_SECS,
        status_sections(status, app_sections),
    )
    .into_string()
}
