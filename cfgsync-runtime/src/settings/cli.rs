//! The clap side of [`Setting`] tables (feature `cli`): each setting becomes
//! one argument with its flag, its variable (`env`) and its default in
//! `--help`; values come back naming the flag or the variable they came from;
//! unknown variables that look like typos of known ones are warned about.

use std::collections::BTreeSet;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use super::{Given, Setting};

/// The clap arguments of a settings table: `--flag VALUE`, falling back to the
/// variable, the default shown in the help line. Add them to a command with
/// `.args(args(TABLE))` (and `.global(true)` on each to accept them after a
/// subcommand).
pub fn args<C>(settings: &'static [Setting<C>]) -> impl Iterator<Item = Arg> {
    settings.iter().map(|setting| {
        let help = match setting.default {
            Some(default) => format!("{} [default: {default}]", setting.help),
            None => setting.help.to_owned(),
        };
        let arg = Arg::new(setting.var)
            .long(setting.flag.trim_start_matches('-'))
            .env(setting.var)
            .value_name(setting.value_name)
            .help(help)
            .action(ArgAction::Set)
            .hide_env_values(setting.secret);
        if setting.switch {
            arg.num_args(0..=1).default_missing_value("true")
        } else {
            arg
        }
    })
}

/// The value source for [`super::apply_settings`] from parsed arguments: a
/// value given on the command line is named by its flag, one from the
/// environment by its variable; empty values count as unset.
pub fn values<C>(matches: &ArgMatches) -> impl Fn(&Setting<C>) -> Option<Given> + '_ {
    move |setting| {
        let value = matches
            .try_get_one::<String>(setting.var)
            .ok()
            .flatten()
            .filter(|v| !v.trim().is_empty())?;
        let name = match matches.value_source(setting.var) {
            Some(ValueSource::CommandLine) => setting.flag,
            _ => setting.var,
        };
        Some((value.clone(), name))
    }
}

/// Every variable a command reads through clap (`env = ...`), subcommands
/// included: the known names the typo check compares against.
pub fn known_vars(command: &Command) -> BTreeSet<String> {
    let mut known = BTreeSet::new();
    collect_vars(command, &mut known);
    known
}

fn collect_vars(command: &Command, known: &mut BTreeSet<String>) {
    for arg in command.get_arguments() {
        if let Some(var) = arg.get_env() {
            known.insert(var.to_string_lossy().into_owned());
        }
    }
    for sub in command.get_subcommands() {
        collect_vars(sub, known);
    }
}

/// The variables in `env` that start with one of `prefixes`, are not known
/// to `command`, and are close to a known one: each with the closest known
/// name. Names far from every known one are left alone (they belong to other
/// tools or tests, not to a typo).
pub fn unknown_vars(
    command: &Command,
    prefixes: &[&str],
    env: impl IntoIterator<Item = String>,
) -> Vec<(String, String)> {
    let known = known_vars(command);
    let mut found: Vec<(String, String)> = env
        .into_iter()
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p)) && !known.contains(name))
        .filter_map(|name| {
            let (distance, closest) = known
                .iter()
                .map(|k| (strsim::levenshtein(&name, k), k))
                .min()?;
            (distance <= (name.len() / 6).max(2)).then(|| (name, closest.clone()))
        })
        .collect();
    found.sort();
    found
}

/// Prints one warning line on stderr per likely typo among the process's
/// variables (see [`unknown_vars`]):
/// `warning: unknown variable LABLET_RESOLVR_URL; did you mean LABLET_RESOLVER_URL?`
pub fn warn_unknown_vars(command: &Command, prefixes: &[&str]) {
    let env = std::env::vars_os().filter_map(|(name, _)| name.into_string().ok());
    for line in typo_warnings(command, prefixes, env) {
        eprintln!("{line}");
    }
}

/// The lines [`warn_unknown_vars`] prints.
pub fn typo_warnings(
    command: &Command,
    prefixes: &[&str],
    env: impl IntoIterator<Item = String>,
) -> Vec<String> {
    unknown_vars(command, prefixes, env)
        .into_iter()
        .map(|(name, closest)| format!("warning: unknown variable {name}; did you mean {closest}?"))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::settings::{Setting, apply_settings};

    #[derive(Default, Debug)]
    struct Conf {
        url: String,
        size: u64,
        on: bool,
    }

    type S = Setting<Conf>;
    const TABLE: &[Setting<Conf>] = &[
        S::new("T_URL", "--url", "URL", "the url", |c, v| {
            c.url = crate::settings::parse_http_url(v)?;
            Ok(())
        }),
        S::new("T_SIZE", "--size", "SIZE", "the size", |c, v| {
            c.size = crate::settings::parse_bytes(v)?;
            Ok(())
        })
        .default("1MiB"),
        S::new("T_ON", "--on", "BOOL", "a switch", |c, v| {
            c.on = crate::settings::parse_bool(v)?;
            Ok(())
        })
        .switch(),
    ];

    fn parse(argv: &[&str]) -> Result<Conf, String> {
        let matches = Command::new("t")
            .args(args(TABLE))
            .try_get_matches_from(argv)
            .map_err(|e| e.to_string())?;
        let mut conf = Conf::default();
        apply_settings(&mut conf, TABLE, values(&matches)).map_err(|e| e.to_string())?;
        Ok(conf)
    }

    #[test]
    fn values_are_typed_and_errors_name_the_flag() {
        let conf = parse(&["t", "--url", "http://x/", "--size", "4GiB", "--on"]).unwrap();
        assert_eq!(
            (conf.url.as_str(), conf.size, conf.on),
            ("http://x", 4 << 30, true)
        );
        assert_eq!(
            parse(&["t", "--url", "localhost:4400"]).unwrap_err(),
            "invalid --url=\"localhost:4400\": not a URL: give the scheme, e.g. http://localhost:4400"
        );
        let help = Command::new("t")
            .args(args(TABLE))
            .render_help()
            .to_string();
        assert!(help.contains("the size [default: 1MiB]"), "{help}");
        assert!(help.contains("[env: T_SIZE="), "{help}");
    }

    #[test]
    fn typos_are_named_with_the_closest_known_variable() {
        let command = Command::new("t").args(args(TABLE));
        let env = ["T_SIZ", "T_URL", "OTHER", "T_COMPLETELY_UNRELATED_NAME"].map(String::from);
        assert_eq!(
            typo_warnings(&command, &["T_"], env),
            ["warning: unknown variable T_SIZ; did you mean T_SIZE?"]
        );
    }
}
