//! The config-driven server: example configs, the real binary, durability across kill -9.
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use crate::common::wait_healthy;
use cfgsync_core::{CfgsyncClient, Error, NodeRegistration};
use cfgsync_runtime::{
    CfgsyncServerConfig, CfgsyncServingMode, RegistrationStoreConfig, build_server_state,
};
use cfgsync_test_support::TestServer;
use cfgsync_test_support::free_port;

const SERVER: &str = env!("CARGO_BIN_EXE_cfgsync-server");

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn reg(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "127.0.0.1".parse().unwrap())
}

async fn serve_config(config: &CfgsyncServerConfig) -> TestServer {
    TestServer::start(build_server_state(config).await.unwrap()).await
}

#[tokio::test]
async fn example_configs_load_and_serve() {
    // The original's format: a bundle, no registration needed.
    let config = CfgsyncServerConfig::from_path(examples().join("cfgsync-server.yaml")).unwrap();
    assert_eq!(config.port, 4400);
    assert!(
        matches!(&config.source, CfgsyncServingMode::Bundle { artifacts_path } if artifacts_path.is_absolute() || artifacts_path.starts_with(examples()))
    );
    let server = serve_config(&config).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let payload = client.fetch_node_config(&reg("node-1")).await.unwrap();
    assert_eq!(
        payload.files.get("/deployment.yaml").unwrap().content,
        "peers: [node-1, node-2]\n"
    );

    // Every optional key: registration mode, durable store, auth, limits.
    let mut config =
        CfgsyncServerConfig::from_path(examples().join("cfgsync-registration.yaml")).unwrap();
    assert_eq!(config.limits.max_wait_secs, 60);
    assert_eq!(
        (
            config.limits.header_read_timeout_secs,
            config.limits.idle_timeout_secs,
            config.limits.max_connections,
            config.limits.shutdown_timeout_secs,
        ),
        (10, 30, Some(12000), 30)
    );
    let dir = tempfile::tempdir().unwrap();
    config.registration_store = RegistrationStoreConfig::Durable(dir.path().to_path_buf());
    let token = cfgsync_core::auth::node_token(config.auth.node_secret.as_ref().unwrap(), "node-1");
    let server = serve_config(&config).await;
    let client = CfgsyncClient::builder(&server.url)
        .bearer_token(&token)
        .build()
        .unwrap();
    assert!(matches!(
        client.fetch_node_config(&reg("node-1")).await,
        Err(Error::NotReady { .. })
    ));
    client.register_node(&reg("node-1")).await.unwrap();
    let payload = client.fetch_node_config(&reg("node-1")).await.unwrap();
    assert_eq!(
        payload.files.get("/config.yaml").unwrap().content,
        "id: node-1\n"
    );
    assert_eq!(payload.files.len(), 2);
    // Without the token: 401.
    let anonymous = CfgsyncClient::new(&server.url).unwrap();
    assert!(matches!(
        anonymous.fetch_node_config(&reg("node-1")).await,
        Err(Error::Unauthorized { .. })
    ));
}

#[test]
fn config_env_overrides_secrets_and_aliases_parse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, "source:\n  kind: bundle\n  bundle_path: /abs/b.yaml\nregistration_store: s3://bucket/cfgsync/registrations\n").unwrap();
    let mut config = CfgsyncServerConfig::from_path(&path).unwrap();
    assert_eq!(config.port, 4400);
    assert_eq!(
        config.registration_store.to_string(),
        "s3://bucket/cfgsync/registrations"
    );
    config.apply_env(|name| (name == "CFGSYNC_NODE_SECRET").then(|| "from-env".to_owned()));
    assert_eq!(config.auth.node_secret.unwrap().expose(), "from-env");
}

fn write_config(dir: &Path, port: u16, store: &Path) -> PathBuf {
    let path = dir.join("server.yaml");
    std::fs::write(
        &path,
        format!(
            "port: {port}\nbind: 127.0.0.1\nsource:\n  kind: registration\n  artifacts_path: {}\nregistration_store: file://{}\n",
            examples().join("artifacts.yaml").display(),
            store.display()
        ),
    )
    .unwrap();
    path
}

