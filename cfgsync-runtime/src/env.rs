//! [`ClientEnv`]: the client's configuration from the original's `CFG_*`
//! variables, and [`run_cfgsync_client_from_env`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use cfgsync_core::{NodeRegistration, RegistrationPayload, Secret};

use crate::fetch::check_server_url;
use crate::settings::{self, Setting, parse_bool, parse_bytes, parse_duration, parse_secs};
use crate::{
    ArtifactOutputMap, ClientOptions, DEFAULT_PROGRESS_INTERVAL, Error, Result, WrittenFile,
    register_and_fetch_artifacts_with,
};

/// Default of `CFG_SERVER_ADDR`, as in the original.
pub const DEFAULT_SERVER_ADDR: &str = "http://127.0.0.1:4400";
/// Default of `CFG_HOST_IP`, as in the original.
pub const DEFAULT_HOST_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Default of `CFG_OUTPUT_ROOT`: absolute artifact paths land where they say.
pub const DEFAULT_OUTPUT_ROOT: &str = "/";
/// Default of `CFG_TIMEOUT_SECS`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;
/// Largest accepted `CFG_TIMEOUT_SECS`: one year.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// Where the machine's hostname is read from when `CFG_HOST_IDENTIFIER` is unset.
const HOSTNAME_FILE: &str = "/proc/sys/kernel/hostname";

/// The node client's configuration, read from the original cfgsync's variables
/// plus ours. An empty variable counts as unset.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `CFG_SERVER_ADDR` | `http://127.0.0.1:4400` | server URL |
/// | `CFG_HOST_IP` | `127.0.0.1` | the node's IP sent at registration |
/// | `CFG_HOST_IDENTIFIER` | the hostname | the node's identifier |
/// | `CFG_REGISTRATION_METADATA_JSON` | none | registration metadata, JSON |
/// | `CFG_FILE_PATH` | none | where `/config.yaml` and `config.yaml` are written |
/// | `CFG_DEPLOYMENT_PATH` | none | where `deployment-settings.yaml` and `/deployment.yaml` are written |
/// | `CFG_OUTPUT_ROOT` | `/` | where every other file is written (under its path) |
/// | `CFG_TOKEN` | none | bearer token (never logged or printed) |
/// | `CFG_TIMEOUT_SECS` | `300` | one deadline for register + fetch |
/// | `CFG_MAX_PAYLOAD_BYTES` | `67108864` (64 MiB) | largest payload read from the server |
/// | `CFG_ALLOW_GROUP_WORLD_WRITE` | `false` | keep group/world write bits of served modes |
/// | `CFG_PROGRESS_INTERVAL` | `10s` | how often a waiting client says what it waits for (`0`: never) |
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientEnv {
    /// `CFG_SERVER_ADDR`.
    pub server_addr: String,
    /// `CFG_HOST_IP`.
    pub host_ip: IpAddr,
    /// `CFG_HOST_IDENTIFIER`, else the hostname.
    pub host_identifier: String,
    /// `CFG_REGISTRATION_METADATA_JSON`.
    pub metadata: Option<serde_json::Value>,
    /// `CFG_FILE_PATH`.
    pub file_path: Option<PathBuf>,
    /// `CFG_DEPLOYMENT_PATH`.
    pub deployment_path: Option<PathBuf>,
    /// `CFG_OUTPUT_ROOT`.
    pub output_root: PathBuf,
    /// `CFG_TOKEN`.
    pub token: Option<Secret>,
    /// `CFG_TIMEOUT_SECS`.
    pub timeout: Duration,
    /// `CFG_MAX_PAYLOAD_BYTES`.
    pub max_payload_bytes: u64,
    /// `CFG_ALLOW_GROUP_WORLD_WRITE`.
    pub allow_group_world_write: bool,
    /// `CFG_PROGRESS_INTERVAL`: `None` (set to `0`) never says.
    pub progress_interval: Option<Duration>,
    /// What the server address came from, named in transport errors
    /// (`CFG_SERVER_ADDR`, or `--server` when given as a flag).
    pub server_setting: &'static str,
}

type S = Setting<ClientEnv>;

