//! Live reload of the served file: edits wake exactly the nodes they change,
//! broken edits keep the last good set serving and are reported, SIGHUP reloads
//! the real binary.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::wait_healthy;
use cfgsync_core::{CfgsyncClient, FetchOptions, FetchOutcome, NodeRegistration};
use cfgsync_runtime::{CfgsyncServerConfig, build_server_state};
use cfgsync_test_support::free_port;
use cfgsync_test_support::{TestServer, long_poll, woken};
use serde_json::Value;

fn reg(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.0.0.5".parse().unwrap())
}

/// Replaces `path` as most editors save: a new file renamed over the old one.
fn save(path: &Path, text: &str) {
    let temp = path.with_extension("swp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

fn bundle(node_1: &str, node_2: &str) -> String {
    format!(
        "nodes:\n  - identifier: node-1\n    files: [{{path: /config.yaml, content: \"{node_1}\"}}]\n  - identifier: node-2\n    files: [{{path: /config.yaml, content: \"{node_2}\"}}]\nshared_files:\n  - {{path: /peers.txt, content: \"node-1 node-2\"}}\n"
    )
}

fn artifacts(node_1: &str) -> String {
    format!(
        "nodes:\n  node-1:\n    files: [{{path: /config.yaml, content: \"{node_1}\"}}]\nshared:\n  files: [{{path: /peers.txt, content: \"node-1\"}}]\n"
    )
}

/// A config serving `file` as `kind`, with `extra` keys, in `dir`.
fn config(dir: &Path, kind: &str, file: &Path, extra: &str) -> PathBuf {
    let path = dir.join("server.yaml");
    std::fs::write(
        &path,
        format!(
            "bind: 127.0.0.1\nsource:\n  kind: {kind}\n  artifacts_path: {}\n{extra}",
            file.display()
        ),
    )
    .unwrap();
    path
}

async fn fetch(client: &CfgsyncClient, id: &str, etag: Option<&str>) -> FetchOutcome {
    let options = FetchOptions {
        if_none_match: etag.map(str::to_owned),
        wait: None,
    };
    client
        .fetch_node_config_with(&reg(id), &options)
        .await
        .unwrap()
}

fn updated(outcome: FetchOutcome) -> (String, String) {
    match outcome {
        FetchOutcome::Updated {
            payload,
            etag: Some(etag),
        } => (
            payload.files.get("/config.yaml").unwrap().content.clone(),
            etag,
        ),
        other => panic!("a payload expected, got {other:?}"),
    }
}

async fn status(url: &str) -> Value {
    cfgsync_test_support::get(format!("{url}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits (at most 10 s) until the status JSON satisfies `done`, and returns it.
async fn until_status(url: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let now = status(url).await;
        if done(&now) {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("status never got there: {:#}", status(url).await);
}

fn reload_outcome(status: &Value) -> &str {
    status["source"]["reload"]["last_outcome"]
        .as_str()
        .unwrap_or("")
}

async fn metric(server: &TestServer, name: &str) -> f64 {
    server
        .metric(&format!("{name} "))
        .await
        .first()
        .map_or(f64::NAN, |(_, v)| *v)
}

#[tokio::test]
async fn an_edit_wakes_the_long_polling_node_whose_files_changed_and_holds_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.yaml");
    save(&file, &bundle("one v1", "two v1"));
    let config = CfgsyncServerConfig::from_path(config(dir.path(), "static", &file, "")).unwrap();
    let server = TestServer::start(build_server_state(&config).await.unwrap()).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let (_, etag_1) = updated(fetch(&client, "node-1", None).await);
    let (_, etag_2) = updated(fetch(&client, "node-2", None).await);

    // Both nodes hold their current ETag and wait for a change.
    let waiting_1 = long_poll(&client, &reg("node-1"), Some(etag_1.clone()));
    let waiting_2 = long_poll(&client, &reg("node-2"), Some(etag_2.clone()));
    server.until_long_polls_waiting(2).await;

    save(&file, &bundle("one v2", "two v1"));
    // A bound for correctness (the file is polled every 500 ms), not a speed test.
    let (payload, new_etag) = tokio::time::timeout(Duration::from_secs(2), woken(waiting_1))
        .await
        .expect("node-1 gets its new file within 2 s");
    assert_eq!(payload.files.get("/config.yaml").unwrap().content, "one v2");
    assert_ne!(new_etag, etag_1);

    // node-2's files did not change: its ETag stands and it is still held.
    server.until_long_polls_waiting(1).await;
    assert!(!waiting_2.is_finished(), "node-2 was answered");
    assert!(matches!(
        fetch(&client, "node-2", Some(&etag_2)).await,
        FetchOutcome::NotModified
    ));
    let now = status(&server.url).await;
    assert_eq!(now["source"]["generation"], 2);
    assert_eq!(reload_outcome(&now), "applied");
    assert_eq!(metric(&server, "cfgsync_source_generation").await, 2.0);
    waiting_2.abort();
}

#[tokio::test]
async fn a_broken_edit_keeps_the_last_good_set_serving_and_is_reported_until_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifacts.yaml");
    save(&file, &artifacts("one v1"));
    let config =
        CfgsyncServerConfig::from_path(config(dir.path(), "registration", &file, "")).unwrap();
    let server = TestServer::start(build_server_state(&config).await.unwrap()).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    client.register_node(&reg("node-1")).await.unwrap();
    let (content, etag) = updated(fetch(&client, "node-1", None).await);
    assert_eq!(content, "one v1");

    let broken = [
        ("bad YAML", Some("nodes: [unclosed\n".to_owned()), "cfgsync artifacts file"),
        (
            "a duplicate path",
            Some(
                "nodes:\n  node-1:\n    files:\n      - {path: /a, content: x}\n      - {path: /a, content: y}\n"
                    .to_owned(),
            ),
            "duplicate artifact path",
        ),
        ("a missing file", None, "cannot read"),
    ];
    for (failures, (what, text, expected)) in broken.into_iter().enumerate() {
        match text {
            Some(text) => save(&file, &text),
            None => std::fs::remove_file(&file).unwrap(),
        }
        let now = until_status(&server.url, |s| {
            s["source"]["reload"]["failures"] == failures + 1
        })
        .await;
        assert_eq!(reload_outcome(&now), "failed", "{what}");
        let error = now["source"]["reload"]["last_error"].as_str().unwrap();
        assert!(error.contains(expected), "{what}: {error}");
        assert_eq!(now["source"]["generation"], 1, "{what}");
        // Still served the last good set, with the same ETag.
        assert!(
            matches!(
                fetch(&client, "node-1", Some(&etag)).await,
                FetchOutcome::NotModified
            ),
            "{what}"
        );
        assert_eq!(
            metric(&server, "cfgsync_reload_failures_total").await,
            (failures + 1) as f64
        );
        assert_eq!(metric(&server, "cfgsync_reload_failing").await, 1.0);
        let page = cfgsync_test_support::get(&server.url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("Reload failed"), "{what}: {page}");
    }

    // A good edit is served and clears the error.
    save(&file, &artifacts("one v2"));
    let now = until_status(&server.url, |s| reload_outcome(s) == "applied").await;
    assert_eq!(now["source"]["reload"]["last_error"], Value::Null);
    assert_eq!(now["source"]["generation"], 2);
    assert_eq!(updated(fetch(&client, "node-1", None).await).0, "one v2");
    assert_eq!(metric(&server, "cfgsync_reload_failing").await, 0.0);
    assert!(metric(&server, "cfgsync_reload_success_total").await >= 1.0);
    let page = cfgsync_test_support::get(&server.url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("Reload failed"), "{page}");
}

fn hangup(pid: u32) {
    let status = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[cfg(unix)]
#[tokio::test]
async fn sighup_reloads_the_binary_which_stays_up_even_on_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bundle.yaml");
    save(&file, &bundle("one v1", "two v1"));
    let port = free_port();
    // Not watched: only SIGHUP can reload.
    let config = config(
        dir.path(),
        "static",
        &file,
        &format!("port: {port}\nreload:\n  watch: false\n"),
    );
    let mut server = Command::new(env!("CARGO_BIN_EXE_cfgsync-server"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    wait_healthy(&url).await;
    let client = CfgsyncClient::new(&url).unwrap();
    assert_eq!(updated(fetch(&client, "node-1", None).await).0, "one v1");
    let before = status(&url).await;
    assert!(
        before["source"]["reload"]["triggers"]
            .as_str()
            .unwrap()
            .contains("SIGHUP"),
        "{before:#}"
    );

    save(&file, &bundle("one v2", "two v1"));
    hangup(server.id());
    let now = until_status(&url, |s| reload_outcome(s) == "applied").await;
    assert_eq!(now["source"]["generation"], 2);
    assert_eq!(updated(fetch(&client, "node-1", None).await).0, "one v2");

    save(&file, "nodes: [broken\n");
    hangup(server.id());
    let now = until_status(&url, |s| reload_outcome(s) == "failed").await;
    assert_eq!(now["source"]["generation"], 2);
    assert_eq!(updated(fetch(&client, "node-1", None).await).0, "one v2");
    assert!(server.try_wait().unwrap().is_none(), "the server exited");
    assert_eq!(
        cfgsync_test_support::get(format!("{url}/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    server.kill().unwrap();
    server.wait().unwrap();
}
