//! The server's YAML config: the original's keys, plus optional `bind`, `auth`,
//! `registration_store`, `limits` and `reload`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use cfgsync_core::{AuthConfig, Secret, ServerLimits};
use serde::{Deserialize, Serialize};

use crate::reload::ReloadConfig;
use crate::settings::{self, Setting};
use crate::{Error, Result};

/// Env variables that override the config's secrets, so they need not sit in a file.
pub const ENV_SHARED_TOKEN: &str = "CFGSYNC_SHARED_TOKEN";
/// See [`ENV_SHARED_TOKEN`].
pub const ENV_NODE_SECRET: &str = "CFGSYNC_NODE_SECRET";
/// See [`ENV_SHARED_TOKEN`].
pub const ENV_ADMIN_TOKEN: &str = "CFGSYNC_ADMIN_TOKEN";

type S = Setting<CfgsyncServerConfig>;

/// The settings of `cfgsync-server` beside its file, declared once: each
/// overrides a key of the file, from its flag or its variable, so secrets
/// need not sit in the file.
pub const SERVER_SETTINGS: &[Setting<CfgsyncServerConfig>] = &[
    S::new(
        ENV_SHARED_TOKEN,
        "--shared-token",
        "TOKEN",
        "Bearer token any node may use (overrides auth.shared_token)",
        |c, v| {
            c.auth.shared_token = Some(Secret::new(v));
            Ok(())
        },
    )
    .secret(),
    S::new(
        ENV_NODE_SECRET,
        "--node-secret",
        "SECRET",
        "Secret of the per-node tokens (overrides auth.node_secret)",
        |c, v| {
            c.auth.node_secret = Some(Secret::new(v));
            Ok(())
        },
    )
    .secret(),
    S::new(
        ENV_ADMIN_TOKEN,
        "--admin-token",
        "TOKEN",
        "Bearer token for POST /node/replace and the status page (overrides auth.admin_token)",
        |c, v| {
            c.auth.admin_token = Some(Secret::new(v));
            Ok(())
        },
    )
    .secret(),
];

/// `cfgsync-server`'s config file.
///
/// ```yaml
/// port: 4400
/// source:
///   kind: static          # alias: bundle; or: registration
///   artifacts_path: bundle.yaml
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CfgsyncServerConfig {
    /// TCP port (default 4400).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Address to listen on (default `0.0.0.0`).
    #[serde(default = "default_bind")]
    pub bind: IpAddr,
    /// What the server serves.
    pub source: CfgsyncServingMode,
    /// Accepted tokens (auth is off while none is set).
    #[serde(default)]
    pub auth: AuthConfig,
    /// Where registrations live: `memory` (default), `file:///DIR` (durable,
    /// survives restarts and `kill -9`), or an object store URL such as
    /// `s3://bucket/prefix` (shared by replicas; credentials and endpoint from the
    /// standard `AWS_*` variables).
    #[serde(default)]
    pub registration_store: RegistrationStoreConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: ServerLimits,
    /// How the source's file is watched for changes.
    #[serde(default)]
    pub reload: ReloadConfig,
}

fn default_port() -> u16 {
    4400
}

fn default_bind() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}

/// What a config-driven server serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum CfgsyncServingMode {
    /// A precomputed bundle (`nodes: [{identifier, files}]`, `shared_files`),
    /// served without registration.
    #[serde(alias = "static")]
    Bundle {
        /// The bundle file; relative paths resolve from the config file's directory.
        #[serde(alias = "bundle_path")]
        artifacts_path: PathBuf,
    },
    /// A fixed artifacts map (`nodes: {id: {files}}`, `shared: {files}`), served
    /// once a node registered (`425 not_ready` until then).
    Registration {
        /// The artifacts file; relative paths resolve from the config file's directory.
        #[serde(alias = "bundle_path")]
        artifacts_path: PathBuf,
    },
}

/// Where a config-driven server keeps registrations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationStoreConfig {
    /// In memory: lost on restart.
    #[default]
    Memory,
    /// A durable embedded database in this directory.
    Durable(PathBuf),
    /// An object store URL (`s3://bucket/prefix`, `memory:///`, ...).
    Object(url::Url),
}

impl std::str::FromStr for RegistrationStoreConfig {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Self, String> {
        if text == "memory" {
            return Ok(Self::Memory);
        }
        let url = url::Url::parse(text).map_err(|e| {
            format!("{text:?} is neither `memory` nor a URL (file:///DIR, s3://bucket/prefix): {e}")
        })?;
        if url.scheme() == "file" {
            let dir = url
                .to_file_path()
                .map_err(|()| format!("{text:?} is not an absolute file:/// path"))?;
            return Ok(Self::Durable(dir));
        }
        Ok(Self::Object(url))
    }
}

impl std::fmt::Display for RegistrationStoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory => f.write_str("memory"),
            Self::Durable(dir) => write!(f, "file://{}", dir.display()),
            Self::Object(url) => write!(f, "{url}"),
        }
    }
}

impl Serialize for RegistrationStoreConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RegistrationStoreConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl CfgsyncServerConfig {
    /// Reads a config file; relative artifact paths are resolved from its
    /// directory, and the `CFGSYNC_*` secret variables override `auth`.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config: Self =
            cfgsync_core::document::parse_yaml(&text).map_err(|message| Error::Config {
                path: path.to_path_buf(),
                message,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let artifacts = match &mut config.source {
            CfgsyncServingMode::Bundle { artifacts_path }
            | CfgsyncServingMode::Registration { artifacts_path } => artifacts_path,
        };
        if artifacts.is_relative() {
            *artifacts = base.join(&*artifacts);
        }
        config.apply_env(|name| std::env::var(name).ok());
        Ok(config)
    }

    /// Overrides `auth` secrets from `CFGSYNC_SHARED_TOKEN`,
    /// `CFGSYNC_NODE_SECRET` and `CFGSYNC_ADMIN_TOKEN` when set (the
    /// [`SERVER_SETTINGS`]).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        // These settings take any non-empty value.
        let _ = settings::apply_settings(self, SERVER_SETTINGS, settings::from_vars(var));
    }

    /// The address to listen on.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}
