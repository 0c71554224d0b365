//! What one run measured, as readable tables (and JSON), and the targets of
//! issue 7 checked against it.

use std::fmt::Write as _;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::load::{BootResult, BurstResult, Compress, LoadResult, WaitMode};

/// Serializes a duration as milliseconds (fractional).
pub fn ms<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(value.as_secs_f64() * 1000.0)
}

/// One boot storm and the peak RSS of the server that served it.
#[derive(Debug, Serialize)]
pub struct BootRow {
    #[serde(flatten)]
    pub result: BootResult,
    /// CPU time (user + system) the server used during the storm.
    #[serde(serialize_with = "ms_opt")]
    pub server_cpu: Option<Duration>,
    /// RSS of that server process when it started listening (before the storm).
    pub server_idle_rss: Option<u64>,
    /// Peak RSS of that server process at the end of the storm; `None`
    /// against `--url`.
    pub server_peak_rss: Option<u64>,
}

/// A server's median throughput round and its peak RSS.
#[derive(Debug, Serialize)]
pub struct LoadRow {
    #[serde(flatten)]
    pub result: LoadResult,
    /// req/s of every round, in the order run.
    pub rounds_rps: Vec<f64>,
    /// Errors over all rounds.
    pub errors_all_rounds: usize,
    pub server_peak_rss: Option<u64>,
}

impl BootRow {
    /// What the storm added to the server's peak RSS, per node.
    pub fn rss_per_node(&self) -> Option<u64> {
        let grown = self.server_peak_rss?.saturating_sub(self.server_idle_rss?);
        grown.checked_div(self.result.nodes as u64)
    }
}

impl LoadRow {
    /// The median round (by req/s) of `rounds`; `None` when none ran.
    pub fn from_rounds(rounds: Vec<LoadResult>, server_peak_rss: Option<u64>) -> Option<Self> {
        let rounds_rps = rounds.iter().map(|r| r.rps).collect();
        let errors_all_rounds = rounds.iter().map(|r| r.errors).sum();
        let mut rounds = rounds;
        rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
        let median = rounds.len() / 2;
        let result = rounds.into_iter().nth(median)?;
        Some(Self {
            result,
            rounds_rps,
            errors_all_rounds,
            server_peak_rss,
        })
    }
}

/// Everything measured for one N.
#[derive(Debug, Serialize)]
pub struct SizeReport {
    pub nodes: usize,
    /// The coding the nodes asked for (`--compress`), if any.
    pub compress: Option<Compress>,
    /// Mean `/node` payload (JSON, identity) size.
    pub payload_bytes: Option<u64>,
    /// Mean `/node` body size on the wire from our server (compressed with
    /// `--compress`).
    pub wire_bytes: Option<u64>,
    pub boot: Vec<BootRow>,
    /// The bare handler's poll boot storm.
    pub bare_boot: Option<BootRow>,
    pub cfgsync: Option<LoadRow>,
    pub bare: Option<LoadRow>,
    /// cfgsync rps ÷ bare axum rps.
    pub throughput_ratio: Option<f64>,
    /// Building all N payloads once (merge with the shared files, SHA-256
    /// ETag, JSON), timed in the bare server on one thread: the CPU work our
    /// server does when the fleet becomes ready.
    #[serde(serialize_with = "ms_opt")]
    pub encode_all: Option<Duration>,
    /// Where that time goes: merge alone, merge + SHA-256, and encoding the
    /// shared files once and splicing them per node (with how many spliced
    /// bodies equal the served ones).
    pub encode_breakdown: Option<String>,
    /// All N nodes asking at once with the payloads at hand (our server after
    /// the throughput phase, and the bare handler).
    pub cfgsync_burst: Option<BurstResult>,
    pub bare_burst: Option<BurstResult>,
}

fn ms_opt<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(d) => ms(d, serializer),
        None => serializer.serialize_none(),
    }
}

impl SizeReport {
    pub fn errors(&self) -> usize {
        self.boot
            .iter()
            .chain(&self.bare_boot)
            .map(|b| b.result.errors)
            .sum::<usize>()
            + self.cfgsync.as_ref().map_or(0, |l| l.errors_all_rounds)
            + self.bare.as_ref().map_or(0, |l| l.errors_all_rounds)
            + self.cfgsync_burst.as_ref().map_or(0, |b| b.errors)
            + self.bare_burst.as_ref().map_or(0, |b| b.errors)
    }
}

fn fmt_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

