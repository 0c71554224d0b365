//! The `lablet-sync` binary: inspect, sync, catalog, retry, errors.
use std::process::{Command, Output};

use crate::common::env::Env;
use crate::common::*;

fn bin(data_dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lablet-sync"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LABLET_DATA_DIR", data_dir)
        .env("LABLET_RETRY_ATTEMPTS", "1");
    cmd
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

#[test]
fn inspect_prints_fields_or_the_exact_reject_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.zip");
    let package = sample_package("7.1", "");
    std::fs::write(&good, &package).unwrap();
    let out = bin(dir.path()).arg("inspect").arg(&good).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!("content_package_hash: {}", sha256(&package))),
        "{stdout}"
    );
    assert!(stdout.contains("upstream_version: 7.1"), "{stdout}");
    assert!(stdout.contains("cml_yaml_path: LAB/cml.yaml"), "{stdout}");
    assert!(
        stdout.contains("grade_xml_path: LAB/grading/grade.xml"),
        "{stdout}"
    );

    let out = bin(dir.path())
        .args(["inspect", "--json"])
        .arg(&good)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cml_yaml_content"], CML);
    assert_eq!(v["meta"]["form_id"], "form-42");

    let bad = dir.path().join("bad.zip");
    std::fs::write(
        &bad,
        zip_bytes(&[("cml.yaml", CML.as_bytes()), ("../../etc/x", b"x")]),
    )
    .unwrap();
    let out = bin(dir.path()).arg("inspect").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("unsafe_name") && stderr.contains("../../etc/x"),
        "{stderr}"
    );

    // A missing file is not a verdict on a package: it says what it could
    // not read, and why.
    let missing = dir.path().join("missing.zip");
    let out = bin(dir.path())
        .arg("inspect")
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim(),
        format!(
            "error: cannot read {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    // With --json a failure is a JSON error object on stdout, same exit code.
    for (package, kind, code) in [
        (bad, "package_invalid", Some("unsafe_name")),
        (missing, "io", None),
    ] {
        let out = bin(dir.path())
            .args(["inspect", "--json"])
            .arg(&package)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["error"]["kind"], kind, "{v}");
        match code {
            Some(code) => {
                assert_eq!(v["error"]["stage"], "inspect", "{v}");
                assert_eq!(v["error"]["code"], code, "{v}");
            }
            None => assert!(v["error"]["stage"].is_null(), "{v}"),
        }
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&package.display().to_string()), "{v}");
    }
}

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for cmd in ["sync", "inspect", "catalog", "retry", "LABLET_STORE"] {
        assert!(help.contains(cmd), "{cmd} missing from --help: {help}");
    }
    assert_eq!(
        bin(dir.path()).arg("bogus").output().unwrap().status.code(),
        Some(2)
    );
}

