//! `lablet-sync`: sync lablets, inspect packages, query the catalog, drain the
//! retry queue (fan-out deliveries and kept catalog records), serve the operator
//! API. Configuration comes from the `LABLET_*` / `AWS_*` environment variables
//! (see the crate README).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use cfgsync_lablet::LABLET_SETTINGS;
use cfgsync_lablet::catalog::{CatalogFilter, LabletDefinition, SyncStatus};
use cfgsync_lablet::inspect::{inspect_package, sha256_file};
use cfgsync_lablet::{
    LabletSync, LabletSyncConfig, NodeTokenScope, ServeOptions, Stage, build_lablet_app,
    serve_lablets,
};
use cfgsync_runtime::logging::{DEFAULT_LOG_FILTER, LogFormat, init_logging};
use cfgsync_runtime::settings::cli as settings_cli;
use cfgsync_runtime::settings::{self, Setting, parse_number, parse_secs};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};

/// Exit code of a sync that stored and recorded the package but left a fan-out
/// target stale, and of a `retry` that left something queued.
const EXIT_STALE: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "lablet-sync",
    version,
    about = "Sync lablet content: resolve, download from Mosaic, inspect, store, fan out to LDS/SE, record.",
    long_about = "Sync lablet content: resolve, download from Mosaic, inspect, store, fan out to LDS/SE, record.\n\n\
Every setting is a flag that falls back to its LABLET_* variable (listed below with its default; \
a flag wins over its variable); s3:// stores also read the standard AWS_* variables. \
Logs go to stderr (RUST_LOG; default info for serve, error for the one-shot commands, \
which print their own progress and one error line).\n\n\
Exit codes: 0 success, 1 failure, 2 bad usage (a bad flag or variable), 3 synced but a fan-out \
target is stale (retry: something is still queued)."
)]
struct Cli {
    /// Log lines (stderr) as text or JSON, one object per line.
    #[arg(long, global = true, value_enum, env = "LABLET_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sync one lablet end to end.
    Sync {
        /// Lablet name, e.g. LAB-1.1.1.
        name: String,
        /// Print the full recorded definition as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Inspect a package zip: print its ADR-025 fields or the exact reject reason.
    Inspect {
        /// Path of the zip.
        package: PathBuf,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Query the catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Try everything in the retry queue once: fan-out deliveries, and catalog
    /// records that failed after their package was stored.
    Retry,
    /// Serve the operator API (/api/v1/lablets), the status page (/, JSON twin
    /// /api/v1/status, with a sync form) and the cfgsync routes for nodes
    /// (/register, /node, /healthz, /readyz, /metrics) until SIGTERM or ctrl-c.
    ///
    /// Tokens (auth is off while none is set): LABLET_OPERATOR_TOKEN for the
    /// operator API, the status page and /node/replace (a browser gives it as
    /// the Basic password), CFGSYNC_NODE_SECRET (per-node tokens) and
    /// CFGSYNC_SHARED_TOKEN for the node routes. Per-node tokens are scoped
    /// to the node's lablet (mint them with `node-token --lablet`).
    Serve,
    /// Print the per-node token of each NODE, scoped to one lablet: with it a
    /// node registers and fetches only that lablet from `serve`. Needs
    /// CFGSYNC_NODE_SECRET, the secret `serve` runs with. Prints
    /// `NODE<TAB>TOKEN` lines.
    NodeToken {
        /// The lablet the tokens are scoped to, e.g. LAB-1.1.1.
        #[arg(long, value_name = "NAME")]
        lablet: String,
        /// Node identifiers.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// What `serve` runs with, beside the sync configuration.
#[derive(Debug, Default)]
struct ServeSettings {
    listen: Option<std::net::SocketAddr>,
    registration_store: cfgsync_runtime::RegistrationStoreConfig,
    options: ServeOptions,
}

impl ServeSettings {
    fn listen(&self) -> std::net::SocketAddr {
        self.listen
            .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 4400)))
    }
}

type S = Setting<ServeSettings>;

/// The settings of `serve`, declared once (flag, variable, default, parser).
const SERVE_SETTINGS: &[Setting<ServeSettings>] = &[
    S::new("LABLET_LISTEN", "--listen", "ADDR", "Address to listen on", |c, v| {
        c.listen = Some(v.trim().parse().map_err(|e| format!("not an address such as 127.0.0.1:4400 ({e})"))?);
        Ok(())
    })
    .default("127.0.0.1:4400"),
    S::new("LABLET_REGISTRATION_STORE", "--registration-store", "URL", "Where node registrations live: memory, file:///DIR (durable) or an object store URL such as s3://bucket/prefix", |c, v| {
        c.registration_store = v.trim().parse()?;
        Ok(())
    })
    .default("memory"),
    S::new("LABLET_RETRY_INTERVAL_SECS", "--retry-interval-secs", "DURATION", "Time between background drains of the retry queue: seconds, or 30s, 5m", |c, v| {
        c.options.retry_interval = std::time::Duration::from_secs(parse_secs(v)?.max(1));
        Ok(())
    })
    .default("30"),
    S::new("LABLET_HEADER_READ_TIMEOUT_SECS", "--header-read-timeout-secs", "DURATION", "Time a client has to send a whole request head once its first byte arrived (and the longest pause inside a body); closed past it", |c, v| {
        c.options.limits.header_read_timeout_secs = parse_secs(v)?.max(1);
        Ok(())
    })
    .default("10"),
    S::new("LABLET_IDLE_TIMEOUT_SECS", "--idle-timeout-secs", "DURATION", "Time a connection may stay open with no request in flight (held long-polls are in flight)", |c, v| {
        c.options.limits.idle_timeout_secs = parse_secs(v)?.max(1);
        Ok(())
    })
    .default("30"),
    S::new("LABLET_MAX_CONNECTIONS", "--max-connections", "N", "Most connections served at once; one more is answered 503 and closed", |c, v| {
        c.options.limits.max_connections = Some(parse_number(v)?);
        Ok(())
    })
    .default("the open-file limit less a sixteenth"),
    S::new("LABLET_SHUTDOWN_TIMEOUT_SECS", "--shutdown-timeout-secs", "DURATION", "On SIGTERM / ctrl-c: time in-flight requests get to finish", |c, v| {
        c.options.limits.shutdown_timeout_secs = parse_secs(v)?;
        Ok(())
    })
    .default("30"),
    S::new("LABLET_NODE_TOKEN_SCOPE", "--node-token-scope", "SCOPE", "Per-node tokens (CFGSYNC_NODE_SECRET): `required` accepts only tokens scoped to the lablet the node registers for (mint them with `node-token --lablet`); `optional` accepts unscoped ones too. A scoped token is held to its lablet either way", |c, v| {
        c.options.node_tokens = match v.trim() {
            "required" => NodeTokenScope::Required,
            "optional" => NodeTokenScope::Optional,
            _ => return Err("expected `required` or `optional`".into()),
        };
        Ok(())
    })
    .default("required"),
    S::new("LABLET_JOBS_KEPT", "--jobs-kept", "N", "Sync jobs (POST .../sync with `Prefer: respond-async`) kept in this process's memory for GET /api/v1/jobs/{id}; the oldest finished one makes room", |c, v| {
        c.options.jobs_kept = parse_number(v)?;
        Ok(())
    })
    .default("100"),
    S::new("LABLET_OPERATOR_TOKEN", "--operator-token", "TOKEN", "Operator (admin) token of the operator API, the status page and /node/replace; unset: open", |c, v| {
        c.options.auth.admin_token = Some(cfgsync_core::Secret::new(v));
        Ok(())
    })
    .secret(),
    S::new("CFGSYNC_NODE_SECRET", "--node-secret", "SECRET", "Secret of the per-node tokens of the node routes", |c, v| {
        c.options.auth.node_secret = Some(cfgsync_core::Secret::new(v));
        Ok(())
    })
    .secret(),
    S::new("CFGSYNC_SHARED_TOKEN", "--shared-token", "TOKEN", "Bearer token any node may use on the node routes", |c, v| {
        c.options.auth.shared_token = Some(cfgsync_core::Secret::new(v));
        Ok(())
    })
    .secret(),
];

/// Prefixes of the variables checked for likely typos at start.
const VAR_PREFIXES: &[&str] = &["LABLET_", "CFGSYNC_"];

/// The command line: the subcommands, the sync settings ([`LABLET_SETTINGS`],
/// accepted before or after the subcommand) and `serve`'s own settings.
fn command() -> clap::Command {
    Cli::command()
        .args(settings_cli::args(LABLET_SETTINGS).map(|arg| arg.global(true)))
        .mut_subcommand("serve", |serve| {
            serve.args(settings_cli::args(SERVE_SETTINGS))
        })
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// List definitions.
    List {
        /// Only definitions from this Mosaic instance.
        #[arg(long)]
        instance: Option<String>,
        /// Only definitions with this status.
        #[arg(long, value_enum)]
        status: Option<StatusArg>,
        /// Print JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Show one definition as JSON.
    Show {
        /// Lablet name.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum StatusArg {
    Synced,
    Stale,
}

fn main() -> ExitCode {
    let command = command();
    settings_cli::warn_unknown_vars(&command, VAR_PREFIXES);
    let matches = command.get_matches();
    let parsed = Cli::from_arg_matches(&matches)
        .map_err(|e| e.to_string())
        .and_then(|cli| {
            let config = LabletSyncConfig::from_values(settings_cli::values(&matches))
                .map_err(|e| e.to_string())?;
            let mut serve = ServeSettings::default();
            if let Some(sub) = matches.subcommand_matches("serve") {
                settings::apply_settings(&mut serve, SERVE_SETTINGS, settings_cli::values(sub))
                    .map_err(|e| cfgsync_lablet::config::ConfigError::from(e).to_string())?;
            }
            Ok((cli, config, serve))
        });
    let (cli, config, serve) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("error: {message} (see --help)");
            if wants_json(&matches) {
                print_json_error("config", &message, None, None);
            }
            return ExitCode::from(2);
        }
    };
    // A server logs at the default level of every binary; a one-shot command
    // prints its own progress and one error line, so it logs errors only.
    let default_filter = match cli.command {
        Command::Serve => DEFAULT_LOG_FILTER,
        _ => "error",
    };
    init_logging(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.command.wants_json();
    match runtime.block_on(run(cli, config, serve)) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err}");
            if json {
                let (kind, stage) = kind_of(&err);
                print_json_error(kind, &err.to_string(), stage, None);
            }
            ExitCode::FAILURE
        }
    }
}