/// The client's settings, declared once: the library reads them from the
/// environment ([`ClientEnv::from_env`]), `cfgsync-client` turns them into
/// flags (each falling back to its variable) with the same parsers.
pub const CLIENT_SETTINGS: &[Setting<ClientEnv>] = &[
    S::new("CFG_SERVER_ADDR", "--server", "URL", "cfgsync server URL", |c, v| {
        check_server_url(v)?;
        c.server_addr = v.trim().trim_end_matches('/').to_owned();
        Ok(())
    })
    .default(DEFAULT_SERVER_ADDR),
    S::new("CFG_HOST_IP", "--ip", "IP", "This node's IP address, sent at registration", |c, v| {
        c.host_ip = v.trim().parse().map_err(|_| "not an IP address".to_owned())?;
        Ok(())
    })
    .default("127.0.0.1"),
    S::new("CFG_HOST_IDENTIFIER", "--identifier", "ID", "This node's identifier", |c, v| {
        cfgsync_core::validate_identifier(v).map_err(|e| e.to_string())?;
        v.clone_into(&mut c.host_identifier);
        Ok(())
    })
    .default("the hostname"),
    S::new("CFG_REGISTRATION_METADATA_JSON", "--metadata-json", "JSON", "Registration metadata, as JSON", |c, v| {
        c.metadata = Some(serde_json::from_str(v).map_err(|e| format!("not valid JSON: {e}"))?);
        Ok(())
    }),
    S::new("CFG_FILE_PATH", "--file-path", "PATH", "Where `/config.yaml` and `config.yaml` are written", |c, v| {
        c.file_path = Some(PathBuf::from(v));
        Ok(())
    }),
    S::new("CFG_DEPLOYMENT_PATH", "--deployment-path", "PATH", "Where `deployment-settings.yaml` and `/deployment.yaml` are written", |c, v| {
        c.deployment_path = Some(PathBuf::from(v));
        Ok(())
    }),
    S::new("CFG_OUTPUT_ROOT", "--output-root", "DIR", "Directory every other file is written under, at its artifact path", |c, v| {
        c.output_root = PathBuf::from(v);
        Ok(())
    })
    .default(DEFAULT_OUTPUT_ROOT),
    S::new("CFG_TOKEN", "--token", "TOKEN", "Bearer token sent to the server (never logged)", |c, v| {
        if v.chars().any(|ch| ch.is_control() || ch == ' ') {
            return Err("a bearer token cannot hold spaces or control characters".into());
        }
        c.token = Some(Secret::new(v));
        Ok(())
    })
    .secret(),
    S::new("CFG_TIMEOUT_SECS", "--timeout-secs", "DURATION", "One deadline for register + fetch: seconds, or 30s, 5m, 1h", |c, v| {
        match parse_secs(v) {
            Ok(secs) if (1..=MAX_TIMEOUT_SECS).contains(&secs) => {
                c.timeout = Duration::from_secs(secs);
                Ok(())
            }
            _ => Err(format!("expected a duration from 1 s to {MAX_TIMEOUT_SECS} s (e.g. 300, 30s, 5m)")),
        }
    })
    .default("300"),
    S::new("CFG_MAX_PAYLOAD_BYTES", "--max-payload-bytes", "SIZE", "Largest payload read from the server (bytes, or 64MiB, 1GiB); a larger one fails without being held in memory", |c, v| {
        match parse_bytes(v)? {
            0 => Err("expected at least 1 byte".into()),
            bytes => {
                c.max_payload_bytes = bytes;
                Ok(())
            }
        }
    })
    .default("64MiB"),
    S::new("CFG_ALLOW_GROUP_WORLD_WRITE", "--allow-group-world-write", "BOOL", "Keep the group/world write bits of file modes the server sends (stripped by default; setuid, setgid and sticky always are)", |c, v| {
        c.allow_group_world_write = parse_bool(v)?;
        Ok(())
    })
    .default("false")
    .switch(),
    S::new("CFG_PROGRESS_INTERVAL", "--progress-interval", "DURATION", "While waiting, say at INFO what for this often: seconds, or 30s, 1m; 0 never", |c, v| {
        let every = parse_duration(v, Duration::from_secs(1))?;
        c.progress_interval = (!every.is_zero()).then_some(every);
        Ok(())
    })
    .default("10s"),
];

