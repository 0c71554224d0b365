//! Log output of the binaries — one policy for `cfgsync-server`,
//! `cfgsync-client` and `lablet-sync`: logs go to stderr; `RUST_LOG` sets the
//! filter (default [`DEFAULT_LOG_FILTER`], `info`); colours only when stderr
//! is a terminal, so redirected logs hold no ANSI codes; `--log-format json`
//! writes one JSON object per line for log collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The default log filter of every binary (`RUST_LOG` overrides it).
pub const DEFAULT_LOG_FILTER: &str = "info";

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
#[non_exhaustive]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal only).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (with
    /// `message`), `target`, `span` / `spans`.
    Json,
}

/// Installs the process's log subscriber on stderr: `RUST_LOG` when set and
/// valid, else `default_filter`; `format` decides text or JSON lines. A
/// second call changes nothing.
pub fn init_logging(format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter);
    // Err only when a subscriber is already installed: keep that one.
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

/// The `--log-format text|json` argument, falling back to variable `env`, for
/// a command built from a settings table ([`crate::settings`]); read it back
/// with [`log_format_of`].
pub fn log_format_arg(env: &'static str) -> clap::Arg {
    clap::Arg::new("log_format")
        .long("log-format")
        .env(env)
        .value_name("FORMAT")
        .value_parser(clap::builder::EnumValueParser::<LogFormat>::new())
        .default_value("text")
        .help("Log lines as text or JSON (one object per line)")
}

/// The format [`log_format_arg`] parsed (text when absent).
pub fn log_format_of(matches: &clap::ArgMatches) -> LogFormat {
    matches
        .get_one::<LogFormat>("log_format")
        .copied()
        .unwrap_or_default()
}