fn spawn_server(config: &Path) -> Child {
    Command::new(SERVER)
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn durable_registrations_of_1000_nodes_survive_kill_9_of_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &dir.path().join("registrations"));
    let url = format!("http://127.0.0.1:{port}");

    let mut server = spawn_server(&config);
    wait_healthy(&url).await;
    let client = Arc::new(CfgsyncClient::new(&url).unwrap());
    let ids: Vec<String> = (0..1000)
        .map(|i| {
            if i < 2 {
                format!("node-{}", i + 1)
            } else {
                format!("extra-{i:04}")
            }
        })
        .collect();
    // 1,000 nodes register, 64 at a time; every 202 was committed before it was sent.
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let registrations = ids.iter().map(|id| {
        let (client, id, semaphore) = (client.clone(), id.clone(), semaphore.clone());
        tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            client.register_node(&reg(&id)).await
        })
    });
    for done in futures_join(registrations).await {
        done.unwrap();
    }
    server.kill().unwrap(); // SIGKILL: no shutdown, no flush.
    server.wait().unwrap();

    let mut server = spawn_server(&config);
    wait_healthy(&url).await;
    for id in &ids {
        // Registered before the kill: served (200 or 404 for nodes the artifacts
        // file does not name), never 425.
        match client.fetch_node_config(&reg(id)).await {
            Ok(payload) => assert!(id.starts_with("node-"), "{id}: {payload:?}"),
            Err(Error::MissingConfig { .. }) => assert!(id.starts_with("extra-"), "{id}"),
            Err(other) => panic!("{id} lost its registration: {other}"),
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

async fn futures_join<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<cfgsync_core::Result<T>>>,
) -> Vec<cfgsync_core::Result<T>> {
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

fn run_server(args: &[&str], config_text: Option<&str>) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(SERVER);
    if let Some(text) = config_text {
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        command.arg("--config").arg(&path);
    }
    let output = command.args(args).env("RUST_LOG", "off").output().unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn check_prints_a_summary_and_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("registrations");
    std::fs::write(
        dir.path().join("artifacts.yaml"),
        "nodes: {node-1: {files: [{path: /a, content: x}]}}\nshared: {files: [{path: /b, content: y}]}\n",
    )
    .unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        format!(
            "bind: 127.0.0.1\nregistration_store: file://{}\nsource:\n  kind: registration\n  artifacts_path: artifacts.yaml\n",
            store.display()
        ),
    )
    .unwrap();
    let listing = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        names
    };
    let before = listing();
    // `--config` after the subcommand, as a newcomer types it
    let out = Command::new(SERVER)
        .arg("check")
        .arg("--config")
        .arg(&config)
        .env("CFGSYNC_ADMIN_TOKEN", "admin-secret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        !stdout.contains("Registration {"),
        "no Debug dump: {stdout}"
    );
    for line in [
        "listen                 http://127.0.0.1:4400",
        "source                 registration: served once a node registered",
        "nodes                  1 node(s), 1 shared file(s)",
        "(created at start)",
        "auth                   on (admin token)",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from {stdout}");
    }
    assert!(!stdout.contains("admin-secret"));
    assert_eq!(listing(), before, "check created something");
    assert!(!store.exists());
}

