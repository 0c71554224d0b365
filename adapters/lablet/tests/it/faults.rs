//! Fault injection for every external service: down (connection refused), 5xx,
//! slow past the read timeout, and the connection cut (or stalled) mid-body. Each
//! fails its own stage; the store never holds a partial object; every record
//! points at bytes that match it; fan-out failures are queued and delivered once
//! the target is back.
use std::time::Duration;

use crate::common::consistency::{assert_records_match_bytes, stored_bytes};
use crate::common::env::{Env, FakeCpa, s3_config};
use crate::common::*;
use cfgsync_lablet::RetryPolicy;
use cfgsync_lablet::catalog::{DeliveryStatus, SyncStatus};
use cfgsync_lablet::{LabletSync, LabletSyncConfig, Stage};
use cfgsync_test_support::S3Harness;
use cfgsync_test_support::free_port;
use object_store::{ObjectStoreExt, path::Path};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "LAB-1.1.1";
/// Longer than the 1 s read timeout of [`fault_config`].
const SLOW: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Nothing listens: connection refused.
    Down,
    /// 503 on every request.
    Status503,
    /// The answer comes later than the read timeout.
    Slow,
    /// Headers with `Content-Length: N`, N/2 bytes, then the connection closes.
    Cut,
    /// Headers with `Content-Length: N`, N/2 bytes, then nothing (connection open).
    Stall,
    /// The request is read, then the connection closes without an answer.
    Reset,
}

const FAULTS: [Fault; 6] = [
    Fault::Down,
    Fault::Status503,
    Fault::Slow,
    Fault::Cut,
    Fault::Stall,
    Fault::Reset,
];

/// A fan-out target that sent `200` has accepted the delivery, whatever happens to
/// the rest of its answer (Cut, Stall): the faults that lose a delivery are these.
const FANOUT_FAULTS: [Fault; 4] = [Fault::Down, Fault::Status503, Fault::Slow, Fault::Reset];

/// Keeps a fault server alive.
enum Running {
    Nothing,
    Mock(#[allow(dead_code)] MockServer),
    Raw(tokio::task::JoinHandle<()>),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Running::Raw(task) = self {
            task.abort();
        }
    }
}

/// Bind `port` again (bounded wait, on the runtime, for the previous owner to let
/// go).
async fn bind(port: u16) -> std::net::TcpListener {
    for _ in 0..400 {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("port {port} stays busy");
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// A raw HTTP/1.1 server reading each request, then: `Cut` answers `200` with the
/// `Content-Length` of `body` and only its first half and closes; `Stall` does the
/// same but keeps the connection open; `Reset` closes without an answer.
fn raw_server(listener: std::net::TcpListener, body: Vec<u8>, fault: Fault) -> Running {
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    Running::Raw(tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                for _ in 0..1024 {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                    if let Some(end) = find(&seen, b"\r\n\r\n")
                        && seen.len() >= end + 4 + content_length(&seen[..end])
                    {
                        break;
                    }
                }
                if matches!(fault, Fault::Reset) {
                    return;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n\
                     content-length: {}\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body[..body.len() / 2]).await;
                let _ = sock.flush().await;
                if matches!(fault, Fault::Stall) {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            });
        }
    }))
}

/// Start `fault` on `port`, answering with `body` where it answers at all.
async fn start_fault(fault: Fault, port: u16, body: Vec<u8>) -> Running {
    match fault {
        Fault::Down => Running::Nothing,
        Fault::Status503 | Fault::Slow => {
            let server = MockServer::builder()
                .listener(bind(port).await)
                .start()
                .await;
            let response = match fault {
                Fault::Slow => ResponseTemplate::new(200)
                    .set_body_bytes(body)
                    .set_delay(SLOW),
                _ => ResponseTemplate::new(503),
            };
            Mock::given(wiremock::matchers::any())
                .respond_with(response)
                .mount(&server)
                .await;
            Running::Mock(server)
        }
        Fault::Cut | Fault::Stall | Fault::Reset => raw_server(bind(port).await, body, fault),
    }
}

/// Small timeouts, two attempts per call.
fn fault_config(mut config: LabletSyncConfig) -> LabletSyncConfig {
    config.http.connect_timeout_secs = 1;
    config.http.read_timeout_secs = 1;
    config.with_retry(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
    )
}

