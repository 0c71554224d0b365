//! Settings declared once: a [`Setting`] names a variable, its flag, the
//! default shown in `--help`, and how a value is parsed into a typed config.
//!
//! A table of settings (`&[Setting<C>]`) is the one source of truth for a
//! config `C`: the library reads it from the environment
//! ([`apply_settings`] with an env lookup, no clap needed), and with the `cli`
//! feature the binaries turn the same table into clap arguments
//! ([`cli::args`]), read them back ([`cli::values`]), and warn about unknown
//! variables that look like typos of the known ones ([`cli::warn_unknown_vars`]).
//!
//! The value parsers every setting shares live here too: sizes
//! ([`parse_bytes`]: `4GiB`, `512MiB`, `1048576`), durations
//! ([`parse_duration`]: `30` in the setting's unit, or `30s`, `5m`, `1h 30m`),
//! booleans ([`parse_bool`]) and HTTP URLs ([`parse_http_url`]).

use std::time::Duration;

#[cfg(feature = "cli")]
pub mod cli;

/// Parses one value into the config `C` (`Err` says what is wrong with it).
pub type Apply<C> = fn(&mut C, &str) -> Result<(), String>;

/// One setting of a config `C`: the variable and flag that set it, the
/// default shown in `--help`, and how its value is parsed into `C`.
///
/// Declare each setting once, in the config's table (see the module docs):
///
/// ```
/// use cfgsync_runtime::settings::{Setting, parse_bytes};
///
/// #[derive(Default)]
/// struct Limits { max_bytes: u64 }
///
/// // `S::new` names the config type, so the closures need no annotations.
/// type S = Setting<Limits>;
///
/// const SETTINGS: &[Setting<Limits>] = &[
///     S::new("APP_MAX_BYTES", "--max-bytes", "SIZE", "Largest file accepted",
///            |c, v| { c.max_bytes = parse_bytes(v)?; Ok(()) })
///         .default("64MiB"),
/// ];
/// ```
pub struct Setting<C> {
    /// The environment variable, e.g. `CFG_SERVER_ADDR`.
    pub var: &'static str,
    /// The flag, with its dashes, e.g. `--server`.
    pub flag: &'static str,
    /// The placeholder in `--help`, e.g. `URL`.
    pub value_name: &'static str,
    /// One line of help (the default is appended).
    pub help: &'static str,
    /// The default as shown in `--help` (a value or a description); `None`
    /// for "unset".
    pub default: Option<&'static str>,
    /// A secret: its value is never shown (not in `--help`, not in errors).
    pub secret: bool,
    /// A boolean that may be given as a bare flag (`--flag` means `true`).
    pub switch: bool,
    /// Parses a value into the config.
    pub apply: Apply<C>,
}

impl<C> Setting<C> {
    /// A setting with no default.
    pub const fn new(
        var: &'static str,
        flag: &'static str,
        value_name: &'static str,
        help: &'static str,
        apply: Apply<C>,
    ) -> Self {
        Self {
            var,
            flag,
            value_name,
            help,
            default: None,
            secret: false,
            switch: false,
            apply,
        }
    }

    /// Builder: the default shown in `--help` (the config's `Default` holds
    /// the value itself; a test should check the two agree).
    pub const fn default(mut self, shown: &'static str) -> Self {
        self.default = Some(shown);
        self
    }

    /// Builder: the value is a secret.
    pub const fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Builder: a boolean that may be given as a bare flag.
    pub const fn switch(mut self) -> Self {
        self.switch = true;
        self
    }

    /// The value as shown in an error: `***` for a secret, else cut to a
    /// readable length.
    pub fn shown(&self, value: &str) -> String {
        if self.secret {
            return "***".to_owned();
        }
        const MAX: usize = 120;
        match value.char_indices().nth(MAX) {
            Some((cut, _)) => format!("{}...", &value[..cut]),
            None => value.to_owned(),
        }
    }
}

impl<C> Clone for Setting<C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Setting<C> {}

impl<C> std::fmt::Debug for Setting<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setting")
            .field("var", &self.var)
            .field("flag", &self.flag)
            .field("default", &self.default)
            .finish_non_exhaustive()
    }
}

