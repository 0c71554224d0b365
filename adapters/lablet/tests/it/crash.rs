//! `kill -9` of the `lablet-sync` binary mid-download and mid-upload: the previous
//! object and record stay intact and consistent, the retry queue keeps what an
//! earlier sync queued, and a re-run of the same sync succeeds and drains it.
//! Killed after the store, during the fan-out: the drain brings the catalog to
//! the stored bytes.
use crate::common;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::consistency::{assert_records_match_bytes, stored_bytes};
use crate::common::env::{Env, s3_config};
use crate::common::*;
use cfgsync_lablet::catalog::SyncStatus;
use cfgsync_lablet::{LabletSync, LabletSyncConfig};
use cfgsync_test_support::S3Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "LAB-1.1.1";
const OTHER: &str = "LAB-OTHER";

/// The `LABLET_*` / `AWS_*` variables the binary runs with (SE at `se`).
fn vars(env: &Env, se: &MockServer, s3: &S3Harness, data: &Path) -> BTreeMap<String, String> {
    let mut vars = common::env::bin_vars(env, Some(s3), data);
    vars.insert("LABLET_SE_URL".to_owned(), se.uri());
    // a killed holder's lease blocks its lablet for about this long
    vars.insert("LABLET_LEASE_TTL_SECS".to_owned(), "1".to_owned());
    vars
}

/// The pipeline the binary builds from `vars`, in this process.
fn in_process(vars: &BTreeMap<String, String>, s3: &S3Harness) -> LabletSync {
    let config = LabletSyncConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
    LabletSync::from_config(s3_config(config, s3)).unwrap()
}