fn tmp_files(env: &Env) -> usize {
    std::fs::read_dir(env.data.path().join("work/tmp"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn resolver_and_mosaic_faults_fail_their_stage_and_change_nothing() {
    let env = Env::start().await;
    let v1 = sample_package("1.0", "");
    let v2 = sample_package("2.0", "v: 2\n");
    env.publish(NAME, v1.clone()).await;
    let base = fault_config(env.config(None));
    let sync = LabletSync::from_config(base.clone()).unwrap();
    let before = sync.sync(NAME).await.unwrap().definition;
    drop(sync);
    let notified = Env::bodies(&env.lds).await.len();

    for service in ["resolver", "mosaic"] {
        for fault in FAULTS {
            let label = format!("{service} {fault:?}");
            let port = free_port();
            let fault_url = format!("http://127.0.0.1:{port}");
            let mut config = base.clone();
            let (running, stage, prefix) = if service == "resolver" {
                let json = serde_json::to_vec(&serde_json::json!({
                    "MOSAIC_BASE_URL": format!("{}/content/{NAME}", env.mosaic.uri()),
                }))
                .unwrap();
                config = config.with_resolver_url(&fault_url);
                (
                    start_fault(fault, port, json).await,
                    Stage::Resolve,
                    "cannot resolve content",
                )
            } else {
                env.resolver.reset().await;
                Mock::given(method("GET"))
                    .and(path(format!("/resolve/{NAME}")))
                    .respond_with(ResponseTemplate::new(200).set_body_json(
                        serde_json::json!({"MOSAIC_BASE_URL": format!("{fault_url}/content/{NAME}")}),
                    ))
                    .mount(&env.resolver)
                    .await;
                (
                    start_fault(fault, port, v2.clone()).await,
                    Stage::Download,
                    "package not available",
                )
            };
            let sync = LabletSync::from_config(config).unwrap();
            let err = sync.sync(NAME).await.unwrap_err();
            assert_eq!(err.stage(), Some(stage), "{label}: {err}");
            assert!(err.is_retryable(), "{label}: {err}");
            assert!(
                err.to_string()
                    .starts_with(&format!("{prefix} for lablet {NAME}")),
                "{label}: {err}"
            );
            assert_eq!(
                sync.catalog().get(NAME).await.unwrap().as_ref(),
                Some(&before),
                "{label}"
            );
            assert_eq!(
                stored_bytes(&before.content.store, None).await.as_deref(),
                Some(v1.as_slice()),
                "{label}"
            );
            assert_eq!(assert_records_match_bytes(&*sync.catalog(), None).await, 1);
            assert_eq!(tmp_files(&env), 0, "{label}: partial download left");
            assert_eq!(Env::bodies(&env.lds).await.len(), notified, "{label}");
            drop(running);
        }
    }
    // the services come back: the same sync goes through
    env.resolver.reset().await;
    env.publish(NAME, v2.clone()).await;
    let sync = LabletSync::from_config(base).unwrap();
    let report = sync.sync(NAME).await.unwrap();
    assert_eq!(report.definition.content.content_package_hash, sha256(&v2));
    assert_eq!(assert_records_match_bytes(&*sync.catalog(), None).await, 1);
}

#[tokio::test]
async fn s3_faults_fail_at_store_leave_no_partial_object_and_keep_the_record() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("!!! s3 fault injection needs the in-process server: skipped !!!");
        return;
    }
    let v1 = sample_package("1.0", "");
    // two 8 MiB parts: the "upload part fails" fault fails the second
    let v2 = big_package(10, 7);
    env.publish(NAME, v1.clone()).await;
    let base = fault_config(s3_config(env.config(None), &s3));
    let sync = LabletSync::from_config(base.clone()).unwrap();
    let before = sync.sync(NAME).await.unwrap().definition;
    env.mosaic_serves(NAME, v2.clone()).await;
    let notified = Env::bodies(&env.lds).await.len();

    let faults: [(&str, Option<String>); 4] = [
        ("down", Some(format!("http://127.0.0.1:{}", free_port()))),
        ("503", None),
        ("slow", None),
        ("upload part fails", None),
    ];
    for (label, endpoint) in faults {
        s3.reset_counters();
        match label {
            "503" => s3.faults().fail_all_with(503),
            "slow" => s3.faults().delay(SLOW),
            "upload part fails" => s3.faults().fail_upload_parts_from(2),
            _ => {}
        }
        let mut config = base.clone();
        // s3s-fs in a debug build may take over a second to take an 8 MiB part
        config.http.read_timeout_secs = if label == "slow" { 1 } else { 30 };
        if let Some(endpoint) = endpoint {
            config.store.s3.endpoint = Some(endpoint);
        }
        let sync = LabletSync::from_config(config).unwrap();
        let err = sync.sync(NAME).await.unwrap_err();
        s3.faults().clear();
        assert_eq!(err.stage(), Some(Stage::Store), "{label}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("blob upload failed for lablet {NAME}")),
            "{label}: {err}"
        );
        if label == "503" {
            // object_store retries as configured (2 attempts), not its own 10
            assert_eq!(s3.requests(), Some(2), "{label}");
        }
        if label == "upload part fails" {
            assert!(s3.upload_parts().unwrap() >= 2, "{label}");
            assert_eq!(s3.completed_uploads(), Some(0), "{label}");
            assert_eq!(s3.aborted_uploads(), Some(1), "{label}: upload not aborted");
            assert_eq!(s3.open_uploads(), Some(0), "{label}: upload left open");
        }
        // the previous object is intact, the record unchanged and consistent
        assert_eq!(
            stored_bytes(&before.content.store, Some(&s3))
                .await
                .as_deref(),
            Some(v1.as_slice()),
            "{label}: partial object at the final key"
        );
        assert_eq!(
            sync.catalog().get(NAME).await.unwrap().as_ref(),
            Some(&before),
            "{label}"
        );
        assert_eq!(
            assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
            1
        );
        assert_eq!(Env::bodies(&env.lds).await.len(), notified, "{label}");
        assert_eq!(tmp_files(&env), 0, "{label}");
    }
    // S3 is back: the same sync stores the new package
    let mut config = base;
    config.http.read_timeout_secs = 30;
    let sync = LabletSync::from_config(config).unwrap();
    let report = sync.sync(NAME).await.unwrap();
    assert!(report.uploaded);
    assert_eq!(report.definition.content.content_package_hash, sha256(&v2));
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        1
    );
    // an upload whose abort failed too (S3 slow or gone) is aborted by this sync
    assert_eq!(s3.open_uploads(), Some(0), "an upload left open");
}

