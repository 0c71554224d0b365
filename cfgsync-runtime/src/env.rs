//! [`ClientEnv`]: the client's configuration from the original's `CFG_*`
//! variables, and [`run_cfgsync_client_from_env`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use cfgsync_core::{NodeRegistration, RegistrationPayload, Secret};

use crate::fetch::check_server_url;
use crate::{
    ArtifactOutputMap, ClientOptions, Error, Result, WrittenFile, register_and_fetch_artifacts_with,
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
/// Longest part of a bad value repeated in an error.
const MAX_SHOWN_VALUE: usize = 120;

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
}

impl ClientEnv {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| {
            std::env::var_os(name).map(|value| value.to_string_lossy().into_owned())
        })
    }

    /// Reads the variables through `get` (e.g. a map in tests, or flags layered
    /// over the environment). `HOSTNAME` is asked for too when
    /// `CFG_HOST_IDENTIFIER` is unset and the hostname file cannot be read.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());

        let server_addr = match var("CFG_SERVER_ADDR") {
            Some(value) => parse_server_addr(&value)?,
            None => DEFAULT_SERVER_ADDR.to_owned(),
        };
        let host_ip = match var("CFG_HOST_IP") {
            Some(value) => value.trim().parse().map_err(|_| Error::InvalidVar {
                var: "CFG_HOST_IP",
                value: shown(&value),
                reason: "not an IP address".into(),
            })?,
            None => DEFAULT_HOST_IP,
        };
        let host_identifier = match var("CFG_HOST_IDENTIFIER") {
            Some(value) => value,
            None => hostname(&var)?,
        };
        cfgsync_core::validate_identifier(&host_identifier).map_err(|e| Error::InvalidVar {
            var: "CFG_HOST_IDENTIFIER",
            value: shown(&host_identifier),
            reason: e.to_string(),
        })?;
        let metadata = match var("CFG_REGISTRATION_METADATA_JSON") {
            Some(value) => Some(serde_json::from_str(&value).map_err(|e| Error::InvalidVar {
                var: "CFG_REGISTRATION_METADATA_JSON",
                value: shown(&value),
                reason: format!("not valid JSON: {e}"),
            })?),
            None => None,
        };
        let timeout = match var("CFG_TIMEOUT_SECS") {
            Some(value) => parse_timeout(&value)?,
            None => Duration::from_secs(DEFAULT_TIMEOUT_SECS),
        };
        let token = match var("CFG_TOKEN") {
            Some(value) if value.chars().any(|c| c.is_control() || c == ' ') => {
                return Err(Error::InvalidVar {
                    var: "CFG_TOKEN",
                    value: "***".into(),
                    reason: "a bearer token cannot hold spaces or control characters".into(),
                });
            }
            Some(value) => Some(Secret::new(value)),
            None => None,
        };
        let max_payload_bytes = match var("CFG_MAX_PAYLOAD_BYTES") {
            Some(value) => parse_bytes("CFG_MAX_PAYLOAD_BYTES", &value)?,
            None => cfgsync_core::DEFAULT_MAX_PAYLOAD_BYTES,
        };
        let allow_group_world_write = match var("CFG_ALLOW_GROUP_WORLD_WRITE") {
            Some(value) => parse_bool("CFG_ALLOW_GROUP_WORLD_WRITE", &value)?,
            None => false,
        };
        Ok(Self {
            server_addr,
            host_ip,
            host_identifier,
            metadata,
            file_path: var("CFG_FILE_PATH").map(PathBuf::from),
            deployment_path: var("CFG_DEPLOYMENT_PATH").map(PathBuf::from),
            output_root: PathBuf::from(
                var("CFG_OUTPUT_ROOT").unwrap_or_else(|| DEFAULT_OUTPUT_ROOT.to_owned()),
            ),
            token,
            timeout,
            max_payload_bytes,
            allow_group_world_write,
        })
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

    /// Client options: the deadline, token and payload limit from here, the
    /// rest default; transport errors name `CFG_SERVER_ADDR`.
    pub fn client_options(&self) -> ClientOptions {
        let options = ClientOptions::default()
            .with_timeout(self.timeout)
            .with_max_payload_bytes(self.max_payload_bytes)
            .with_address_setting("CFG_SERVER_ADDR");
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

fn parse_server_addr(value: &str) -> Result<String> {
    check_server_url(value).map_err(|reason| Error::InvalidVar {
        var: "CFG_SERVER_ADDR",
        value: shown(value),
        reason,
    })?;
    Ok(value.trim().trim_end_matches('/').to_owned())
}

fn parse_timeout(value: &str) -> Result<Duration> {
    match value.trim().parse::<u64>() {
        Ok(secs) if (1..=MAX_TIMEOUT_SECS).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(Error::InvalidVar {
            var: "CFG_TIMEOUT_SECS",
            value: shown(value),
            reason: format!("expected whole seconds from 1 to {MAX_TIMEOUT_SECS}"),
        }),
    }
}

fn parse_bytes(var: &'static str, value: &str) -> Result<u64> {
    match value.trim().parse::<u64>() {
        Ok(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(Error::InvalidVar {
            var,
            value: shown(value),
            reason: "expected a whole number of bytes, at least 1".into(),
        }),
    }
}

fn parse_bool(var: &'static str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(Error::InvalidVar {
            var,
            value: shown(value),
            reason: "expected true or false (also 1/0, yes/no, on/off)".into(),
        }),
    }
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

/// The value as shown in an error: cut to a readable length.
fn shown(value: &str) -> String {
    match value.char_indices().nth(MAX_SHOWN_VALUE) {
        Some((cut, _)) => format!("{}...", &value[..cut]),
        None => value.to_owned(),
    }
}
