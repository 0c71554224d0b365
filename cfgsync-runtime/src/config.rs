//! The server's YAML config: the original's keys, plus optional `bind`, `auth`,
//! `registration_store`, `registration_log`, `limits` and `reload`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use cfgsync_adapter::ObjectStoreOptions;
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
/// Overrides `registration_log.writer_id`.
pub const ENV_REGISTRATION_LOG_WRITER_ID: &str = "CFGSYNC_REGISTRATION_LOG_WRITER_ID";
/// Overrides `registration_log.compact_after_entries`.
pub const ENV_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES: &str =
    "CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES";
/// Overrides `registration_log.compact_after_bytes`.
pub const ENV_REGISTRATION_LOG_COMPACT_AFTER_BYTES: &str =
    "CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_BYTES";

type S = Setting<CfgsyncServerConfig>;

/// The settings of `cfgsync-server` beside its file, declared once: each
/// overrides a key of the file, from its flag or its variable, so secrets
/// (and a per-replica writer id) need not sit in the file.
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
    S::new(
        ENV_REGISTRATION_LOG_WRITER_ID,
        "--registration-log-writer-id",
        "ID",
        "Fixed name of this server's log stream in an object store registration_store, \
         continued after a restart; never the same on two running servers \
         (overrides registration_log.writer_id)",
        |c, v| {
            let id = v.trim();
            ObjectStoreOptions::check_writer_id(id)?;
            c.registration_log.writer_id = Some(id.to_owned());
            Ok(())
        },
    )
    .default("a new one per start"),
    S::new(
        ENV_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES,
        "--registration-log-compact-after-entries",
        "N|off",
        "Snapshot an object store registration_store once this many log entries follow \
         the newest snapshot, or off (overrides registration_log.compact_after_entries)",
        |c, v| {
            c.registration_log.compact_after_entries = Some(CompactionTrigger::parse_entries(v)?);
            Ok(())
        },
    )
    .default("256"),
    S::new(
        ENV_REGISTRATION_LOG_COMPACT_AFTER_BYTES,
        "--registration-log-compact-after-bytes",
        "SIZE|off",
        "Snapshot it also once those entries hold this many bytes: 8MiB, 65536, or off \
         (overrides registration_log.compact_after_bytes)",
        |c, v| {
            c.registration_log.compact_after_bytes = Some(CompactionTrigger::parse_bytes(v)?);
            Ok(())
        },
    )
    .default("8MiB"),
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
    /// How an object store `registration_store` keeps its log: this server's
    /// writer id and when it is compacted. Refused with any other store.
    #[serde(default, skip_serializing_if = "RegistrationLogConfig::is_empty")]
    pub registration_log: RegistrationLogConfig,
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

/// How an object store registration store keeps its log
/// (`registration_log:` in the server config; each key also from a variable
/// or flag, see [`SERVER_SETTINGS`]). Unset keys keep
/// [`ObjectStoreOptions`]' defaults. Setting any key while
/// `registration_store` is not an object store URL is an error
/// ([`Error::RegistrationLogUnused`]): memory and file stores have no log to
/// name or compact.
///
/// ```yaml
/// registration_store: memory:///   # any object store URL
/// registration_log:
///   writer_id: replica-a          # default: a new one per start
///   compact_after_entries: 256    # or off
///   compact_after_bytes: 8MiB     # or off
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RegistrationLogConfig {
    /// The name of this server's own log stream. Unset (the default): a new
    /// one each start, which is what a fleet of replicas wants. A fixed id
    /// continues its stream after a restart (e.g. a pod name of a stateful
    /// set); two running servers must never share one, as both would write
    /// the same stream.
    #[serde(
        deserialize_with = "de_writer_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub writer_id: Option<String>,
    /// Write a snapshot once this many log entries follow the newest one
    /// (default 256); `off` turns this trigger off.
    #[serde(
        deserialize_with = "de_entries",
        skip_serializing_if = "Option::is_none"
    )]
    pub compact_after_entries: Option<CompactionTrigger>,
    /// ... or once those entries hold this many bytes (`8MiB`, the
    /// default, or plain bytes); `off` turns this trigger off.
    #[serde(deserialize_with = "de_bytes", skip_serializing_if = "Option::is_none")]
    pub compact_after_bytes: Option<CompactionTrigger>,
}