#[tokio::test]
async fn fan_out_faults_queue_and_deliver_exactly_once_when_the_target_is_back() {
    let env = Env::start().await;
    let package = sample_package("1.0", "");
    for target in ["lds", "se"] {
        for fault in FANOUT_FAULTS {
            let label = format!("{target} {fault:?}");
            let name = format!("LAB-{target}-{fault:?}");
            env.publish(&name, package.clone()).await;
            let port = free_port();
            let url = format!("http://127.0.0.1:{port}");
            let running = start_fault(fault, port, b"{}".to_vec()).await;
            let mut config = fault_config(env.config(None));
            let healthy = if target == "lds" {
                config.fanout.lds_url = Some(url.clone());
                &env.se
            } else {
                config.fanout.se_url = Some(url.clone());
                &env.lds
            };
            let healthy_before = Env::bodies(healthy).await.len();
            let sync = LabletSync::from_config(config).unwrap();
            let report = sync.sync(&name).await.unwrap();
            let c = &report.definition.content;
            assert_eq!(c.status, SyncStatus::Stale, "{label}");
            let t = c.fanout.iter().find(|t| t.target == target).unwrap();
            assert_eq!(t.status, DeliveryStatus::Queued, "{label}");
            let msg = report.stale_message().unwrap();
            assert!(
                msg.starts_with("catalog synced but delivery stale"),
                "{label}: {msg}"
            );
            assert_eq!(Env::bodies(healthy).await.len(), healthy_before + 1);
            let queued = sync.pending_deliveries().await.unwrap();
            assert_eq!(queued.len(), 1, "{label}");
            assert_eq!(queued[0].target, target);
            assert_eq!(queued[0].body.sha256, sha256(&package));
            assert_records_match_bytes(&*sync.catalog(), None).await;

            // still down: a drain keeps it queued
            let r = sync.retry_pending().await.unwrap();
            assert_eq!((r.delivered, r.still_pending), (0, 1), "{label}");
            drop(running);

            // the target is back on the same address
            let back = MockServer::builder()
                .listener(bind(port).await)
                .start()
                .await;
            Mock::given(method("POST"))
                .respond_with(ResponseTemplate::new(200))
                .mount(&back)
                .await;
            let r = sync.retry_pending().await.unwrap();
            assert_eq!((r.delivered, r.still_pending), (1, 0), "{label}");
            let r = sync.retry_pending().await.unwrap();
            assert_eq!(r.delivered, 0, "{label}: delivered twice");
            let got = Env::bodies(&back).await;
            assert_eq!(got.len(), 1, "{label}: deliveries at the target");
            assert_eq!(got[0]["lablet"], name.as_str());
            assert_eq!(got[0]["sha256"], sha256(&package).as_str());
            assert!(sync.pending_deliveries().await.unwrap().is_empty());
            let def = sync.catalog().get(&name).await.unwrap().unwrap();
            assert_eq!(def.content.status, SyncStatus::Synced, "{label}");
            assert_eq!(Env::bodies(healthy).await.len(), healthy_before + 1);
            assert_records_match_bytes(&*sync.catalog(), None).await;
        }
    }
}

