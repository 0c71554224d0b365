#![allow(clippy::panic)]
//! README ↔ `--help` agreement: the variables a README's settings tables
//! list, and the variables a binary's `--help` shows.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// Prefixes of the project's variables.
const PREFIXES: &[&str] = &["CFGSYNC_", "CFG_", "LABLET_"];

fn is_var(text: &str) -> bool {
    PREFIXES.iter().any(|p| text.starts_with(p))
        && text
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// The variables named (as a whole backticked cell value, e.g. `` `LABLET_STORE` ``)
/// in the table rows of `readme`, only under the heading `section` (up to the
/// next heading of the same or a higher level) when given.
pub fn readme_table_vars(readme: &Path, section: Option<&str>) -> BTreeSet<String> {
    let text = std::fs::read_to_string(readme)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", readme.display()));
    let mut inside = section.is_none();
    let mut level = 0;
    let mut vars = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with('#') {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            if let Some(section) = section {
                if line.trim() == section {
                    inside = true;
                    level = hashes;
                    continue;
                }
                if inside && hashes <= level {
                    inside = false;
                }
            }
        }
        if inside && line.starts_with('|') {
            vars.extend(
                line.split('`')
                    .skip(1)
                    .step_by(2)
                    .filter(|cell| is_var(cell))
                    .map(str::to_owned),
            );
        }
    }
    vars
}

/// The variables (`[env: NAME...]`) the `--help` of `bin` shows, for the
/// binary itself and each of `subcommands` (each a list of words, e.g.
/// `["catalog", "list"]`).
pub fn help_vars(bin: &str, subcommands: &[&[&str]]) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for words in std::iter::once(&[][..]).chain(subcommands.iter().copied()) {
        let out = Command::new(bin)
            .args(words)
            .arg("--help")
            .env_clear()
            .output()
            .unwrap_or_else(|e| panic!("cannot run {bin}: {e}"));
        assert!(out.status.success(), "{bin} {words:?} --help failed");
        let help = String::from_utf8_lossy(&out.stdout);
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            vars.insert(name);
        }
    }
    vars
}
