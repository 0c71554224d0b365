//! `--help` of each binary lists every variable the README's tables list for
//! it, and the README lists every variable `--help` shows.
use std::path::PathBuf;

use cfgsync_test_support::readme::{help_vars, readme_table_vars};

fn readme() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")
}

#[test]
fn cfgsync_client_help_and_readme_list_the_same_variables() {
    let help = help_vars(env!("CARGO_BIN_EXE_cfgsync-client"), &[]);
    let readme = readme_table_vars(&readme(), Some("### `cfgsync-client`"));
    assert!(help.len() >= 11, "{help:?}");
    assert_eq!(help, readme, "--help (left) vs README.md (right)");
}

#[test]
fn cfgsync_server_help_and_readme_list_the_same_variables() {
    let help = help_vars(
        env!("CARGO_BIN_EXE_cfgsync-server"),
        &[&["serve"], &["check"], &["node-token"]],
    );
    let readme = readme_table_vars(&readme(), Some("### `cfgsync-server`"));
    assert!(help.contains("CFGSYNC_CONFIG"), "{help:?}");
    assert_eq!(help, readme, "--help (left) vs README.md (right)");
}