#[tokio::test]
async fn cpa_faults_fail_at_record_before_the_store_changes() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let (cpa, cpa_server) = FakeCpa::start().await;
    let v1 = sample_package("1.0", "");
    let v2 = sample_package("2.0", "v: 2\n");
    env.publish(NAME, v1.clone()).await;
    let base = fault_config(s3_config(env.config(None), &s3));
    let sync = LabletSync::from_config(base.clone().with_cpa_url(cpa_server.uri())).unwrap();
    let before = sync.sync(NAME).await.unwrap().definition;
    env.mosaic_serves(NAME, v2.clone()).await;
    let notified = Env::bodies(&env.lds).await.len();

    for fault in FAULTS {
        let label = format!("cpa {fault:?}");
        let port = free_port();
        let running = start_fault(fault, port, b"{}".to_vec()).await;
        s3.reset_counters();
        let sync = LabletSync::from_config(
            base.clone()
                .with_cpa_url(format!("http://127.0.0.1:{port}")),
        )
        .unwrap();
        let err = sync.sync(NAME).await.unwrap_err();
        assert_eq!(err.stage(), Some(Stage::Record), "{label}: {err}");
        assert!(
            err.to_string()
                .starts_with(&format!("record failed for lablet {NAME}")),
            "{label}: {err}"
        );
        // the catalog was asked before the store changed: nothing uploaded
        if s3.is_in_process() {
            assert_eq!(s3.put_body_bytes(), Some(0), "{label}");
        }
        assert_eq!(
            stored_bytes(&before.content.store, Some(&s3))
                .await
                .as_deref(),
            Some(v1.as_slice()),
            "{label}"
        );
        assert_eq!(Env::bodies(&env.lds).await.len(), notified, "{label}");
        drop(running);
    }
    let defs = cpa.defs.lock().unwrap().clone();
    assert_eq!(defs.get(NAME), Some(&before));
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        1
    );
    // CPA is back: the sync records the new package
    let report = sync.sync(NAME).await.unwrap();
    assert_eq!(report.definition.content.content_package_hash, sha256(&v2));
    assert_eq!(report.definition.content.content_version, 2);
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        1
    );
}

/// CPA answers reads but refuses every record (500).
async fn cpa_refuses_records(server: &MockServer) {
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .with_priority(1)
        .mount(server)
        .await;
}

/// CPA works again, with the definitions it had.
async fn cpa_is_back(server: &MockServer, cpa: &FakeCpa) {
    server.reset().await;
    Mock::given(wiremock::matchers::path_regex(
        "^/api/internal/lablet-definitions",
    ))
    .respond_with(cpa.clone())
    .mount(server)
    .await;
}