/// A setting's value could not be used. `name` is what the user typed: the
/// flag when the value came from the command line, else the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
#[non_exhaustive]
pub struct SettingError {
    /// The flag (`--server`) or the variable (`CFG_SERVER_ADDR`).
    pub name: &'static str,
    /// The value as given (`***` for a secret).
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Where a setting's value came from: the flag or the variable, named as the
/// user typed it.
pub type Given = (String, &'static str);

/// Applies each setting that `value_of` has a value for, in table order; the
/// first bad value fails, naming where it came from.
pub fn apply_settings<C>(
    config: &mut C,
    settings: &[Setting<C>],
    value_of: impl Fn(&Setting<C>) -> Option<Given>,
) -> Result<(), SettingError> {
    for setting in settings {
        if let Some((value, name)) = value_of(setting) {
            (setting.apply)(config, &value).map_err(|reason| SettingError {
                name,
                value: setting.shown(&value),
                reason,
            })?;
        }
    }
    Ok(())
}

/// A lookup of variables (`get`, e.g. `std::env::var`) as the value source of
/// [`apply_settings`]: an empty variable counts as unset.
pub fn from_vars<C>(get: impl Fn(&str) -> Option<String>) -> impl Fn(&Setting<C>) -> Option<Given> {
    move |setting| {
        get(setting.var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| (v, setting.var))
    }
}

/// The process environment as the value source of [`apply_settings`]
/// (non-UTF-8 values are read lossily, so they fail as bad values).
pub fn from_process_env<C>() -> impl Fn(&Setting<C>) -> Option<Given> {
    from_vars(|name| std::env::var_os(name).map(|v| v.to_string_lossy().into_owned()))
}

/// A size: plain bytes (`1048576`) or a number with a unit: `KiB`, `MiB`,
/// `GiB`, `TiB` (and `K`/`M`/`G`/`T`, `KB`/`MB`/`GB`/`TB`, all binary, as
/// people mean them for file sizes), `B`; case and a space before the unit do
/// not matter.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| "expected a size such as 4GiB, 512MiB or 1048576 (bytes)".to_owned())?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?}: use B, KiB, MiB, GiB or TiB (e.g. 4GiB)"
            ));
        }
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| "too large for 64 bits".to_owned())
}

/// A size for people to read, in the units [`parse_bytes`] reads: the
/// largest binary unit that divides it exactly (`8MiB`, `64KiB`), else
/// `N bytes`.
pub fn show_bytes(bytes: u64) -> String {
    for (unit, shift) in [("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// A duration: a plain number counts in `plain_unit` (seconds for `*_SECS`
/// settings, milliseconds for `*_MS`); anything else as `humantime` reads
/// it: `30s`, `5m`, `1h 30m`, `250ms`.
pub fn parse_duration(text: &str, plain_unit: Duration) -> Result<Duration, String> {
    let t = text.trim();
    if let Ok(n) = t.parse::<u32>() {
        return Ok(plain_unit * n);
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("expected a duration such as 30, 30s, 5m or 1h 30m ({e})"))
}

/// A duration (see [`parse_duration`], plain numbers in seconds) in whole
/// seconds: `90`, `90s`, `1m 30s`.
pub fn parse_secs(text: &str) -> Result<u64, String> {
    let d = parse_duration(text, Duration::from_secs(1))?;
    if d.subsec_nanos() != 0 {
        return Err("expected whole seconds (e.g. 30, 30s, 5m)".to_owned());
    }
    Ok(d.as_secs())
}

/// A duration (see [`parse_duration`], plain numbers in milliseconds) in
/// milliseconds: `200`, `200ms`, `5s`.
pub fn parse_millis(text: &str) -> Result<u64, String> {
    let d = parse_duration(text, Duration::from_millis(1))?;
    u64::try_from(d.as_millis()).map_err(|_| "too large".to_owned())
}

/// A boolean: `true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`.
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected true or false (also 1/0, yes/no, on/off)".to_owned()),
    }
}

/// A whole number.
pub fn parse_number<T: std::str::FromStr>(text: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    text.trim()
        .parse()
        .map_err(|e| format!("expected a whole number: {e}"))
}

/// An `http://` or `https://` URL with a host; returned trimmed, without a
/// trailing `/`.
pub fn parse_http_url(text: &str) -> Result<String, String> {
    let t = text.trim();
    if !t.contains("://") {
        return Err(format!("not a URL: give the scheme, e.g. http://{t}"));
    }
    let url = url::Url::parse(t).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported scheme {:?}: use http:// or https://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("the URL has no host".to_owned());
    }
    Ok(t.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_durations_and_urls_parse_as_people_write_them() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        for size in ["8MiB", "64KiB", "4GiB"] {
            assert_eq!(show_bytes(parse_bytes(size).unwrap()), size);
        }
        assert_eq!(show_bytes(65_537), "65537 bytes");
        assert_eq!(parse_bytes("512 MiB"), Ok(512 << 20));
        assert_eq!(parse_bytes("8M"), Ok(8 << 20));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        assert!(parse_bytes("lots").unwrap_err().contains("4GiB"));
        assert!(
            parse_bytes("4 parsecs")
                .unwrap_err()
                .contains("unknown size unit")
        );
        assert!(parse_bytes("99999999999999TiB").is_err());

        assert_eq!(parse_secs("30"), Ok(30));
        assert_eq!(parse_secs("5m"), Ok(300));
        assert_eq!(parse_secs("1h 30m"), Ok(5400));
        assert!(parse_secs("1500ms").is_err());
        assert!(parse_secs("soon").is_err());
        assert_eq!(parse_millis("200"), Ok(200));
        assert_eq!(parse_millis("5s"), Ok(5000));

        assert_eq!(parse_bool("on"), Ok(true));
        assert!(parse_bool("maybe").is_err());

        assert_eq!(
            parse_http_url("http://resolver:8080/"),
            Ok("http://resolver:8080".to_owned())
        );
        assert!(
            parse_http_url("localhost:4400")
                .unwrap_err()
                .contains("http://")
        );
        assert!(parse_http_url("ftp://x").unwrap_err().contains("ftp"));
    }
}