/// `--config` may follow the command, so clap cannot require it: its
/// absence is still a usage error (exit 2) naming the flag and variable.
#[test]
fn a_missing_config_is_a_usage_error_naming_flag_and_variable() {
    for args in [&[][..], &["check"][..]] {
        let out = Command::new(SERVER)
            .args(args)
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("the server config is required: --config FILE (or CFGSYNC_CONFIG)"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn bad_configs_fail_with_one_clear_line() {
    let bundle = examples().join("bundle.yaml");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let cases = [
        (
            "source:\n  kind: magic\n  artifacts_path: x\n".to_owned(),
            "unknown variant `magic`",
        ),
        (
            "source:\n  kind: static\n  artifacts_path: /no/such/bundle.yaml\n".to_owned(),
            "source.artifacts_path: cannot read /no/such/bundle.yaml",
        ),
        // The key path says where a missing or mistyped key belongs.
        (
            "source:\n  kind: static\n".to_owned(),
            "at `source`: missing field `artifacts_path`",
        ),
        (
            "source:\n  kind: static\n  artifact_path: x\n".to_owned(),
            "at `source`: unknown field `artifact_path`",
        ),
        (
            "limits:\n  max_body_bytes: lots\nsource:\n  kind: static\n  artifacts_path: x\n"
                .to_owned(),
            "at `limits.max_body_bytes`",
        ),
        (
            format!(
                "prot: 4400\nsource:\n  kind: static\n  artifacts_path: {}\n",
                bundle.display()
            ),
            "unknown field `prot`",
        ),
        (
            format!(
                "source:\n  kind: static\n  artifacts_path: {}\nregistration_store: nowhere\n",
                bundle.display()
            ),
            "neither `memory` nor a URL",
        ),
        (
            format!(
                "port: {taken_port}\nbind: 127.0.0.1\nsource:\n  kind: static\n  artifacts_path: {}\n",
                bundle.display()
            ),
            "cannot listen on",
        ),
    ];
    for (text, expected) in cases {
        let (ok, _, stderr) = run_server(&[], Some(&text));
        assert!(!ok, "{text}");
        let lines: Vec<_> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line, got {stderr:?}");
        assert!(
            lines[0].starts_with("cfgsync-server: ") && lines[0].contains(expected),
            "{stderr:?} should name {expected:?}"
        );
    }
    let (ok, _, stderr) = run_server(&["--bogus"], None);
    assert!(!ok && stderr.contains("--bogus"), "{stderr}");
    drop(taken);
}

#[tokio::test]
async fn node_token_command_prints_tokens_the_server_accepts() {
    let config_text = format!(
        "port: 4400\nsource:\n  kind: registration\n  artifacts_path: {}\nauth:\n  node_secret: s3cret\n",
        examples().join("artifacts.yaml").display()
    );
    let (ok, stdout, stderr) = run_server(&["node-token", "node-1", "node-2"], Some(&config_text));
    assert!(ok, "{stderr}");
    let tokens: Vec<(&str, &str)> = stdout
        .lines()
        .map(|l| l.split_once('\t').unwrap())
        .collect();
    assert_eq!(
        tokens.iter().map(|t| t.0).collect::<Vec<_>>(),
        ["node-1", "node-2"]
    );
    assert!(!stdout.contains("s3cret"));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &config_text).unwrap();
    let server = serve_config(&CfgsyncServerConfig::from_path(&path).unwrap()).await;
    let url = &server.url;
    let as_1 = CfgsyncClient::builder(url)
        .bearer_token(tokens[0].1)
        .build()
        .unwrap();
    as_1.register_node(&reg("node-1")).await.unwrap();
    assert!(matches!(
        as_1.register_node(&reg("node-2")).await,
        Err(Error::Forbidden { .. })
    ));

    let (ok, _, stderr) = run_server(&["node-token", "a/b"], Some(&config_text));
    assert!(!ok && stderr.contains("path separator"), "{stderr}");
    // The one identifier rule: no token for an identifier that could not use it.
    let (ok, stdout, stderr) = run_server(&["node-token", "ñodo"], Some(&config_text));
    assert!(
        !ok && stdout.is_empty() && stderr.contains("non-ASCII"),
        "{stderr}"
    );
}

#[tokio::test]
async fn node_token_scope_prints_scoped_tokens_held_to_their_scope() {
    let artifacts = examples().join("artifacts.yaml");
    let config_text = format!(
        "port: 4400\nsource:\n  kind: registration\n  artifacts_path: {}\nauth:\n  node_secret: s3cret\n  scope_key: tenant\n  require_scoped_tokens: true\n",
        artifacts.display()
    );
    let (ok, stdout, stderr) = run_server(
        &["node-token", "--scope", "tenant-a", "node-1"],
        Some(&config_text),
    );
    assert!(ok, "{stderr}");
    let (node, token) = stdout.trim_end().split_once('\t').unwrap();
    assert_eq!(node, "node-1");
    assert!(token.starts_with("node-1~tenant-a."), "{token}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, &config_text).unwrap();
    let server = serve_config(&CfgsyncServerConfig::from_path(&path).unwrap()).await;
    let client = CfgsyncClient::builder(&server.url)
        .bearer_token(token)
        .build()
        .unwrap();
    let tenant = |t: &str| {
        reg("node-1")
            .with_metadata(&serde_json::json!({"tenant": t}))
            .unwrap()
    };
    client.register_node(&tenant("tenant-a")).await.unwrap();
    let err = client.register_node(&tenant("tenant-b")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Forbidden { message, .. } if message.contains(r#"not to tenant "tenant-b""#)),
        "{err:?}"
    );

    // A scope the server would refuse is not minted: no scope key, or a
    // scope that could not travel in a header.
    let unscoped_config =
        config_text.replace("  scope_key: tenant\n  require_scoped_tokens: true\n", "");
    let (ok, stdout, stderr) = run_server(
        &["node-token", "--scope", "tenant-a", "node-1"],
        Some(&unscoped_config),
    );
    assert!(
        !ok && stdout.is_empty() && stderr.contains("auth.scope_key"),
        "{stderr}"
    );
    let (ok, stdout, stderr) = run_server(
        &["node-token", "--scope", "a b", "node-1"],
        Some(&config_text),
    );
    assert!(
        !ok && stdout.is_empty() && stderr.contains("--scope"),
        "{stderr}"
    );
}

#[tokio::test]
async fn env_client_binary_against_the_server_binary() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &dir.path().join("registrations"));
    let mut server = spawn_server(&config);
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;

    let out = dir.path().join("out");
    let run = |identifier: &str| {
        Command::new(env!("CARGO_BIN_EXE_cfgsync-client"))
            .env_clear()
            .env("CFG_SERVER_ADDR", &url)
            .env("CFG_HOST_IP", "127.0.0.7")
            .env("CFG_HOST_IDENTIFIER", identifier)
            .env("CFG_FILE_PATH", out.join("node/config.yaml"))
            .env("CFG_DEPLOYMENT_PATH", out.join("shared/deployment.yaml"))
            .env("CFG_OUTPUT_ROOT", &out)
            .env("CFG_TIMEOUT_SECS", "20")
            .output()
            .unwrap()
    };
    let output = run("node-1");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(out.join("node/config.yaml")).unwrap(),
        "id: node-1\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("shared/deployment.yaml")).unwrap(),
        "peers: [node-1, node-2]\n"
    );
    // A node the server has no config for fails fast, in one line.
    let output = run("node-9");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("missing_config"),
        "{stderr}"
    );
    server.kill().unwrap();
    server.wait().unwrap();
}

/// What the server logs at the default level from start to the first answer,
/// with stderr redirected (not a terminal).
async fn startup_log(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), port, &dir.path().join("registrations"));
    let mut server = Command::new(SERVER)
        .arg("--config")
        .arg(&config)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("CFGSYNC_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_healthy(&format!("http://127.0.0.1:{port}")).await;
    server.kill().unwrap();
    let output = server.wait_with_output().unwrap();
    String::from_utf8(output.stderr).unwrap()
}

#[tokio::test]
async fn redirected_logs_carry_no_colour_and_json_logs_are_one_object_per_line() {
    let text = startup_log(&[]).await;
    assert!(
        text.contains(" INFO "),
        "info is the default level: {text:?}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "ANSI codes in redirected logs: {text:?}"
    );

    let json = startup_log(&["--log-format", "json"]).await;
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert!(!lines.is_empty(), "{json:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["fields"]["message"].is_string()),
        "{json}"
    );
}
