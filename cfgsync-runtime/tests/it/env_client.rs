//! The env client: `ClientEnv::from_vars` with the original's variables, and the
//! built `cfgsync-client` binary run against an in-process server.
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{QuorumSource, TestServer, entries, files};
use cfgsync_core::{AuthConfig, CfgsyncServerState};
use cfgsync_runtime::{ClientEnv, Error};

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn from_vars_applies_the_original_defaults_and_names_each_bad_value() {
    let env = ClientEnv::from_vars(vars(&[("CFG_HOST_IDENTIFIER", "node-1")])).unwrap();
    assert_eq!(env.server_addr, "http://127.0.0.1:4400");
    assert_eq!(
        env.host_ip,
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap()
    );
    assert_eq!(env.host_identifier, "node-1");
    assert_eq!(env.output_root, PathBuf::from("/"));
    assert_eq!(env.timeout, Duration::from_secs(300));
    assert_eq!((env.metadata.clone(), env.token.clone()), (None, None));
    assert_eq!(env.outputs().routes().count(), 0);
    assert!(env.registration().metadata.is_empty());

    // Without CFG_HOST_IDENTIFIER: the machine's hostname, else HOSTNAME.
    let env = ClientEnv::from_vars(vars(&[("HOSTNAME", "from-hostname-var")])).unwrap();
    let expected = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "from-hostname-var".to_owned());
    assert_eq!(env.host_identifier, expected);

    // CFG_FILE_PATH and CFG_DEPLOYMENT_PATH route both spellings of each file.
    let env = ClientEnv::from_vars(vars(&[
        ("CFG_HOST_IDENTIFIER", "node-1"),
        ("CFG_FILE_PATH", "/node-data/config.yaml"),
        ("CFG_DEPLOYMENT_PATH", "/node-data/deployment.yaml"),
        ("CFG_OUTPUT_ROOT", "/srv/out"),
        (
            "CFG_REGISTRATION_METADATA_JSON",
            r#"{"network_port": 3000}"#,
        ),
        ("CFG_TOKEN", "s3cret-token"),
        ("CFG_TIMEOUT_SECS", "45"),
        ("CFG_HOST_IP", "10.1.2.3"),
        ("CFG_SERVER_ADDR", "https://cfgsync.internal:4400/"),
    ]))
    .unwrap();
    let outputs = env.outputs();
    let routes: Vec<(&str, &std::path::Path)> = outputs.routes().collect();
    assert_eq!(
        routes,
        [
            ("/config.yaml", "/node-data/config.yaml".as_ref()),
            ("/deployment.yaml", "/node-data/deployment.yaml".as_ref()),
            ("config.yaml", "/node-data/config.yaml".as_ref()),
            (
                "deployment-settings.yaml",
                "/node-data/deployment.yaml".as_ref()
            ),
        ]
    );
    assert_eq!(outputs.root(), std::path::Path::new("/srv/out"));
    assert_eq!(env.server_addr, "https://cfgsync.internal:4400");
    assert_eq!(env.timeout, Duration::from_secs(45));
    assert_eq!(
        env.registration().metadata.as_value(),
        &serde_json::json!({"network_port": 3000})
    );
    assert_eq!(env.client_options().token.unwrap().expose(), "s3cret-token");
    assert!(!format!("{env:?}").contains("s3cret"));

    let bad = [
        (
            "CFG_SERVER_ADDR",
            "cfgsync:4400",
            "give the scheme, e.g. http://cfgsync:4400",
        ),
        ("CFG_SERVER_ADDR", "not a url", "not a URL"),
        ("CFG_HOST_IP", "10.0.0.300", "not an IP address"),
        ("CFG_HOST_IDENTIFIER", "../etc", "identifier"),
        (
            "CFG_REGISTRATION_METADATA_JSON",
            "{not json",
            "not valid JSON",
        ),
        (
            "CFG_SERVER_ADDR",
            "ftp://cfgsync",
            "use http:// or https://",
        ),
        ("CFG_TIMEOUT_SECS", "0", "from 1 s to"),
        ("CFG_TIMEOUT_SECS", "soon", "e.g. 300, 30s, 5m"),
    ];
    for (var, value, reason) in bad {
        let error = ClientEnv::from_vars(vars(&[("CFG_HOST_IDENTIFIER", "node-1"), (var, value)]))
            .unwrap_err();
        match &error {
            Error::InvalidVar {
                var: named,
                value: shown,
                reason: why,
            } => {
                assert_eq!((*named, shown.as_str()), (var, value));
                assert!(why.contains(reason), "{var}={value}: {why}");
            }
            other => panic!("{var}={value}: expected InvalidVar, got {other:?}"),
        }
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("invalid {var}={value:?}: ")),
            "{message}"
        );
        assert!(!message.contains('\n'));
    }
    // A bad token is named but never shown.
    let error = ClientEnv::from_vars(vars(&[
        ("CFG_HOST_IDENTIFIER", "node-1"),
        ("CFG_TOKEN", "secret with\nnewline"),
    ]))
    .unwrap_err();
    assert!(
        error.to_string().starts_with("invalid CFG_TOKEN=\"***\": "),
        "{error}"
    );
    assert!(!error.to_string().contains("secret"));
}