#[test]
fn node_token_prints_tokens_scoped_to_the_lablet() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path())
        .env("CFGSYNC_NODE_SECRET", "node-s3cret")
        .args(["node-token", "--lablet", "LAB-1.1.1", "node-a", "node-b"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let secret = cfgsync_core::Secret::new("node-s3cret");
    let expected: String = ["node-a", "node-b"]
        .iter()
        .map(|node| {
            let token = cfgsync_core::auth::scoped_node_token(&secret, node, "LAB-1.1.1");
            format!("{node}\t{token}\n")
        })
        .collect();
    assert_eq!(text(&out.stdout), expected);
    assert!(!text(&out.stdout).contains("node-s3cret"));

    // No secret, a bad lablet name, a bad node: one line, exit 1, no token.
    for (args, secret, why) in [
        (
            &["--lablet", "LAB-1", "node-a"][..],
            None,
            "CFGSYNC_NODE_SECRET",
        ),
        (&["--lablet", "LAB 1", "node-a"][..], Some("s"), "LAB 1"),
        (
            &["--lablet", "LAB-1", "node-a", "a/b"][..],
            Some("s"),
            "a/b",
        ),
    ] {
        let mut cmd = bin(dir.path());
        if let Some(secret) = secret {
            cmd.env("CFGSYNC_NODE_SECRET", secret);
        }
        let out = cmd.arg("node-token").args(args).output().unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    }
    let help = text(
        &bin(dir.path())
            .args(["serve", "--help"])
            .output()
            .unwrap()
            .stdout,
    );
    assert!(
        help.contains("--node-token-scope") && help.contains("LABLET_NODE_TOKEN_SCOPE"),
        "{help}"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

#[tokio::test]
async fn sync_catalog_and_retry_through_the_binary() {
    let env = Env::start().await;
    let package = sample_package("1.0", "");
    env.publish("LAB-9", package.clone()).await;
    let data = env.data.path().join("cli");
    let with_env = |cmd: &mut Command| {
        cmd.env("LABLET_RESOLVER_URL", env.resolver.uri())
            .env("LABLET_LDS_URL", env.lds.uri())
            .env("LABLET_SE_URL", env.se.uri());
    };

    let mut cmd = bin(&data);
    with_env(&mut cmd);
    let out = run(cmd.args(["sync", "LAB-9", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let def: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(def["id"], "LAB-9");
    assert_eq!(def["content_package_hash"], sha256(&package));
    assert_eq!(def["status"], "synced");
    assert!(
        text(&out.stderr).contains("[6/6] LAB-9: record"),
        "{}",
        text(&out.stderr)
    );

    let out = run(bin(&data).args(["catalog", "list"]));
    assert!(
        text(&out.stdout).starts_with("LAB-9\tv1\tsynced\t1.0\t"),
        "{}",
        text(&out.stdout)
    );
    let out = run(bin(&data).args(["catalog", "list", "--instance", "other"]));
    assert!(text(&out.stdout).is_empty());
    let out = run(bin(&data).args(["catalog", "show", "LAB-9"]));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown, def);
    assert_eq!(
        run(bin(&data).args(["catalog", "show", "NOPE"]))
            .status
            .code(),
        Some(1)
    );

    // SE down: stale, exit 3, queued; retry once SE is back
    env.se.reset().await;
    let mut cmd = bin(&data);
    with_env(&mut cmd);
    let out = run(cmd.args(["sync", "LAB-9"]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("catalog synced but delivery stale"));
    env.targets_ok().await;
    let out = run(bin(&data).arg("retry"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("delivered 1, still pending 0"),
        "{}",
        text(&out.stdout)
    );

    // resolver unknown name: one line, stage named, exit 1
    let mut cmd = bin(&data);
    with_env(&mut cmd);
    let out = run(cmd.args(["sync", "LAB-UNKNOWN"]));
    assert_eq!(out.status.code(), Some(1));
    // stderr: the progress lines, then exactly one error line, nothing else
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let (last, progress) = lines.split_last().unwrap();
    assert!(
        last.starts_with("error [resolve]: cannot resolve content for lablet LAB-UNKNOWN"),
        "{stderr}"
    );
    assert_eq!(*progress, ["[1/6] LAB-UNKNOWN: resolve"], "{stderr}");
    assert!(out.stdout.is_empty());

    // The same failure with --json: a JSON error object on stdout, exit 1.
    let mut cmd = bin(&data);
    with_env(&mut cmd);
    let out = run(cmd.args(["sync", "LAB-UNKNOWN", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "cannot_resolve_content", "{v}");
    assert_eq!(v["error"]["stage"], "resolve", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("cannot resolve content for lablet LAB-UNKNOWN"),
        "{v}"
    );

    // A failure before any stage (a bad setting: exit 2) too.
    let mut cmd = bin(&data);
    with_env(&mut cmd);
    let out = run(cmd
        .env("LABLET_CATALOG", "nonsense")
        .args(["catalog", "list", "--json"]));
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "config", "{v}");
    assert!(v["error"]["stage"].is_null(), "{v}");
}

#[tokio::test]
async fn serve_takes_its_connection_limits_from_flags_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin(dir.path()).args(["serve", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--header-read-timeout-secs",
        "LABLET_HEADER_READ_TIMEOUT_SECS",
        "--idle-timeout-secs",
        "LABLET_IDLE_TIMEOUT_SECS",
        "--max-connections",
        "LABLET_MAX_CONNECTIONS",
        "--shutdown-timeout-secs",
        "LABLET_SHUTDOWN_TIMEOUT_SECS",
    ] {
        assert!(
            help.contains(flag),
            "{flag} missing from serve --help: {help}"
        );
    }
    let bad = bin(dir.path())
        .args(["serve", "--max-connections", "many"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));

    // a served idle connection is closed after the configured 1 s (default 30 s)
    let port = cfgsync_test_support::free_port();
    let mut child = bin(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("LABLET_IDLE_TIMEOUT_SECS", "1")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut socket = None;
    for _ in 0..400 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            socket = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let mut socket = socket.expect("lablet-sync serve listens");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        tokio::io::AsyncReadExt::read(&mut socket, &mut buf),
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let read = read.expect("the idle connection is closed well before the 30 s default");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn serve_logs_a_failed_api_sync_at_the_default_level_as_json() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let port = cfgsync_test_support::free_port();
    let child = bin(dir.path())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--log-format", "json"])
        .env("LABLET_RESOLVER_URL", env.resolver.uri())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = cfgsync_test_support::http_client();
    let url = format!("http://127.0.0.1:{port}/api/v1/lablets/LAB-UNKNOWN/sync");
    let mut answer = None;
    for _ in 0..400 {
        if let Ok(response) = http.post(&url).send().await {
            answer = Some(response.status().as_u16());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(answer, Some(502));
    // SIGKILL: stderr holds what was logged so far.
    let mut child = child;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let logs: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let failed = logs
        .iter()
        .find(|l| l["fields"]["message"] == "sync failed")
        .unwrap_or_else(|| panic!("no `sync failed` line in {}", text(&out.stderr)));
    assert_eq!(failed["level"], "WARN", "{failed}");
    assert_eq!(failed["fields"]["lablet"], "LAB-UNKNOWN", "{failed}");
    assert_eq!(failed["fields"]["stage"], "resolve", "{failed}");
    assert!(
        failed["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("cannot resolve content"),
        "{failed}"
    );
}

#[test]
fn settings_take_units_name_what_was_typed_and_flag_likely_typos() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.zip");
    std::fs::write(&good, sample_package("7.1", "")).unwrap();

    // A size with a unit is accepted, as the bench accepts it; a mistyped
    // variable is named with the closest known one, and the run goes on.
    let out = bin(dir.path())
        .env("LABLET_MAX_PACKAGE_BYTES", "4GiB")
        .env("LABLET_RESOLVR_URL", "http://resolver:8080")
        .arg("inspect")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr).lines().collect::<Vec<_>>(),
        ["warning: unknown variable LABLET_RESOLVR_URL; did you mean LABLET_RESOLVER_URL?"]
    );

    // A bad value is named as the user gave it: the variable ...
    let out = bin(dir.path())
        .env("LABLET_MAX_PACKAGE_BYTES", "lots")
        .arg("inspect")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: LABLET_MAX_PACKAGE_BYTES: invalid value \"lots\": expected a size such as 4GiB, \
         512MiB or 1048576 (bytes) (see --help)"
    );
    // ... or the flag, before or after the subcommand; a store URL with a
    // scheme no store speaks fails before anything runs.
    let out = bin(dir.path())
        .args(["inspect", "--store", "ftp://x"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr).trim(),
        "error: --store: invalid value \"ftp://x\": expected file:///DIR or s3://BUCKET[/PREFIX] \
         (see --help)"
    );
    // serve's own settings too, secrets never shown.
    let out = bin(dir.path())
        .env("LABLET_IDLE_TIMEOUT_SECS", "soon")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with("error: LABLET_IDLE_TIMEOUT_SECS: invalid value \"soon\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn help_and_readmes_list_the_same_variables() {
    use cfgsync_test_support::readme::{help_vars, readme_table_vars};
    let help = help_vars(
        env!("CARGO_BIN_EXE_lablet-sync"),
        &[
            &["sync"],
            &["inspect"],
            &["catalog"],
            &["catalog", "list"],
            &["catalog", "show"],
            &["retry"],
            &["serve"],
            &["node-token"],
        ],
    );
    assert!(help.len() >= 30, "{help:?}");
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let crate_readme = readme_table_vars(&dir.join("README.md"), None);
    assert_eq!(
        help, crate_readme,
        "--help (left) vs adapters/lablet/README.md (right)"
    );
    let root_readme = readme_table_vars(&dir.join("../../README.md"), Some("### `lablet-sync`"));
    assert_eq!(help, root_readme, "--help (left) vs README.md (right)");
}