impl ClientEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Reads the variables through `get` (e.g. a map in tests). `HOSTNAME` is
    /// asked for too when `CFG_HOST_IDENTIFIER` is unset and the hostname file
    /// cannot be read.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let hostname_var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        Self::from_values(settings::from_vars(&get), hostname_var)
    }

    /// Reads the settings from parsed `cfgsync-client` arguments (built from
    /// [`CLIENT_SETTINGS`]): a bad value is named by the flag or the variable
    /// it came from.
    #[cfg(feature = "cli")]
    pub fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self> {
        let mut env = Self::from_values(settings::cli::values(matches), |name| {
            std::env::var(name).ok().filter(|v| !v.trim().is_empty())
        })?;
        if matches.value_source("CFG_SERVER_ADDR") == Some(clap::parser::ValueSource::CommandLine) {
            env.server_setting = "--server";
        }
        Ok(env)
    }

    fn from_values(
        value_of: impl Fn(&Setting<Self>) -> Option<settings::Given>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let mut env = Self {
            server_addr: DEFAULT_SERVER_ADDR.to_owned(),
            host_ip: DEFAULT_HOST_IP,
            host_identifier: String::new(),
            metadata: None,
            file_path: None,
            deployment_path: None,
            output_root: PathBuf::from(DEFAULT_OUTPUT_ROOT),
            token: None,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            max_payload_bytes: cfgsync_core::DEFAULT_MAX_PAYLOAD_BYTES,
            allow_group_world_write: false,
            progress_interval: Some(DEFAULT_PROGRESS_INTERVAL),
            server_setting: "CFG_SERVER_ADDR",
        };
        settings::apply_settings(&mut env, CLIENT_SETTINGS, value_of)?;
        if env.host_identifier.is_empty() {
            let name = hostname(&var)?;
            cfgsync_core::validate_identifier(&name).map_err(|e| Error::InvalidVar {
                var: "CFG_HOST_IDENTIFIER",
                value: name.clone(),
                reason: format!(
                    "the hostname is not a valid identifier ({e}); set CFG_HOST_IDENTIFIER"
                ),
            })?;
            env.host_identifier = name;
        }
        Ok(env)
    }

    /// The registration sent to the server.
    pub fn registration(&self) -> NodeRegistration {
        let mut registration = NodeRegistration::new(self.host_identifier.clone(), self.host_ip);
        if let Some(metadata) = &self.metadata {
            registration.metadata = RegistrationPayload::new(metadata.clone());
        }
        registration
    }

    /// The output map: root `CFG_OUTPUT_ROOT`, `/config.yaml` and `config.yaml`
    /// routed to `CFG_FILE_PATH`, `deployment-settings.yaml` and
    /// `/deployment.yaml` routed to `CFG_DEPLOYMENT_PATH`.
    pub fn outputs(&self) -> ArtifactOutputMap {
        let mut outputs = ArtifactOutputMap::new()
            .with_root(&self.output_root)
            .allow_group_world_write(self.allow_group_world_write);
        if let Some(path) = &self.file_path {
            outputs = outputs
                .route("/config.yaml", path)
                .route("config.yaml", path);
        }
        if let Some(path) = &self.deployment_path {
            outputs = outputs
                .route("deployment-settings.yaml", path)
                .route("/deployment.yaml", path);
        }
        outputs
    }

    /// Client options: the deadline, token, payload limit and progress
    /// interval from here, the rest default; transport errors name
    /// `CFG_SERVER_ADDR` (or `--server`).
    pub fn client_options(&self) -> ClientOptions {
        let options = ClientOptions::default()
            .with_timeout(self.timeout)
            .with_max_payload_bytes(self.max_payload_bytes)
            .with_progress_interval(self.progress_interval)
            .with_address_setting(self.server_setting);
        match &self.token {
            Some(token) => options.with_token(token.expose()),
            None => options,
        }
    }

    /// Registers, waits for the payload and writes it.
    pub async fn run(&self) -> Result<Vec<WrittenFile>> {
        register_and_fetch_artifacts_with(
            &self.registration(),
            &self.server_addr,
            &self.outputs(),
            &self.client_options(),
        )
        .await
    }
}

/// Reads [`ClientEnv::from_env`] and runs the client: register, wait for the
/// payload under one deadline, write the files.
pub async fn run_cfgsync_client_from_env() -> Result<Vec<WrittenFile>> {
    ClientEnv::from_env()?.run().await
}

fn hostname(var: &impl Fn(&str) -> Option<String>) -> Result<String> {
    let from_file = std::fs::read_to_string(HOSTNAME_FILE)
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty());
    from_file
        .or_else(|| var("HOSTNAME").map(|name| name.trim().to_owned()))
        .ok_or_else(|| Error::MissingVar {
            var: "CFG_HOST_IDENTIFIER",
            reason: format!("no default: {HOSTNAME_FILE} cannot be read and HOSTNAME is not set"),
        })
}