/// A server with auth on that serves the config, a deployment file and a file
/// placed under the output root.
async fn start_server() -> (TestServer, Arc<QuorumSource>) {
    let source = Arc::new(QuorumSource::new(1).with_files(files(&[
        ("deployment-settings.yaml", "nodes: 1\n"),
        ("/etc/app/extra.conf", "extra\n"),
    ])));
    let server = TestServer::start(
        CfgsyncServerState::builder(source.clone())
            .with_auth(AuthConfig::default().with_shared_token("s3cret-token"))
            .build(),
    )
    .await;
    (server, source)
}

#[tokio::test]
async fn the_env_client_registers_fetches_and_writes_every_file_where_the_variables_say() {
    let (server, source) = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, deployment, root) = (
        dir.path().join("node-data/config.yaml"),
        dir.path().join("node-data/deployment.yaml"),
        dir.path().join("root"),
    );
    let env = ClientEnv::from_vars(vars(&[
        ("CFG_SERVER_ADDR", &server.url),
        ("CFG_HOST_IP", "10.0.0.7"),
        ("CFG_HOST_IDENTIFIER", "node-7"),
        ("CFG_REGISTRATION_METADATA_JSON", r#"{"api_port": 18080}"#),
        ("CFG_FILE_PATH", config.to_str().unwrap()),
        ("CFG_DEPLOYMENT_PATH", deployment.to_str().unwrap()),
        ("CFG_OUTPUT_ROOT", root.to_str().unwrap()),
        ("CFG_TOKEN", "s3cret-token"),
        ("CFG_TIMEOUT_SECS", "30"),
    ]))
    .unwrap();

    let written = env.run().await.unwrap();

    let mut paths: Vec<PathBuf> = written.into_iter().map(|w| w.path).collect();
    paths.sort();
    let mut expected = vec![
        config.clone(),
        deployment.clone(),
        root.join("etc/app/extra.conf"),
        root.join("peers.txt"),
    ];
    expected.sort();
    assert_eq!(paths, expected);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "id: node-7\n");
    assert_eq!(std::fs::read_to_string(&deployment).unwrap(), "nodes: 1\n");
    assert_eq!(entries(&root), ["etc", "peers.txt"]);
    let registration = source.registration("node-7").unwrap();
    assert_eq!(registration.ip.to_string(), "10.0.0.7");
    assert_eq!(
        registration.metadata.as_value(),
        &serde_json::json!({"api_port": 18080})
    );
    server.shutdown().await.unwrap();
}

fn client() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cfgsync-client"));
    command.env_clear();
    command
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_writes_the_payload_and_flags_win_over_variables() {
    let (server, _source) = start_server().await;
    let dir = tempfile::tempdir().unwrap();
    let (flag_config, env_config, root) = (
        dir.path().join("from-flag/config.yaml"),
        dir.path().join("from-env/config.yaml"),
        dir.path().join("root"),
    );

    let mut command = client();
    command
        .env("CFG_SERVER_ADDR", &server.url)
        .env("CFG_HOST_IDENTIFIER", "node-env")
        .env("CFG_FILE_PATH", &env_config)
        .env("CFG_OUTPUT_ROOT", &root)
        .env("CFG_TOKEN", "s3cret-token")
        .args(["--identifier", "node-flag", "--ip", "10.0.0.9"])
        .arg("--file-path")
        .arg(&flag_config)
        .arg("--deployment-path")
        .arg(root.join("deploy.yaml"));
    let out = output(command).await;

    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        std::fs::read_to_string(&flag_config).unwrap(),
        "id: node-flag\n"
    );
    assert!(!env_config.exists());
    assert_eq!(
        std::fs::read_to_string(root.join("deploy.yaml")).unwrap(),
        "nodes: 1\n"
    );
    assert!(root.join("etc/app/extra.conf").exists());
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(
        stdout.contains(&format!("wrote {}", flag_config.display())),
        "{stdout}"
    );
    assert!(stderr_lines(&out).is_empty(), "{:?}", stderr_lines(&out));

    // A failing step: one line naming it, exit 1. (No token: 401 at register.)
    let mut command = client();
    command
        .env("CFG_SERVER_ADDR", &server.url)
        .env("CFG_OUTPUT_ROOT", &root)
        .args(["--identifier", "node-2", "--timeout-secs", "5"]);
    let out = output(command).await;
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("cfgsync-client: register: /register: unauthorized (401)"),
        "{lines:?}"
    );
    server.shutdown().await.unwrap();
}

