//! `cfgsync-client`: registers this node with a cfgsync server, waits for its
//! payload and writes the files. Every flag falls back to its environment
//! variable (the original cfgsync client's names); a flag wins over the variable.

use std::process::ExitCode;

use cfgsync_runtime::ClientEnv;
use cfgsync_runtime::logging::{DEFAULT_LOG_FILTER, LogFormat, init_logging};
use clap::Parser;

/// Register this node with a cfgsync server, wait for its config payload, and
/// write the files atomically.
///
/// Every flag falls back to the environment variable shown; a flag wins over its
/// variable. Logs go to stderr (`RUST_LOG`, default `info`: while it waits, what
/// it waits for, about every 10 s); each written file is printed on stdout. On failure: one line on stderr naming the step, exit 1
/// (exit 2 for a bad flag).
#[derive(Debug, Parser)]
#[command(name = "cfgsync-client", version)]
struct Args {
    /// cfgsync server URL [default: http://127.0.0.1:4400]
    #[arg(long, env = "CFG_SERVER_ADDR", value_name = "URL")]
    server: Option<String>,

    /// This node's IP address, sent at registration [default: 127.0.0.1]
    #[arg(long, env = "CFG_HOST_IP", value_name = "IP")]
    ip: Option<String>,

    /// This node's identifier [default: the hostname]
    #[arg(long, env = "CFG_HOST_IDENTIFIER", value_name = "ID")]
    identifier: Option<String>,

    /// Registration metadata, as JSON
    #[arg(long, env = "CFG_REGISTRATION_METADATA_JSON", value_name = "JSON")]
    metadata_json: Option<String>,

    /// Where `/config.yaml` and `config.yaml` are written
    #[arg(long, env = "CFG_FILE_PATH", value_name = "PATH")]
    file_path: Option<String>,

    /// Where `deployment-settings.yaml` and `/deployment.yaml` are written
    #[arg(long, env = "CFG_DEPLOYMENT_PATH", value_name = "PATH")]
    deployment_path: Option<String>,

    /// Directory every other file is written under, at its artifact path [default: /]
    #[arg(long, env = "CFG_OUTPUT_ROOT", value_name = "DIR")]
    output_root: Option<String>,

    /// Bearer token sent to the server (never logged)
    #[arg(long, env = "CFG_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// One deadline for register + fetch, in seconds [default: 300]
    #[arg(long, env = "CFG_TIMEOUT_SECS", value_name = "SECS")]
    timeout_secs: Option<String>,

    /// Largest payload read from the server, in bytes; a larger one fails
    /// without being held in memory [default: 67108864 (64 MiB)]
    #[arg(long, env = "CFG_MAX_PAYLOAD_BYTES", value_name = "BYTES")]
    max_payload_bytes: Option<String>,

    /// Keep the group/world write bits of file modes the server sends (they are
    /// stripped by default; setuid, setgid and sticky are always stripped)
    #[arg(long, env = "CFG_ALLOW_GROUP_WORLD_WRITE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    allow_group_world_write: Option<String>,

    /// Log lines as text or JSON (one object per line)
    #[arg(long, value_enum, env = "CFG_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Args {
    /// The value of a variable: its flag (or the variable, through clap), or for
    /// any other name the environment.
    fn var(&self, name: &str) -> Option<String> {
        let value = match name {
            "CFG_SERVER_ADDR" => &self.server,
            "CFG_HOST_IP" => &self.ip,
            "CFG_HOST_IDENTIFIER" => &self.identifier,
            "CFG_REGISTRATION_METADATA_JSON" => &self.metadata_json,
            "CFG_FILE_PATH" => &self.file_path,
            "CFG_DEPLOYMENT_PATH" => &self.deployment_path,
            "CFG_OUTPUT_ROOT" => &self.output_root,
            "CFG_TOKEN" => &self.token,
            "CFG_TIMEOUT_SECS" => &self.timeout_secs,
            "CFG_MAX_PAYLOAD_BYTES" => &self.max_payload_bytes,
            "CFG_ALLOW_GROUP_WORLD_WRITE" => &self.allow_group_world_write,
            other => return std::env::var(other).ok(),
        };
        value.clone()
    }
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(error) if !error.use_stderr() => {
            // --help, --version
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("cfgsync-client: {} (see --help)", clap_reason(&error));
            return ExitCode::from(2);
        }
    };
    init_logging(args.log_format, DEFAULT_LOG_FILTER);

    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("cfgsync-client: {message}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message without its `error: ` prefix and usage lines.
fn clap_reason(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    first.trim_start_matches("error: ").to_owned()
}

fn run(args: &Args) -> Result<(), String> {
    let env = ClientEnv::from_vars(|name| args.var(name)).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let written = runtime.block_on(env.run()).map_err(|e| e.to_string())?;
    for file in written {
        println!(
            "wrote {} ({} bytes, artifact {})",
            file.path.display(),
            file.bytes,
            file.artifact
        );
    }
    Ok(())
}