impl RegistrationLogConfig {
    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.set_keys().next().is_none()
    }

    /// The keys that are set, each named with its variable.
    fn set_keys(&self) -> impl Iterator<Item = &'static str> {
        [
            (
                self.writer_id.is_some(),
                "registration_log.writer_id (CFGSYNC_REGISTRATION_LOG_WRITER_ID)",
            ),
            (
                self.compact_after_entries.is_some(),
                "registration_log.compact_after_entries (CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES)",
            ),
            (
                self.compact_after_bytes.is_some(),
                "registration_log.compact_after_bytes (CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_BYTES)",
            ),
        ]
        .into_iter()
        .filter_map(|(set, key)| set.then_some(key))
    }

    /// Fails with [`Error::RegistrationLogUnused`] when a key is set but
    /// `store` is not an object store.
    pub fn check_store(&self, store: &RegistrationStoreConfig) -> Result<()> {
        match (store, self.set_keys().next()) {
            (RegistrationStoreConfig::Object(_), _) | (_, None) => Ok(()),
            (store, Some(key)) => Err(Error::RegistrationLogUnused {
                key,
                store: store.to_string(),
            }),
        }
    }

    /// The object store options these keys describe, the defaults for the
    /// rest.
    pub fn object_store_options(&self) -> ObjectStoreOptions {
        let defaults = ObjectStoreOptions::default();
        let entries = self
            .compact_after_entries
            .map_or(defaults.compact_after_entries, CompactionTrigger::threshold);
        let bytes = self
            .compact_after_bytes
            .map_or(defaults.compact_after_bytes, CompactionTrigger::threshold);
        let options = defaults.with_compaction(entries, bytes);
        match &self.writer_id {
            Some(id) => options.with_writer_id(id.clone()),
            None => options,
        }
    }

    /// One line for `check` and the start-up log: the writer id and when
    /// the log is compacted.
    pub fn describe(&self) -> String {
        let options = self.object_store_options();
        let writer = match &options.writer_id {
            Some(id) => format!("writer id {id}"),
            None => "a new writer id per start".to_owned(),
        };
        let entries = options.compact_after_entries;
        let bytes = options.compact_after_bytes;
        let compaction = match (entries, bytes) {
            (0, 0) => "never compacted".to_owned(),
            (n, 0) => format!("compacted after {n} entries"),
            (0, b) => format!("compacted after {}", settings::show_bytes(b)),
            (n, b) => format!("compacted after {n} entries or {}", settings::show_bytes(b)),
        };
        format!("{writer}; {compaction}")
    }
}

/// One compaction trigger of [`RegistrationLogConfig`]: a threshold (at
/// least 1), or off. `0` is refused rather than read as either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CompactionTrigger {
    /// This trigger never fires.
    Off,
    /// Fires at this many entries (or bytes).
    After(NonZeroU64),
}

impl CompactionTrigger {
    /// The threshold as [`ObjectStoreOptions`] takes it (0 = off).
    pub fn threshold(self) -> u64 {
        match self {
            Self::Off => 0,
            Self::After(n) => n.get(),
        }
    }

    fn off(text: &str) -> bool {
        matches!(
            text.trim().to_ascii_lowercase().as_str(),
            "off" | "never" | "false" | "no"
        )
    }

    fn nonzero(n: u64, what: &str) -> std::result::Result<Self, String> {
        NonZeroU64::new(n).map(Self::After).ok_or_else(|| {
            format!("0 is not a threshold: give a number of {what} (at least 1), or `off` to turn this trigger off")
        })
    }

    /// A number of entries, or `off`.
    pub fn parse_entries(text: &str) -> std::result::Result<Self, String> {
        if Self::off(text) {
            return Ok(Self::Off);
        }
        let n = settings::parse_number(text)
            .map_err(|e| format!("{e} (a number of entries, or `off`)"))?;
        Self::nonzero(n, "entries")
    }

    /// A size (`8MiB`, plain bytes), or `off`.
    pub fn parse_bytes(text: &str) -> std::result::Result<Self, String> {
        if Self::off(text) {
            return Ok(Self::Off);
        }
        let n = settings::parse_bytes(text).map_err(|e| format!("{e}, or `off`"))?;
        Self::nonzero(n, "bytes")
    }
}

impl Serialize for CompactionTrigger {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Self::Off => s.serialize_str("off"),
            Self::After(n) => s.serialize_u64(n.get()),
        }
    }
}

/// Reads a YAML scalar (a number, or a string such as `8MiB` or `off`) with
/// `parse`.
struct TriggerVisitor {
    parse: fn(&str) -> std::result::Result<CompactionTrigger, String>,
    what: &'static str,
}