#[test]
fn the_binary_rejects_a_bad_variable_in_one_line_naming_it() {
    let out = client()
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .env("CFG_HOST_IP", "not-an-ip")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        ["cfgsync-client: invalid CFG_HOST_IP=\"not-an-ip\": not an IP address (see --help)"]
    );
    assert!(out.stdout.is_empty());

    // The token is named, never shown.
    let out = client()
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .env("CFG_TOKEN", "top secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let lines = stderr_lines(&out);
    assert_eq!(lines.len(), 1);
    assert!(
        lines[0].starts_with("cfgsync-client: invalid CFG_TOKEN=\"***\""),
        "{lines:?}"
    );
    assert!(!lines[0].contains("secret"));
}

#[test]
fn a_bad_value_is_named_as_the_user_gave_it_flag_or_variable() {
    // The flag's value is not fed back through the variable's name.
    let out = client()
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .args(["--server", "localhost:4400"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        [
            "cfgsync-client: invalid --server=\"localhost:4400\": not a URL: give the scheme, \
             e.g. http://localhost:4400 (see --help)"
        ]
    );
    let out = client()
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .env("CFG_SERVER_ADDR", "localhost:4400")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr_lines(&out)[0]
            .starts_with("cfgsync-client: invalid CFG_SERVER_ADDR=\"localhost:4400\""),
        "{:?}",
        stderr_lines(&out)
    );
    // Sizes and durations take units; a bad one says what would do.
    let env = ClientEnv::from_vars(vars(&[
        ("CFG_HOST_IDENTIFIER", "node-1"),
        ("CFG_MAX_PAYLOAD_BYTES", "4GiB"),
        ("CFG_TIMEOUT_SECS", "5m"),
    ]))
    .unwrap();
    assert_eq!(env.max_payload_bytes, 4 << 30);
    assert_eq!(env.timeout, Duration::from_secs(300));
    let out = client()
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .args(["--max-payload-bytes", "4 parsecs"])
        .output()
        .unwrap();
    assert_eq!(
        stderr_lines(&out),
        [
            "cfgsync-client: invalid --max-payload-bytes=\"4 parsecs\": unknown size unit \
             \"parsecs\": use B, KiB, MiB, GiB or TiB (e.g. 4GiB) (see --help)"
        ]
    );
}

#[test]
fn a_mistyped_variable_is_warned_about_with_the_closest_known_name() {
    let out = client()
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .env("CFG_TIMEOUT_SEC", "30")
        .env("CFG_SERVER_ADDR", "not-a-url")
        .output()
        .unwrap();
    let lines = stderr_lines(&out);
    assert_eq!(
        lines[0],
        "warning: unknown variable CFG_TIMEOUT_SEC; did you mean CFG_TIMEOUT_SECS?"
    );
    assert_eq!(lines.len(), 2, "{lines:?}");
}

#[test]
fn the_binary_rejects_a_bad_flag_in_one_line() {
    let out = client().arg("--no-such-flag").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&out),
        ["cfgsync-client: unexpected argument '--no-such-flag' found (see --help)"]
    );
}

#[test]
fn the_binary_help_lists_every_flag_with_its_variable() {
    let out = client()
        .env("CFG_TOKEN", "hidden-token-value")
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for (flag, var) in [
        ("--server", "CFG_SERVER_ADDR"),
        ("--ip", "CFG_HOST_IP"),
        ("--identifier", "CFG_HOST_IDENTIFIER"),
        ("--metadata-json", "CFG_REGISTRATION_METADATA_JSON"),
        ("--file-path", "CFG_FILE_PATH"),
        ("--deployment-path", "CFG_DEPLOYMENT_PATH"),
        ("--output-root", "CFG_OUTPUT_ROOT"),
        ("--token", "CFG_TOKEN"),
        ("--timeout-secs", "CFG_TIMEOUT_SECS"),
        ("--max-payload-bytes", "CFG_MAX_PAYLOAD_BYTES"),
        ("--allow-group-world-write", "CFG_ALLOW_GROUP_WORLD_WRITE"),
        ("--progress-interval", "CFG_PROGRESS_INTERVAL"),
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
        assert!(
            help.contains(&format!("[env: {var}")),
            "{var} missing from --help"
        );
    }
    assert!(!help.contains("hidden-token-value"));
}