impl Command {
    /// Whether the command prints JSON on stdout, and so its failure too.
    fn wants_json(&self) -> bool {
        match self {
            Self::Sync { json, .. } | Self::Inspect { json, .. } => *json,
            Self::Catalog {
                command: CatalogCommand::List { json, .. },
            } => *json,
            Self::Catalog {
                command: CatalogCommand::Show { .. },
            }
            | Self::Retry
            | Self::Serve
            | Self::NodeToken { .. } => false,
        }
    }
}

/// Whether the command line asks for JSON on stdout (`--json` of its
/// innermost subcommand), read from the raw matches so it is known even when
/// the settings failed to parse.
fn wants_json(matches: &clap::ArgMatches) -> bool {
    let mut sub = matches;
    while let Some((_, inner)) = sub.subcommand() {
        sub = inner;
    }
    sub.try_get_one::<bool>("json")
        .ok()
        .flatten()
        .copied()
        .unwrap_or(false)
}

/// The failure of a `--json` command, on stdout, so a script reading stdout
/// always gets JSON: `{"error": {"kind", "message", "stage", "code"?}}`.
/// `kind` is the operator API's error code (`cannot_resolve_content`,
/// `package_invalid`, ...), `stage` the failed stage or `null`.
fn print_json_error(kind: &str, message: &str, stage: Option<Stage>, code: Option<&str>) {
    let mut error = serde_json::json!({"kind": kind, "message": message, "stage": stage});
    if let (Some(code), Some(map)) = (code, error.as_object_mut()) {
        map.insert("code".to_owned(), code.into());
    }
    let value = serde_json::json!({ "error": error });
    println!(
        "{}",
        serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
    );
}

