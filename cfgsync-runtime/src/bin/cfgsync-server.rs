//! `cfgsync-server`: serves the cfgsync routes from a YAML config file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use cfgsync_core::auth::{node_token, scoped_node_token};
use cfgsync_runtime::logging::{DEFAULT_LOG_FILTER, LogFormat, init_logging};
use cfgsync_runtime::settings::{self, cli as settings_cli};
use cfgsync_runtime::{CfgsyncServerConfig, SERVER_SETTINGS, build_server, check_config};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Serve node registration and config delivery from a config file.
///
/// The secrets and the registration_log keys may come from flags or the
/// environment instead of the file (each listed below; a flag wins over its
/// variable, both over the file).
/// Logs go to stderr; RUST_LOG sets the level (default info); colours only
/// on a terminal.
#[derive(Debug, Parser)]
#[command(
    name = "cfgsync-server",
    version,
    override_usage = "cfgsync-server --config <FILE> [COMMAND] [OPTIONS]"
)]
struct Cli {
    /// The server config (YAML): port, bind, source, auth, registration_store,
    /// registration_log, limits, reload.
    /// Required; before or after the subcommand.
    #[arg(
        long,
        short,
        global = true,
        value_name = "FILE",
        env = "CFGSYNC_CONFIG"
    )]
    config: Option<PathBuf>,

    /// Log lines as text or JSON (one object per line).
    #[arg(long, global = true, value_enum, env = "CFGSYNC_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve until SIGTERM or ctrl-c (the default). The source file is
    /// reloaded when it changes and on SIGHUP; a bad version keeps the last
    /// good one serving. Status page on GET /, JSON on GET /api/v1/status.
    Serve,
    /// Load and check the config and its files, print a summary, and exit;
    /// nothing on disk is changed.
    Check,
    /// Print the per-node token of each NODE (needs auth.node_secret).
    NodeToken {
        /// Scope the tokens to this value of the registration metadata key
        /// auth.scope_key (which must be set): each node may then register
        /// and fetch only with that value there.
        #[arg(long, value_name = "VALUE")]
        scope: Option<String>,
        /// Node identifiers.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// Prefixes of the variables checked for likely typos at start.
const VAR_PREFIXES: &[&str] = &["CFGSYNC_"];

/// The command line: `--config`, the subcommands and [`SERVER_SETTINGS`]
/// (accepted before or after the subcommand).
fn command() -> clap::Command {
    Cli::command().args(settings_cli::args(SERVER_SETTINGS).map(|arg| arg.global(true)))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli_command = command();
    settings_cli::warn_unknown_vars(&cli_command, VAR_PREFIXES);
    let matches = cli_command.get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(error) => error.exit(),
    };
    // Optional to clap only because an argument accepted after the
    // subcommand (`cfgsync-server check --config FILE`) cannot be required.
    let Some(config) = cli.config.clone() else {
        command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the server config is required: --config FILE (or CFGSYNC_CONFIG)",
            )
            .exit()
    };
    init_logging(cli.log_format, DEFAULT_LOG_FILTER);
    match run(cli, &config, &matches).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cfgsync-server: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, path: &Path, matches: &clap::ArgMatches) -> Result<(), String> {
    // The variables come through clap with the flags (a flag wins, and a
    // variable its flag overrides is not read), not through from_path.
    let mut config = CfgsyncServerConfig::from_file(path).map_err(|e| e.to_string())?;
    settings::apply_settings(&mut config, SERVER_SETTINGS, settings_cli::values(matches))
        .map_err(|e| e.to_string())?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let server = build_server(&config).await.map_err(|e| e.to_string())?;
            #[cfg(unix)]
            let _hangups = server
                .reloader
                .reload_on_sighup()
                .map_err(|e| e.to_string())?;
            cfgsync_core::serve_cfgsync(config.socket_addr(), server.state)
                .await
                .map_err(|e| e.to_string())
        }
        Command::Check => {
            let summary = check_config(&config).map_err(|e| e.to_string())?;
            println!("{}: ok", path.display());
            for (what, value) in summary {
                println!("  {what:<22} {value}");
            }
            Ok(())
        }
        Command::NodeToken { scope, nodes } => {
            let secret = config.auth.node_secret.as_ref().ok_or_else(|| {
                format!(
                    "{}: auth.node_secret is not set (nor CFGSYNC_NODE_SECRET)",
                    path.display()
                )
            })?;
            if let Some(scope) = &scope {
                if config.auth.scope_key.is_none() {
                    return Err(format!(
                        "{}: --scope needs auth.scope_key (the metadata key the scope is \
                         checked against); without it the server refuses scoped tokens",
                        path.display()
                    ));
                }
                cfgsync_core::validate_identifier(scope).map_err(|e| format!("--scope: {e}"))?;
            }
            for node in &nodes {
                cfgsync_core::validate_identifier(node).map_err(|e| e.to_string())?;
            }
            for node in nodes {
                let token = match &scope {
                    Some(scope) => scoped_node_token(secret, &node, scope),
                    None => node_token(secret, &node),
                };
                println!("{node}\t{token}");
            }
            Ok(())
        }
    }
}