impl serde::de::Visitor<'_> for TriggerVisitor {
    type Value = Option<CompactionTrigger>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.what)
    }

    fn visit_u64<E: serde::de::Error>(self, n: u64) -> std::result::Result<Self::Value, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_i64<E: serde::de::Error>(self, n: i64) -> std::result::Result<Self::Value, E> {
        self.visit_str(&n.to_string())
    }

    fn visit_bool<E: serde::de::Error>(self, on: bool) -> std::result::Result<Self::Value, E> {
        if on {
            Err(E::custom(format!("expected {}, not `true`", self.what)))
        } else {
            Ok(Some(CompactionTrigger::Off))
        }
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> std::result::Result<Self::Value, E> {
        (self.parse)(text).map(Some).map_err(E::custom)
    }

    fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> std::result::Result<Self::Value, E> {
        Ok(None)
    }
}

fn de_entries<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<CompactionTrigger>, D::Error> {
    d.deserialize_any(TriggerVisitor {
        parse: CompactionTrigger::parse_entries,
        what: "a number of entries, or `off`",
    })
}

fn de_bytes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<CompactionTrigger>, D::Error> {
    d.deserialize_any(TriggerVisitor {
        parse: CompactionTrigger::parse_bytes,
        what: "a size such as 8MiB, or `off`",
    })
}

fn de_writer_id<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<String>, D::Error> {
    let id = Option::<String>::deserialize(d)?;
    if let Some(id) = &id {
        ObjectStoreOptions::check_writer_id(id).map_err(serde::de::Error::custom)?;
    }
    Ok(id)
}