/// The kind and stage of a failure: the stage's code when a stage failed.
fn kind_of(err: &anyhow::Error) -> (&'static str, Option<Stage>) {
    if err
        .downcast_ref::<cfgsync_lablet::config::ConfigError>()
        .is_some()
    {
        return ("config", None);
    }
    let Some(err) = err.downcast_ref::<cfgsync_lablet::Error>() else {
        return ("error", None);
    };
    let kind = match err.stage() {
        Some(Stage::Resolve) => "cannot_resolve_content",
        Some(Stage::Download) => "package_not_available",
        Some(Stage::Inspect) => "package_invalid",
        Some(Stage::Store) => "blob_upload_failed",
        Some(Stage::FanOut) => "delivery_stale",
        Some(Stage::Record) => "record_failed",
        _ => match err {
            cfgsync_lablet::Error::Config(_) => "config",
            cfgsync_lablet::Error::InvalidName { .. } => "bad_request",
            cfgsync_lablet::Error::Catalog(_) => "catalog",
            _ => "internal",
        },
    };
    (kind, err.stage())
}

async fn run(cli: Cli, config: LabletSyncConfig, serve: ServeSettings) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Inspect { package, json } => inspect(package, *json, &config),
        Command::Sync { name, json } => {
            let sync = LabletSync::from_config(config)?;
            sync_one(&sync, name, *json).await
        }
        Command::Catalog { command } => {
            let sync = LabletSync::from_config(config)?;
            catalog(&sync, command).await
        }
        Command::Serve => run_serve(config, serve).await,
        Command::NodeToken { lablet, nodes } => node_tokens(lablet, nodes),
        Command::Retry => {
            let sync = LabletSync::from_config(config)?;
            let report = sync.retry_pending().await?;
            println!(
                "delivered {}, still pending {}, recorded {}, records pending {}, skipped (lablet busy) {}",
                report.delivered,
                report.still_pending,
                report.recorded,
                report.records_pending,
                report.skipped_locked
            );
            Ok(if report.anything_pending() {
                ExitCode::from(EXIT_STALE)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

async fn catalog(sync: &LabletSync, command: &CatalogCommand) -> anyhow::Result<ExitCode> {
    let catalog = sync.catalog();
    match command {
        CatalogCommand::List {
            instance,
            status,
            json,
        } => {
            let filter = CatalogFilter {
                upstream_instance_name: instance.clone(),
                status: status.map(|s| match s {
                    StatusArg::Synced => SyncStatus::Synced,
                    StatusArg::Stale => SyncStatus::Stale,
                }),
            };
            let defs = catalog
                .list(&filter)
                .await
                .map_err(cfgsync_lablet::Error::Catalog)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&defs)?);
            } else {
                for d in &defs {
                    println!("{}", summary(d));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        CatalogCommand::Show { name } => {
            let id = sync.definition_id(name)?;
            match catalog
                .get(&id)
                .await
                .map_err(cfgsync_lablet::Error::Catalog)?
            {
                Some(def) => {
                    println!("{}", serde_json::to_string_pretty(&def)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("error: no catalog entry for lablet {name} (id {id})");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
    }
}

async fn run_serve(config: LabletSyncConfig, serve: ServeSettings) -> anyhow::Result<ExitCode> {
    let listen = serve.listen();
    let store = cfgsync_runtime::open_registration_store(&serve.registration_store).await?;
    let app = build_lablet_app(config, store, &serve.options)?;
    let listener = cfgsync_core::bind_listener(listen)?;
    eprintln!("lablet-sync serving on http://{listen}");
    serve_lablets(
        app,
        listener,
        &serve.options,
        cfgsync_core::shutdown_signal(),
    )
    .await?;
    Ok(ExitCode::SUCCESS)
}

/// A secret from the environment; unset or empty is `None`.
fn secret(name: &str) -> Option<cfgsync_core::Secret> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(cfgsync_core::Secret::new)
}

/// `node-token`: each node's token scoped to `lablet`, under CFGSYNC_NODE_SECRET.
fn node_tokens(lablet: &str, nodes: &[String]) -> anyhow::Result<ExitCode> {
    let secret = secret("CFGSYNC_NODE_SECRET").ok_or_else(|| {
        anyhow::anyhow!("CFGSYNC_NODE_SECRET is not set (the node secret `serve` runs with)")
    })?;
    cfgsync_lablet::validate_name(lablet)?;
    for node in nodes {
        cfgsync_core::validate_identifier(node)?;
    }
    for node in nodes {
        println!(
            "{node}\t{}",
            cfgsync_core::auth::scoped_node_token(&secret, node, lablet)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn summary(d: &LabletDefinition) -> String {
    let c = &d.content;
    format!(
        "{}\tv{}\t{}\t{}\t{}\t{}",
        d.id,
        c.content_version,
        c.status.as_str(),
        c.upstream_version.as_deref().unwrap_or("-"),
        c.synced_at,
        c.store.url
    )
}

async fn sync_one(sync: &LabletSync, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let interactive = std::io::stderr().is_terminal();
    let bar = interactive.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg} {bytes}/{total_bytes} ({binary_bytes_per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let bar_for_progress = bar.clone();
    let name_owned = name.to_owned();
    let progress = move |stage: Stage| {
        let step = Stage::ALL
            .iter()
            .position(|s| *s == stage)
            .map_or(0, |i| i + 1);
        let line = format!("[{step}/{}] {name_owned}: {stage}", Stage::ALL.len());
        match &bar_for_progress {
            Some(bar) => {
                bar.reset();
                bar.set_length(0);
                bar.set_message(line);
            }
            None => eprintln!("{line}"),
        }
    };
    let bar_for_bytes = bar.clone();
    let bytes = move |_stage: Stage, done: u64, total: Option<u64>| {
        if let Some(bar) = &bar_for_bytes {
            if let Some(total) = total {
                bar.set_length(total);
            }
            bar.set_position(done);
        }
    };
    let result = sync.sync_observed(name, &progress, &bytes).await;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            match err.stage() {
                Some(stage) => eprintln!("error [{stage}]: {err}"),
                None => eprintln!("error: {err}"),
            }
            if json {
                let err = anyhow::Error::from(err);
                let (kind, stage) = kind_of(&err);
                print_json_error(kind, &err.to_string(), stage, None);
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let c = &report.definition.content;
    if json {
        println!("{}", serde_json::to_string_pretty(&report.definition)?);
    } else {
        println!(
            "{} synced: version {}, sha256 {}, {} ({})",
            name,
            c.content_version,
            c.content_package_hash,
            c.store.url,
            if report.uploaded {
                "uploaded"
            } else {
                "unchanged, upload skipped"
            }
        );
    }
    match report.stale_message() {
        Some(msg) => {
            eprintln!("warning [fan_out]: {msg}; run `lablet-sync retry` once the target is back");
            Ok(ExitCode::from(EXIT_STALE))
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

fn inspect(package: &PathBuf, json: bool, config: &LabletSyncConfig) -> anyhow::Result<ExitCode> {
    let info = match inspect_package(package, &config.inspect) {
        Ok(info) => info,
        // Not a verdict on a package: the file is not there or not readable.
        Err(cfgsync_lablet::inspect::InspectError::Io(io)) => {
            let message = format!("cannot read {}: {io}", package.display());
            eprintln!("error: {message}");
            if json {
                print_json_error("io", &message, None, None);
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(err) => {
            let message = format!("{}: {err}", package.display());
            eprintln!("package invalid ({}): {message}", err.code());
            if json {
                print_json_error(
                    "package_invalid",
                    &message,
                    Some(Stage::Inspect),
                    Some(err.code()),
                );
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let hash = sha256_file(package)?;
    let size = std::fs::metadata(package)?.len();
    if json {
        let mut value = serde_json::to_value(&info)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("content_package_hash".to_owned(), hash.into());
            map.insert("content_package_size".to_owned(), size.into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(ExitCode::SUCCESS);
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".to_owned());
    println!("content_package_hash: {hash}");
    println!("content_package_size: {size}");
    println!("upstream_version: {}", opt(&info.meta.version));
    println!(
        "upstream_date_published: {}",
        opt(&info.meta.date_published)
    );
    println!("upstream_instance_name: {}", opt(&info.meta.instance_name));
    println!("upstream_form_id: {}", opt(&info.meta.form_id));
    println!("grade_xml_path: {}", opt(&info.grade_xml_path));
    println!("cml_yaml_path: {}", info.cml_yaml_path);
    println!("cml_yaml_hash: {}", info.cml_yaml_hash);
    println!("cml_yaml_bytes: {}", info.cml_yaml_content.len());
    match &info.devices_json {
        Some(d) => println!("devices_json: present ({} bytes)", d.len()),
        None => println!("devices_json: -"),
    }
    println!("entries: {}", info.entries);
    Ok(ExitCode::SUCCESS)
}
