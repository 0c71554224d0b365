//! `cfgsync-bench`: how fast the cfgsync server boots a fleet and serves `/node`.
//!
//! Per N it runs our server (peer-list materializer: ready once N nodes
//! registered) in a child process, lets N simulated nodes register and wait
//! (poll and/or long-poll), then measures `/node` throughput with the payload
//! ready, and the same against a bare axum handler serving the same bytes.
//! See BENCHMARKS.md for the numbers and what limits them.

mod fleet;
mod load;
mod registrations;
mod report;
mod servers;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};

use crate::fleet::Fleet;
use crate::load::{Checksums, WaitMode};
use crate::report::{BootRow, LoadRow, SizeReport};
use crate::servers::{ServerKind, ServerProcess};

#[derive(Debug, Parser)]
#[command(
    name = "cfgsync-bench",
    version,
    about = "Benchmark the cfgsync server: boot storm (register + poll/long-poll), /node throughput vs a bare axum handler, peak RSS",
    long_about = "Benchmark the cfgsync server. For each N in --nodes: start our server \
(peer-list materializer, ready once N nodes registered) in a child process, let N \
simulated nodes register and wait for their files (--mode), verify every payload \
(own /config.yaml + the peer list of N), then send --requests POST /node across the N \
identities at --concurrency and do the same against a bare axum handler serving the \
same bytes. Reports wall time, delays, req/s, p50/p99, server peak RSS (VmHWM) and \
errors (must be 0; the exit status is non-zero otherwise). The bare handler also \
meets a poll boot storm (answering 425 until N nodes registered), the reference of \
our storm. --compress makes the nodes ask for gzip (--compress zstd: for zstd). Loopback only.",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// Fleet sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    nodes: Vec<usize>,
    /// Requests in flight at once: registrations and polls in the boot storm,
    /// `/node` requests in the throughput phase (long-polls are held one per node).
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// How nodes wait for their files in the boot storm.
    #[arg(long, value_enum, default_value_t = ModeArg::Both)]
    mode: ModeArg,
    /// Measured `/node` requests per server in the throughput phase (plus 10 %
    /// unmeasured warm-up).
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Throughput rounds per server, alternating ours and the bare handler;
    /// the median round (by req/s) is reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Long-poll wait asked for (`/node?wait=SECS`).
    #[arg(long, default_value_t = 30)]
    wait: u64,
    /// Time limit of each phase, in seconds (a boot storm past it counts the
    /// nodes without files as errors; a throughput phase stops early).
    #[arg(long, default_value_t = 300)]
    phase_timeout: u64,
    /// Target an already running server instead (a fresh peer-list server
    /// expecting exactly N nodes, default node port 4400, e.g.
    /// `cfgsync-bench __serve --nodes N`): one N, one mode; no RSS and no bare
    /// axum ratio.
    #[arg(long)]
    url: Option<String>,
    /// CI mode: N = 20 and 50, both modes, 500 requests; checks 0 errors and
    /// correct files, never times.
    #[arg(long)]
    quick: bool,
    /// Simulated nodes send `Accept-Encoding: gzip` (`--compress` alone or
    /// `--compress gzip`, what our client gets from our server) or
    /// `Accept-Encoding: zstd` (`--compress zstd`): the server answers in that
    /// coding (decoded and verified by the bench; the wire size is reported
    /// beside the JSON size). The bare axum handler always answers identity
    /// bytes.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "gzip", value_name = "CODING")]
    compress: Option<load::Compress>,
    /// Measure registration throughput instead of the boot storm: for each
    /// count in --replicas, start that many servers in this process over one
    /// registration store of this kind (s3: the in-process S3 server, or the
    /// endpoint in CFGSYNC_TEST_S3_ENDPOINT), send --registrations
    /// registrations round-robin at --concurrency, and check every replica
    /// sees them all.
    #[arg(long, value_enum)]
    store: Option<registrations::StoreKind>,
    /// Replica counts to run with --store, comma-separated (above 1 only with
    /// --store s3).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    replicas: Vec<usize>,
    /// Registrations per --store run.
    #[arg(long, default_value_t = 10_000)]
    registrations: usize,
    /// Print the results as JSON instead of tables.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    child: Option<Child>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    Poll,
    LongPoll,
    Both,
}

impl ModeArg {
    fn modes(self) -> Vec<WaitMode> {
        match self {
            Self::Poll => vec![WaitMode::Poll],
            Self::LongPoll => vec![WaitMode::LongPoll],
            Self::Both => vec![WaitMode::Poll, WaitMode::LongPoll],
        }
    }
}