fn spawn_sync(vars: &BTreeMap<String, String>) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lablet-sync"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .args(["sync", NAME])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait (bounded) until `ready` holds, then `kill -9` the child.
async fn kill_when(mut child: Child, what: &str, ready: impl Fn() -> bool) {
    let mut seen = false;
    for _ in 0..1200 {
        if ready() {
            seen = true;
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("lablet-sync ended ({status}) before {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen, "never saw {what}");
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
}

fn partial_download_bytes(data: &Path) -> u64 {
    std::fs::read_dir(data.join("tmp"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Serves `body` on any request with its `Content-Length`, 64 KiB every 20 ms.
fn slow_server(body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 8192];
                let _ = sock.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if sock.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for chunk in body.chunks(64 * 1024) {
                    if sock.write_all(chunk).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn kill_9_mid_download_and_mid_upload_loses_nothing() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("!!! the crash test needs the in-process S3 server: skipped !!!");
        return;
    }
    let se = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&se)
        .await;
    let data = env.data.path().join("crash");
    let vars = vars(&env, &se, &s3, &data);
    let v1 = sample_package("1.0", "");
    // two 8 MiB parts: the kill mid-upload comes after the first landed
    let v2 = big_package(10, 3);

    // before: NAME synced at v1; OTHER synced while SE was down, so queued
    env.publish(NAME, v1.clone()).await;
    Mock::given(method("GET"))
        .and(path(format!("/resolve/{OTHER}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "MOSAIC_BASE_URL": format!("{}/content/{NAME}", env.mosaic.uri()),
        })))
        .mount(&env.resolver)
        .await;
    let sync = in_process(&vars, &s3);
    let before = sync.sync(NAME).await.unwrap().definition;
    se.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&se)
        .await;
    let other = sync.sync(OTHER).await.unwrap().definition;
    assert_eq!(other.content.status, SyncStatus::Stale);
    let queued = sync.pending_deliveries().await.unwrap();
    assert_eq!(queued.len(), 1);
    drop(sync);
    let check = |label: &'static str| {
        let vars = vars.clone();
        let before = before.clone();
        let queued = queued.clone();
        let v1 = v1.clone();
        let s3 = &s3;
        async move {
            let sync = in_process(&vars, s3);
            assert_eq!(
                sync.catalog().get(NAME).await.unwrap().as_ref(),
                Some(&before),
                "{label}: record changed"
            );
            assert_eq!(
                stored_bytes(&before.content.store, Some(s3)).await,
                Some(v1),
                "{label}: the stored package changed"
            );
            assert_eq!(
                assert_records_match_bytes(&*sync.catalog(), Some(s3)).await,
                2,
                "{label}"
            );
            assert_eq!(
                sync.pending_deliveries().await.unwrap(),
                queued,
                "{label}: retry queue changed"
            );
        }
    };

    // 1. killed while downloading
    let (slow_url, slow) = slow_server(v2.clone());
    env.resolver.reset().await;
    Mock::given(method("GET"))
        .and(path(format!("/resolve/{NAME}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "MOSAIC_BASE_URL": format!("{slow_url}/content/{NAME}"),
        })))
        .mount(&env.resolver)
        .await;
    s3.reset_counters();
    let child = spawn_sync(&vars);
    kill_when(child, "download bytes", || {
        partial_download_bytes(&data) > 0
    })
    .await;
    slow.abort();
    assert_eq!(
        s3.put_body_bytes(),
        Some(0),
        "upload started before the kill"
    );
    check("killed mid-download").await;

    // 2. killed while uploading (S3 answers slowly; the first part has arrived)
    env.resolver.reset().await;
    env.publish(NAME, v2.clone()).await;
    s3.reset_counters();
    s3.faults().delay(Duration::from_secs(1));
    let child = spawn_sync(&vars);
    kill_when(child, "an upload part", || {
        s3.upload_parts().unwrap_or(0) >= 1
    })
    .await;
    s3.faults().clear();
    assert_eq!(s3.completed_uploads(), Some(0));
    assert_eq!(s3.open_uploads(), Some(1), "the killed upload stays open");
    check("killed mid-upload").await;

    // 2b. killed after the store, while SE holds the fan-out: the store has v2,
    // the catalog still v1 — the record this run wrote down before the store
    // lets a drain close that gap (as stale: the fan-out never finished)
    #[derive(Clone)]
    struct SlowCounting(Arc<AtomicUsize>);
    impl wiremock::Respond for SlowCounting {
        fn respond(&self, _: &wiremock::Request) -> ResponseTemplate {
            self.0.fetch_add(1, Ordering::SeqCst);
            ResponseTemplate::new(200).set_delay(Duration::from_secs(30))
        }
    }
    let se_calls = Arc::new(AtomicUsize::new(0));
    se.reset().await;
    Mock::given(method("POST"))
        .respond_with(SlowCounting(se_calls.clone()))
        .mount(&se)
        .await;
    let child = spawn_sync(&vars);
    kill_when(child, "the fan-out to SE", || {
        se_calls.load(Ordering::SeqCst) > 0
    })
    .await;
    assert_eq!(
        s3.open_uploads(),
        Some(0),
        "this run aborted the upload step 2 left open and completed its own"
    );
    assert_eq!(
        stored_bytes(&before.content.store, Some(&s3)).await,
        Some(v2.clone()),
        "v2 stored before the kill"
    );
    let sync = in_process(&vars, &s3);
    assert_eq!(
        sync.catalog().get(NAME).await.unwrap().as_ref(),
        Some(&before)
    );
    se.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&se)
        .await;
    // a drain skips the lablet while the killed run's lease is live; it
    // takes the lease over once its expiry is a TTL in the past
    let mut r = sync.retry_pending().await.unwrap();
    for _ in 0..100 {
        if r.skipped_locked == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        r = sync.retry_pending().await.unwrap();
    }
    assert_eq!((r.recorded, r.records_pending), (1, 0), "{r:?}");
    let caught_up = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(caught_up.content.content_package_hash, sha256(&v2));
    assert_eq!(caught_up.content.status, SyncStatus::Stale);
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        2
    );
    assert_eq!(sync.pending_deliveries().await.unwrap().len(), 1);
    drop(sync);

    // 3. SE is back; the same sync re-run succeeds and drains the queue
    se.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&se)
        .await;
    // waited for off the runtime: the S3 server and the mocks run on it
    let child = spawn_sync(&vars);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s3.open_uploads(), Some(0), "an upload left open");
    let sync = in_process(&vars, &s3);
    let after = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(after.content.content_package_hash, sha256(&v2));
    assert_eq!(after.content.content_version, 2);
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        2
    );
    assert!(sync.pending_deliveries().await.unwrap().is_empty());
    let to_se = Env::bodies(&se).await;
    let others = to_se.iter().filter(|b| b["lablet"] == OTHER).count();
    assert_eq!(others, 1, "queued delivery: {to_se:?}");
    assert_eq!(
        sync.catalog()
            .get(OTHER)
            .await
            .unwrap()
            .unwrap()
            .content
            .status,
        SyncStatus::Synced
    );
}