impl CfgsyncServerConfig {
    /// Reads a config file; relative artifact paths are resolved from its
    /// directory, and the [`SERVER_SETTINGS`] variables that are set
    /// override their keys ([`try_apply_env`](Self::try_apply_env)).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        let mut config = Self::from_file(path)?;
        config.try_apply_env(|name| std::env::var(name).ok())?;
        Ok(config)
    }

    /// The file alone: [`from_path`](Self::from_path) without the
    /// variables, for a caller that applies them itself (`cfgsync-server`
    /// takes each from its flag first, then from its variable).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
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
        Ok(config)
    }

    /// Overrides keys from the [`SERVER_SETTINGS`] variables that are set
    /// (`CFGSYNC_SHARED_TOKEN`, `CFGSYNC_NODE_SECRET`, `CFGSYNC_ADMIN_TOKEN`,
    /// `CFGSYNC_REGISTRATION_LOG_*`); the first invalid value fails, naming
    /// its variable ([`Error::InvalidVar`]).
    pub fn try_apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        Ok(settings::apply_settings(
            self,
            SERVER_SETTINGS,
            settings::from_vars(var),
        )?)
    }

    /// [`try_apply_env`](Self::try_apply_env) that ignores an invalid value
    /// (and the settings after it in the table; the secrets come first and
    /// take any value).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) {
        let _ = self.try_apply_env(var);
    }

    /// The address to listen on.
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.bind, self.port)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SOURCE: &str = "source:\n  kind: registration\n  artifacts_path: a.yaml\n";

    fn parse(yaml: &str) -> std::result::Result<CfgsyncServerConfig, String> {
        cfgsync_core::document::parse_yaml(&format!("{SOURCE}{yaml}"))
    }

    fn with_env(
        yaml: &str,
        vars: &[(&str, &str)],
    ) -> std::result::Result<CfgsyncServerConfig, String> {
        let mut config = parse(yaml)?;
        config
            .try_apply_env(|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            })
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn registration_log_keys_and_variables_reach_the_object_store_options() {
        // Unset: the library's defaults, and the defaults --help shows agree.
        let config = parse("registration_store: memory:///\n").unwrap();
        let defaults = ObjectStoreOptions::default();
        assert_eq!(config.registration_log.object_store_options(), defaults);
        let shown = |var: &str| {
            SERVER_SETTINGS
                .iter()
                .find(|s| s.var == var)
                .unwrap()
                .default
                .unwrap()
        };
        assert_eq!(
            shown(ENV_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES).parse::<u64>(),
            Ok(defaults.compact_after_entries)
        );
        assert_eq!(
            settings::parse_bytes(shown(ENV_REGISTRATION_LOG_COMPACT_AFTER_BYTES)),
            Ok(defaults.compact_after_bytes)
        );
        assert_eq!(
            config.registration_log.describe(),
            "a new writer id per start; compacted after 256 entries or 8MiB"
        );

        // The file: numbers, sizes and `off`.
        let config = parse(
            "registration_store: memory:///\nregistration_log:\n  writer_id: replica-a\n  compact_after_entries: 4\n  compact_after_bytes: 1MiB\n",
        )
        .unwrap();
        let options = config.registration_log.object_store_options();
        assert_eq!(options.writer_id.as_deref(), Some("replica-a"));
        assert_eq!(
            (options.compact_after_entries, options.compact_after_bytes),
            (4, 1 << 20)
        );
        let off = parse(
            "registration_store: memory:///\nregistration_log:\n  compact_after_entries: off\n  compact_after_bytes: 65536\n",
        )
        .unwrap();
        let options = off.registration_log.object_store_options();
        assert_eq!(
            (options.compact_after_entries, options.compact_after_bytes),
            (0, 65536)
        );
        assert_eq!(
            off.registration_log.describe(),
            "a new writer id per start; compacted after 64KiB"
        );

        // A variable wins over the file.
        let config = with_env(
            "registration_store: memory:///\nregistration_log:\n  compact_after_entries: 4\n",
            &[
                (ENV_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES, "off"),
                (ENV_REGISTRATION_LOG_COMPACT_AFTER_BYTES, "off"),
                (ENV_REGISTRATION_LOG_WRITER_ID, "pod-0"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.registration_log.describe(),
            "writer id pod-0; never compacted"
        );
        // The config round-trips through YAML with its log keys.
        let text = serde_json::to_string(&config).unwrap();
        assert!(
            text.contains(r#""registration_log":{"writer_id":"pod-0","compact_after_entries":"off","compact_after_bytes":"off"}"#),
            "{text}"
        );
    }

    #[test]
    fn bad_registration_log_values_fail_naming_the_key_or_variable() {
        let err = |yaml: &str| parse(&format!("registration_log:\n{yaml}")).unwrap_err();
        assert_eq!(
            err("  compact_after_entries: 0\n"),
            "at `registration_log.compact_after_entries`: 0 is not a threshold: give a number of entries (at least 1), or `off` to turn this trigger off at line 5, column 26"
        );
        assert!(
            err("  compact_after_bytes: 8 parsecs\n")
                .starts_with("at `registration_log.compact_after_bytes`: unknown size unit"),
        );
        assert!(
            err("  compact_after_entries: -3\n").starts_with(
                "at `registration_log.compact_after_entries`: expected a whole number"
            ),
        );
        assert!(
            err("  writer_id: ../other\n").starts_with(
                "at `registration_log.writer_id`: writer id \"../other\" is not usable"
            ),
        );
        let typo = err("  compact_after_entrys: 4\n");
        assert!(
            typo.starts_with(
                "at `registration_log.compact_after_entrys`: unknown field `compact_after_entrys`, expected one of writer_id, compact_after_entries"
            ),
            "{typo}"
        );

        assert_eq!(
            with_env("", &[(ENV_REGISTRATION_LOG_COMPACT_AFTER_BYTES, "0")]).unwrap_err(),
            "invalid CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_BYTES=\"0\": 0 is not a threshold: give a number of bytes (at least 1), or `off` to turn this trigger off"
        );
        assert!(
            with_env("", &[(ENV_REGISTRATION_LOG_WRITER_ID, "a b")])
                .unwrap_err()
                .starts_with("invalid CFGSYNC_REGISTRATION_LOG_WRITER_ID=\"a b\": writer id")
        );
    }

    #[test]
    fn registration_log_keys_without_an_object_store_are_refused() {
        for store in [
            "",
            "registration_store: memory\n",
            "registration_store: file:///tmp/r\n",
        ] {
            let config = parse(&format!(
                "{store}registration_log:\n  compact_after_entries: 4\n"
            ))
            .unwrap();
            let error = config
                .registration_log
                .check_store(&config.registration_store)
                .unwrap_err();
            let text = error.to_string();
            assert!(
                matches!(error, Error::RegistrationLogUnused { .. })
                    && text.starts_with(
                        "registration_log.compact_after_entries (CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES) is set, but registration_store is "
                    ),
                "{text}"
            );
        }
        let object =
            parse("registration_store: memory:///\nregistration_log:\n  writer_id: a\n").unwrap();
        assert!(
            object
                .registration_log
                .check_store(&object.registration_store)
                .is_ok()
        );
        // Nothing set: any store.
        let plain = parse("registration_store: memory\n").unwrap();
        assert!(
            plain
                .registration_log
                .check_store(&plain.registration_store)
                .is_ok()
        );
    }
}