#[tokio::test]
async fn record_failure_with_content_addressed_keys_keeps_every_record_matching_its_bytes() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let (cpa, cpa_server) = FakeCpa::start().await;
    let v1 = sample_package("1.0", "");
    let v2 = sample_package("2.0", "v: 2\n");
    env.publish(NAME, v1.clone()).await;
    let config = fault_config(s3_config(env.config(None), &s3))
        .with_cpa_url(cpa_server.uri())
        .with_location("{bucket}/lablets/{name}/{sha256}.zip");
    let sync = LabletSync::from_config(config).unwrap();
    let before = sync.sync(NAME).await.unwrap().definition;
    assert!(
        before
            .content
            .store
            .key
            .ends_with(&format!("{}.zip", sha256(&v1)))
    );

    // CPA answers reads but rejects the record of the new package
    env.mosaic_serves(NAME, v2.clone()).await;
    cpa_refuses_records(&cpa_server).await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Record), "{err}");
    assert_eq!(
        sync.catalog().get(NAME).await.unwrap(),
        Some(before.clone())
    );
    // the old record still matches its bytes; the new bytes sit at their own key
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        1
    );

    // CPA is back: the re-run records the new package (already stored: no upload)
    cpa_is_back(&cpa_server, &cpa).await;
    let report = sync.sync(NAME).await.unwrap();
    assert!(!report.uploaded);
    assert_eq!(report.definition.content.content_package_hash, sha256(&v2));
    assert_eq!(report.definition.content.content_version, 2);
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        1
    );
    // the successful sync superseded the record the failure kept
    assert!(sync.pending_records().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_record_refused_after_the_store_is_kept_and_lands_when_the_catalog_is_back() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let (cpa, cpa_server) = FakeCpa::start().await;
    let v1 = sample_package("1.0", "");
    let v2 = sample_package("2.0", "v: 2\n");
    env.publish(NAME, v1.clone()).await;
    // the default layout: one fixed key per lablet, overwritten by a re-sync
    let config = fault_config(s3_config(env.config(None), &s3)).with_cpa_url(cpa_server.uri());
    let sync = LabletSync::from_config(config).unwrap();
    let before = sync.sync(NAME).await.unwrap().definition;

    // CPA answers reads but refuses the record once v2 is stored
    env.mosaic_serves(NAME, v2.clone()).await;
    cpa_refuses_records(&cpa_server).await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Record), "{err}");
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), Some(before));
    let kept = sync.pending_records().await.unwrap();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].content.content_package_hash, sha256(&v2));
    assert_eq!(kept[0].attempts, 1);

    // a drain while CPA still refuses keeps it
    let r = sync.retry_pending().await.unwrap();
    assert_eq!((r.recorded, r.records_pending), (0, 1));
    assert!(r.anything_pending());
    assert_eq!(sync.pending_records().await.unwrap()[0].attempts, 2);

    // CPA is back: the drain records v2 with no new download or upload
    cpa_is_back(&cpa_server, &cpa).await;
    let downloads = env.mosaic.received_requests().await.unwrap().len();
    s3.reset_counters();
    let r = sync.retry_pending().await.unwrap();
    assert_eq!((r.recorded, r.records_pending), (1, 0));
    assert!(!r.anything_pending());
    let after = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(after.content.content_package_hash, sha256(&v2));
    assert_eq!(after.content.content_version, 2);
    assert_eq!(
        assert_records_match_bytes(&*sync.catalog(), Some(&s3)).await,
        1
    );
    assert_eq!(
        env.mosaic.received_requests().await.unwrap().len(),
        downloads
    );
    assert_eq!(s3.put_body_bytes().unwrap_or(0), 0);
    assert!(sync.pending_records().await.unwrap().is_empty());
    assert_eq!(sync.retry_pending().await.unwrap().recorded, 0);

    // A kept record whose bytes are no longer what the store holds is dropped,
    // not recorded: v3 is stored but refused, then the key is overwritten.
    let v3 = sample_package("3.0", "v: 3\n");
    env.mosaic_serves(NAME, v3.clone()).await;
    cpa_refuses_records(&cpa_server).await;
    sync.sync(NAME).await.unwrap_err();
    cpa_is_back(&cpa_server, &cpa).await;
    let loc = &after.content.store;
    s3.store_for_bucket(&loc.bucket)
        .unwrap()
        .put(
            &Path::from(loc.key.as_str()),
            b"other bytes".to_vec().into(),
        )
        .await
        .unwrap();
    let r = sync.retry_pending().await.unwrap();
    assert_eq!((r.recorded, r.records_pending), (0, 0));
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), Some(after));
    assert!(sync.pending_records().await.unwrap().is_empty());
}