fn fmt_bytes(bytes: Option<u64>) -> String {
    match bytes {
        None => "n/a".into(),
        Some(b) if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / f64::from(1 << 30)),
        Some(b) if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        Some(b) => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

/// The tables of one N.
pub fn render(report: &SizeReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n== N = {} nodes, /node payload {} per node, {} on the wire from cfgsync ({})",
        report.nodes,
        fmt_bytes(report.payload_bytes),
        fmt_bytes(report.wire_bytes),
        match report.compress {
            Some(compress) => format!("nodes ask for {}", compress.name()),
            None => "identity".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "{:<15} {:>10} {:>12} {:>11} {:>11} {:>11} {:>10} {:>7} {:>11} {:>11} {:>9}",
        "boot",
        "wall",
        "registered",
        "delay p50",
        "delay p99",
        "delay max",
        "/node reqs",
        "errors",
        "server CPU",
        "server RSS",
        "RSS/node"
    );
    let rows = report
        .boot
        .iter()
        .map(|row| (row.result.mode.name().to_owned(), row))
        .chain(
            report
                .bare_boot
                .iter()
                .map(|row| (format!("{} (bare)", row.result.mode.name()), row)),
        );
    for (name, row) in rows {
        let b = &row.result;
        let _ = writeln!(
            out,
            "{:<15} {:>10} {:>12} {:>11} {:>11} {:>11} {:>10} {:>7} {:>11} {:>11} {:>9}",
            name,
            fmt_ms(b.wall),
            fmt_ms(b.registered),
            fmt_ms(b.delay_p50),
            fmt_ms(b.delay_p99),
            fmt_ms(b.delay_max),
            b.node_requests,
            b.errors,
            row.server_cpu.map_or_else(|| "n/a".into(), fmt_ms),
            fmt_bytes(row.server_peak_rss),
            row.rss_per_node()
                .map_or_else(|| "n/a".into(), |b| format!("{b} B"))
        );
    }
    let _ = writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>10} {:>10} {:>9} {:>7} {:>11}  (median round; req/s of each round)",
        "/node", "requests", "req/s", "p50", "p99", "max", "errors", "server RSS",
    );
    for (name, row) in [("cfgsync", &report.cfgsync), ("bare axum", &report.bare)] {
        let Some(row) = row else {
            let _ = writeln!(out, "{name:<10} (not run)");
            continue;
        };
        let l = &row.result;
        let _ = writeln!(
            out,
            "{:<10} {:>10} {:>10.0} {:>10} {:>10} {:>9} {:>7} {:>11}  ({}){}",
            name,
            l.requests,
            l.rps,
            fmt_ms(l.p50),
            fmt_ms(l.p99),
            fmt_ms(l.max),
            row.errors_all_rounds,
            fmt_bytes(row.server_peak_rss),
            row.rounds_rps
                .iter()
                .map(|r| format!("{r:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            if l.truncated {
                "  (stopped at the time limit)"
            } else {
                ""
            }
        );
    }
    for (name, burst) in [
        ("cfgsync", &report.cfgsync_burst),
        ("bare axum", &report.bare_burst),
    ] {
        if let Some(b) = burst {
            let _ = writeln!(
                out,
                "all {} nodes at once, payloads at hand, {name}: p50 {}  p99 {}  max {}  errors {}",
                report.nodes,
                fmt_ms(b.p50),
                fmt_ms(b.p99),
                fmt_ms(b.max),
                b.errors
            );
            for e in &b.first_errors {
                let _ = writeln!(out, "  error ({name} burst): {e}");
            }
        }
    }
    if let Some(encode) = report.encode_all {
        let _ = writeln!(
            out,
            "building all {} payloads once (merge + SHA-256 ETag + JSON, one thread): {}",
            report.nodes,
            fmt_ms(encode)
        );
    }
    if let Some(breakdown) = &report.encode_breakdown {
        let _ = writeln!(out, "  of which: {breakdown}");
    }
    match report.throughput_ratio {
        Some(ratio) => {
            let _ = writeln!(out, "cfgsync / bare axum throughput: {ratio:.2}");
        }
        None => {
            let _ = writeln!(out, "cfgsync / bare axum throughput: n/a");
        }
    }
    for row in report.boot.iter().chain(&report.bare_boot) {
        for e in &row.result.first_errors {
            let _ = writeln!(out, "  error ({}): {e}", row.result.mode.name());
        }
    }
    for (name, row) in [("cfgsync", &report.cfgsync), ("bare", &report.bare)] {
        for e in row.iter().flat_map(|r| &r.result.first_errors) {
            let _ = writeln!(out, "  error ({name} /node): {e}");
        }
    }
    out
}

/// One target of issue 7 with what this run measured.
#[derive(Debug, Serialize)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

