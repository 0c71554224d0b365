//! `cfgsync-server` with its registrations in an object store and the
//! `registration_log` settings: compaction set low in the config file and a
//! fixed writer id from the environment. The server writes a snapshot and
//! deletes the entries it covers; restarted, it serves every registration and
//! continues its stream after the snapshot. The same keys with a file store
//! stop the server, naming the key.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::common::wait_healthy_or_exit;
use cfgsync_core::{CfgsyncClient, Error, NodeRegistration};
use cfgsync_test_support::S3Harness;
use cfgsync_test_support::free_port;
use object_store::ObjectStore;
use object_store::path::Path as StorePath;

const SERVER: &str = env!("CARGO_BIN_EXE_cfgsync-server");

fn artifacts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/artifacts.yaml")
}

fn reg(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "127.0.0.1".parse().unwrap())
}

/// The server with the harness's credentials and `writer_id` in the
/// environment; stderr into `log`.
fn spawn_server(config: &Path, s3: &S3Harness, writer_id: &str, log: &Path) -> Child {
    Command::new(SERVER)
        .arg("--config")
        .arg(config)
        .env_clear()
        .env("AWS_ENDPOINT", &s3.endpoint)
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_REGION", &s3.region)
        .env("CFGSYNC_REGISTRATION_LOG_WRITER_ID", writer_id)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap()
}

/// The object names (last path part) directly under `prefix`.
async fn names(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let listed = store
        .list_with_delimiter(Some(&StorePath::from(prefix)))
        .await
        .unwrap();
    let mut names: Vec<String> = listed
        .objects
        .iter()
        .filter_map(|o| o.location.filename().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_low_compaction_threshold_snapshots_and_a_restarted_server_serves_every_registration() {
    let s3 = S3Harness::start().await.unwrap();
    let prefix = format!("{}compaction", s3.prefix);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {port}\nbind: 127.0.0.1\nsource:\n  kind: registration\n  artifacts_path: {}\n\
             registration_store: s3://{}/{prefix}\nregistration_log:\n  compact_after_entries: 4\n",
            artifacts().display(),
            s3.bucket
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let mut server = spawn_server(&config, &s3, "replica-a", &log);
    wait_healthy_or_exit(&mut server, &url, &log).await;
    let started = std::fs::read_to_string(&log).unwrap();
    assert!(
        started.contains("writer id replica-a; compacted after 4 entries or 8MiB"),
        "{started}"
    );

    // 12 nodes, one after another: 12 entries in replica-a's stream.
    let client = CfgsyncClient::new(&url).unwrap();
    let ids: Vec<String> = (1..=12).map(|i| format!("node-{i}")).collect();
    for id in &ids {
        client.register_node(&reg(id)).await.unwrap();
    }

    // The poller compacts past 4 entries until fewer than 4 follow the
    // newest snapshot; the entries a snapshot covers are deleted.
    let stream = format!("{prefix}/v2/writers/replica-a");
    let snapshots = format!("{prefix}/v2/snapshots");
    let mut settled = None;
    for _ in 0..200 {
        let (snaps, entries) = (
            names(&s3.store, &snapshots).await,
            names(&s3.store, &stream).await,
        );
        if !snaps.is_empty() && entries.len() < 4 {
            settled = Some((snaps, entries));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some((snaps, entries)) = settled else {
        panic!(
            "no compaction: snapshots {:?}, entries {:?}\n{}",
            names(&s3.store, &snapshots).await,
            names(&s3.store, &stream).await,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    };
    assert!(snaps.len() <= 2, "only the newest two are kept: {snaps:?}");
    server.kill().unwrap();
    server.wait().unwrap();

    // Restarted with the same writer id: every registration is there (from
    // the snapshot and the entries after it) ...
    let mut server = spawn_server(&config, &s3, "replica-a", &log);
    wait_healthy_or_exit(&mut server, &url, &log).await;
    for id in &ids {
        // node-1 and node-2 have files; the others are registered but the
        // artifacts file names none for them (404, never 425).
        match client.fetch_node_config(&reg(id)).await {
            Ok(_) => assert!(id == "node-1" || id == "node-2", "{id}"),
            Err(Error::MissingConfig { .. }) => {}
            Err(other) => panic!("{id} lost its registration after the restart: {other}"),
        }
    }
    // ... and its stream continues after the last number it wrote (13), not
    // at a number a snapshot already covers.
    client.register_node(&reg("node-13")).await.unwrap();
    let after = names(&s3.store, &stream).await;
    assert_eq!(
        after.last().map(String::as_str),
        Some("00000000000000000013.json"),
        "before the restart {entries:?}, after {after:?}"
    );
    assert_eq!(after.len(), entries.len() + 1, "{entries:?} -> {after:?}");
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn registration_log_keys_with_a_file_store_stop_the_server_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {}\nbind: 127.0.0.1\nsource:\n  kind: registration\n  artifacts_path: {}\n\
             registration_store: file://{}\nregistration_log:\n  compact_after_bytes: 1MiB\n",
            free_port(),
            artifacts().display(),
            dir.path().join("registrations").display()
        ),
    )
    .unwrap();
    for subcommand in ["serve", "check"] {
        let out = Command::new(SERVER)
            .arg("--config")
            .arg(&config)
            .arg(subcommand)
            .env_clear()
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{subcommand}: {stderr}");
        assert!(
            stderr.contains(
                "registration_log.compact_after_bytes (CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_BYTES) is set, but registration_store is file://"
            ),
            "{subcommand}: {stderr}"
        );
        assert!(
            !dir.path().join("registrations").exists(),
            "{subcommand} created the store"
        );
    }
}

/// A flag wins over its variable, and a variable its flag overrides is not
/// read: a bad `CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES` fails alone,
/// naming the variable, and is ignored beside a good flag.
#[test]
fn a_flag_overrides_a_bad_variable_which_alone_fails_naming_itself() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {}\nbind: 127.0.0.1\nsource:\n  kind: registration\n  artifacts_path: {}\n\
             registration_store: memory:///\n",
            free_port(),
            artifacts().display(),
        ),
    )
    .unwrap();
    let check = |flag: Option<&str>| {
        let mut command = Command::new(SERVER);
        command
            .arg("check")
            .arg("--config")
            .arg(&config)
            .env_clear()
            .env("CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES", "0");
        if let Some(flag) = flag {
            command.args(["--registration-log-compact-after-entries", flag]);
        }
        command.output().unwrap()
    };

    let alone = check(None);
    let stderr = String::from_utf8_lossy(&alone.stderr);
    assert!(!alone.status.success(), "{stderr}");
    assert!(
        stderr.contains("CFGSYNC_REGISTRATION_LOG_COMPACT_AFTER_ENTRIES") && stderr.contains("off"),
        "{stderr}"
    );

    let overridden = check(Some("4"));
    let stdout = String::from_utf8_lossy(&overridden.stdout);
    assert!(
        overridden.status.success(),
        "{}",
        String::from_utf8_lossy(&overridden.stderr)
    );
    assert!(stdout.contains("compacted after 4 entries"), "{stdout}");
}