/// The servers under test, run by the bench in child processes.
#[derive(Debug, Subcommand)]
enum Child {
    /// Our server with the peer-list materializer (prints `listening URL`).
    #[command(name = "__serve", hide = true)]
    Serve {
        #[arg(long)]
        nodes: usize,
    },
    /// A bare axum `POST /node` handler serving the same payload bytes.
    #[command(name = "__bare", hide = true)]
    Bare {
        #[arg(long)]
        nodes: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cfgsync-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.child {
            Some(Child::Serve { nodes }) => servers::run_cfgsync_server(nodes)
                .await
                .map(|()| ExitCode::SUCCESS),
            Some(Child::Bare { nodes }) => servers::run_bare_server(nodes)
                .await
                .map(|()| ExitCode::SUCCESS),
            None => run(cli).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cfgsync-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.quick {
        cli.nodes = vec![20, 50];
        cli.requests = cli.requests.min(500);
        cli.rounds = 1;
        cli.mode = ModeArg::Both;
        cli.concurrency = cli.concurrency.min(16);
    }
    if let Some(store) = cli.store {
        return run_registrations(&cli, store, &cli.replicas, cli.registrations).await;
    }
    anyhow::ensure!(
        !cli.nodes.is_empty() && cli.nodes.iter().all(|&n| n > 0),
        "--nodes needs at least one size, each above 0"
    );
    if cli.url.is_some() {
        anyhow::ensure!(
            cli.nodes.len() == 1 && cli.mode != ModeArg::Both && !cli.quick,
            "--url runs one boot storm against a fresh server: give one --nodes value and --mode poll or long-poll"
        );
        eprintln!(
            "note: --url: the server is outside this process tree, so its peak RSS and the bare axum ratio are not measured"
        );
    }
    let limit = Duration::from_secs(cli.phase_timeout);
    let mut reports = Vec::new();
    for &nodes in &cli.nodes {
        let report = run_size(&cli, nodes, limit)
            .await
            .with_context(|| format!("N = {nodes}"))?;
        if !cli.json {
            print!("{}", report::render(&report));
        }
        reports.push(report);
    }
    let errors: usize = reports.iter().map(SizeReport::errors).sum();
    let checks = if cli.quick {
        Vec::new()
    } else {
        report::check_targets(&reports)
    };
    if cli.json {
        let out = serde_json::json!({ "sizes": reports, "targets": checks });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else if cli.quick {
        println!(
            "\nquick: {errors} error(s); every payload checked (own config + peer list); times not checked"
        );
    } else {
        print!("{}", report::render_targets(&checks));
    }
    if errors > 0 {
        eprintln!("cfgsync-bench: {errors} error(s)");
        return Ok(ExitCode::FAILURE);
    }
    if cli.quick {
        // Registrations shared by 3 replicas over the in-process S3.
        return run_registrations(&cli, registrations::StoreKind::S3, &[3], 300).await;
    }
    Ok(ExitCode::SUCCESS)
}

/// `--store`: one registration run per replica count.
async fn run_registrations(
    cli: &Cli,
    store: registrations::StoreKind,
    replicas: &[usize],
    count: usize,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(count > 0, "--registrations needs at least 1");
    let limit = Duration::from_secs(cli.phase_timeout);
    let mut rows = Vec::new();
    for &n in replicas {
        rows.push(
            registrations::run(store, n, count, cli.concurrency, limit)
                .await
                .with_context(|| format!("--store {store:?} with {n} replica(s)"))?,
        );
    }
    if cli.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "registrations": rows }))?
        );
    } else {
        print!("{}", registrations::render(&rows));
    }
    let errors: usize = rows.iter().map(|r| r.errors).sum();
    if errors > 0 {
        eprintln!("cfgsync-bench: {errors} registration error(s)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_size(cli: &Cli, nodes: usize, limit: Duration) -> anyhow::Result<SizeReport> {
    let fleet = Arc::new(Fleet::new(nodes)?);
    let modes = cli.mode.modes();
    let mut boot = Vec::new();
    let mut checksums = Arc::new(Checksums::default());
    let mut ready = None;
    for (i, &mode) in modes.iter().enumerate() {
        let server = match &cli.url {
            Some(_) => None,
            None => Some(ServerProcess::start(ServerKind::Cfgsync, nodes).await?),
        };
        let base = match (&server, &cli.url) {
            (Some(server), _) => server.url.clone(),
            (None, Some(url)) => url.trim_end_matches('/').to_owned(),
            (None, None) => anyhow::bail!("no server to target"),
        };
        let cpu_before = server.as_ref().map(ServerProcess::cpu_time).transpose()?;
        let server_idle_rss = server.as_ref().map(ServerProcess::peak_rss).transpose()?;
        let result = load::boot_storm(
            &base,
            fleet.clone(),
            mode,
            cli.concurrency,
            cli.wait,
            limit,
            cli.compress,
        )
        .await?;
        let server_cpu = match (&server, cpu_before) {
            (Some(server), Some(before)) => Some(server.cpu_time()?.saturating_sub(before)),
            _ => None,
        };
        // Read now: the server of the last mode goes on to the burst (N
        // connections at once) and the throughput phase, whose peak the
        // /node table reports.
        let server_peak_rss = server.as_ref().map(ServerProcess::peak_rss).transpose()?;
        checksums = Arc::new(result.checksums.clone());
        if i + 1 == modes.len() {
            // The payload is ready on this server: /node is measured there,
            // and its peak RSS read at the end.
            boot.push(BootRow {
                result,
                server_cpu,
                server_idle_rss,
                server_peak_rss,
            });
            ready = Some((server, base));
        } else {
            if let Some(server) = server {
                server.stop().await?;
            }
            boot.push(BootRow {
                result,
                server_cpu,
                server_idle_rss,
                server_peak_rss,
            });
        }
    }
    let (server, base) = ready.context("no boot storm ran")?;
    // Memory at N = 10 000 is ~9 GiB for our server, ~4.6 GiB for the bare one
    // and up to ~4.6 GiB in this process during a burst: never hold all three.
    let cfgsync_burst =
        Some(load::burst(&base, fleet.clone(), checksums.clone(), limit, cli.compress).await?);
    let bare = match &cli.url {
        Some(_) => None,
        None => Some(ServerProcess::start(ServerKind::Bare, nodes).await?),
    };
    // The bare handler's own poll boot storm: the reference for ours (it also
    // leaves the bare handler with all N registered for the throughput phase).
    let bare_boot = match &bare {
        Some(bare) => {
            let cpu_before = bare.cpu_time()?;
            let server_idle_rss = Some(bare.peak_rss()?);
            let result = load::boot_storm(
                &bare.url,
                fleet.clone(),
                WaitMode::Poll,
                cli.concurrency,
                cli.wait,
                limit,
                cli.compress,
            )
            .await?;
            Some(BootRow {
                result,
                server_cpu: Some(bare.cpu_time()?.saturating_sub(cpu_before)),
                server_idle_rss,
                server_peak_rss: Some(bare.peak_rss()?),
            })
        }
        None => None,
    };
    // Alternate the two servers round by round, so a busy moment of the
    // machine hits both alike; each reports its median round.
    let mut ours_rounds = Vec::new();
    let mut bare_rounds = Vec::new();
    for _ in 0..cli.rounds.max(1) {
        ours_rounds.push(
            load::throughput(
                &base,
                fleet.clone(),
                checksums.clone(),
                cli.concurrency,
                cli.requests,
                limit,
                cli.compress,
            )
            .await?,
        );
        if let Some(bare) = &bare {
            bare_rounds.push(
                load::throughput(
                    &bare.url,
                    fleet.clone(),
                    checksums.clone(),
                    cli.concurrency,
                    cli.requests,
                    limit,
                    cli.compress,
                )
                .await?,
            );
        }
    }
    let ours_rss = match server {
        Some(server) => Some(server.stop().await?),
        None => None,
    };
    let bare_burst = match &bare {
        Some(bare) => {
            Some(load::burst(&bare.url, fleet.clone(), checksums, limit, cli.compress).await?)
        }
        None => None,
    };
    let (encode_all, encode_breakdown, bare_rss) = match bare {
        Some(bare) => (
            bare.encode_time,
            bare.breakdown.clone(),
            Some(bare.stop().await?),
        ),
        None => (None, None, None),
    };
    let cfgsync = LoadRow::from_rounds(ours_rounds, ours_rss);
    let bare = LoadRow::from_rounds(bare_rounds, bare_rss);
    let payload_bytes = boot.last().map(|b| b.result.identity_bytes);
    let wire_bytes = cfgsync
        .as_ref()
        .and_then(|l| l.result.body_bytes.checked_div(l.result.requests as u64));
    let throughput_ratio = match (&cfgsync, &bare) {
        (Some(ours), Some(bare)) if bare.result.rps > 0.0 => {
            Some(ours.result.rps / bare.result.rps)
        }
        _ => None,
    };
    Ok(SizeReport {
        nodes,
        compress: cli.compress,
        payload_bytes,
        wire_bytes,
        boot,
        bare_boot,
        cfgsync,
        bare,
        throughput_ratio,
        encode_all,
        encode_breakdown,
        cfgsync_burst,
        bare_burst,
    })
}