/// The issue's targets, checked against this run (never in `--quick`).
pub fn check_targets(reports: &[SizeReport]) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let (Some(small), Some(large)) = (
        reports.iter().min_by_key(|r| r.nodes),
        reports.iter().max_by_key(|r| r.nodes),
    ) else {
        return checks;
    };
    if let Some(ratio) = large.throughput_ratio {
        checks.push(TargetCheck {
            target: format!(
                "/node throughput at N={} >= 60% of the bare axum handler",
                large.nodes
            ),
            measured: format!("{:.0}%", ratio * 100.0),
            met: ratio >= 0.6,
        });
    }
    if small.nodes != large.nodes {
        let p99 = |r: &SizeReport, bare: bool| {
            let row = if bare { &r.bare } else { &r.cfgsync };
            row.as_ref().map(|l| l.result.p99.as_secs_f64())
        };
        if let (Some(a), Some(b)) = (p99(small, false), p99(large, false)) {
            let ratio = b / a.max(1e-9);
            let bare = match (p99(small, true), p99(large, true)) {
                (Some(a), Some(b)) => format!(" (bare axum, same bytes: {:.2})", b / a.max(1e-9)),
                _ => String::new(),
            };
            checks.push(TargetCheck {
                target: format!(
                    "/node p99 at N={} / p99 at N={} <= 1.5",
                    large.nodes, small.nodes
                ),
                measured: format!("{ratio:.2}{bare}"),
                met: ratio <= 1.5,
            });
        }
    }
    issue_13_targets(reports, &mut checks);
    for report in reports {
        for row in report
            .boot
            .iter()
            .filter(|b| b.result.mode == WaitMode::LongPoll)
        {
            let median = row.result.delay_p50;
            let floor = report
                .bare_burst
                .as_ref()
                .map(|b| {
                    format!(
                        " (floor: bare axum handing all {} payloads out at once, median {})",
                        report.nodes,
                        fmt_ms(b.p50)
                    )
                })
                .unwrap_or_default();
            checks.push(TargetCheck {
                target: format!(
                    "long-poll at N={}: median delay from the readying registration to files <= 20 ms",
                    report.nodes
                ),
                measured: format!("{}{floor}", fmt_ms(median)),
                met: median <= Duration::from_millis(20),
            });
        }
    }
    checks
}

/// Issue 13: memory per node, the boot storm against the bare handler, and
/// the size on the wire compressed.
fn issue_13_targets(reports: &[SizeReport], checks: &mut Vec<TargetCheck>) {
    for report in reports {
        let poll = report.boot.iter().find(|b| b.result.mode == WaitMode::Poll);
        if let Some(rss) = poll.and_then(|b| b.server_peak_rss)
            && report.nodes >= 10_000
        {
            checks.push(TargetCheck {
                target: format!(
                    "server peak RSS in a poll storm at N={} <= 64 MiB",
                    report.nodes
                ),
                measured: fmt_bytes(Some(rss)),
                met: rss <= 64 << 20,
            });
        }
        if let (Some(ours), Some(bare)) = (poll, &report.bare_boot) {
            let ratio = ours.result.wall.as_secs_f64() / bare.result.wall.as_secs_f64().max(1e-9);
            checks.push(TargetCheck {
                target: format!(
                    "poll boot storm at N={} <= 1.5x the bare axum handler{}",
                    report.nodes,
                    match report.compress {
                        Some(compress) => format!(" (ours {}, bare identity)", compress.name()),
                        None => String::new(),
                    }
                ),
                measured: format!(
                    "{ratio:.2}x ({} vs {})",
                    fmt_ms(ours.result.wall),
                    fmt_ms(bare.result.wall)
                ),
                met: ratio <= 1.5,
            });
        }
        if let (Some(compress), Some(identity), Some(wire)) =
            (report.compress, report.payload_bytes, report.wire_bytes)
        {
            let share = wire as f64 / identity.max(1) as f64;
            checks.push(TargetCheck {
                target: format!(
                    "payload on the wire with {} at N={} <= 25% of identity",
                    compress.name(),
                    report.nodes
                ),
                measured: format!(
                    "{:.1}% ({} of {})",
                    share * 100.0,
                    fmt_bytes(Some(wire)),
                    fmt_bytes(Some(identity))
                ),
                met: share <= 0.25,
            });
        }
    }
}

pub fn render_targets(checks: &[TargetCheck]) -> String {
    let mut out = String::from("\n== targets (issues 7 and 13)\n");
    for c in checks {
        let _ = writeln!(
            out,
            "{} {} — measured {}",
            if c.met { "MET   " } else { "MISSED" },
            c.target,
            c.measured
        );
    }
    out
}
