//! `cfgsync-client`: registers this node with a cfgsync server, waits for its
//! payload and writes the files. Every flag falls back to its environment
//! variable (the original cfgsync client's names); a flag wins over the variable.

use std::process::ExitCode;

use cfgsync_runtime::logging::{DEFAULT_LOG_FILTER, init_logging, log_format_arg, log_format_of};
use cfgsync_runtime::settings::cli as settings_cli;
use cfgsync_runtime::{CLIENT_SETTINGS, ClientEnv};

/// Prefixes of the variables checked for likely typos at start.
const VAR_PREFIXES: &[&str] = &["CFG_"];

/// The command line: one argument per entry of [`CLIENT_SETTINGS`].
fn command() -> clap::Command {
    clap::Command::new("cfgsync-client")
        .version(env!("CARGO_PKG_VERSION"))
        .about(
            "Register this node with a cfgsync server, wait for its config payload, and \
             write the files atomically.",
        )
        .long_about(
            "Register this node with a cfgsync server, wait for its config payload, and \
             write the files atomically.\n\n\
             Every flag falls back to the environment variable shown; a flag wins over its \
             variable. Logs go to stderr (RUST_LOG, default info: while it waits, what it \
             waits for, about every 10 s); each written file is printed on stdout. On failure: one line on stderr naming the step, exit 1 \
             (exit 2 for a bad flag or variable).\n\n\
             An https:// server is verified against the system's CA roots; SSL_CERT_FILE (a PEM \
             file) or SSL_CERT_DIR, when set, names the only CAs trusted instead.",
        )
        .args(settings_cli::args(CLIENT_SETTINGS))
        .arg(log_format_arg("CFG_LOG_FORMAT"))
}

fn main() -> ExitCode {
    let command = command();
    settings_cli::warn_unknown_vars(&command, VAR_PREFIXES);
    let matches = match command.try_get_matches() {
        Ok(matches) => matches,
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
    let env = match ClientEnv::from_arg_matches(&matches) {
        Ok(env) => env,
        Err(error) => {
            eprintln!("cfgsync-client: {error} (see --help)");
            return ExitCode::from(2);
        }
    };
    init_logging(log_format_of(&matches), DEFAULT_LOG_FILTER);
    match run(&env) {
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

fn run(env: &ClientEnv) -> Result<(), String> {
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
