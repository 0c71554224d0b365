//! Replicas on one S3 store (issue 12): the storage key is the unit of
//! locking and uniqueness, leases in the store serialize syncs across
//! processes and are taken over after their holder dies, and the retry queue
//! lives in the store so any replica drains it. `lablet-sync` processes stand
//! for replicas on other machines (each its own data dir); the in-process S3
//! server is the shared store; wiremock plays resolver, Mosaic, LDS, SE, CPA.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::consistency::{assert_records_match_bytes, stored_bytes};
use crate::common::env::{Env, FakeCpa, s3_config};
use crate::common::*;
use cfgsync_lablet::catalog::SyncStatus;
use cfgsync_lablet::{Error, LabletSync, LabletSyncConfig};
use cfgsync_test_support::S3Harness;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "LAB-1.1.1";

/// The `LABLET_*` / `AWS_*` variables of one replica: its own data dir, the
/// shared S3 store and CPA, a short lease TTL.
fn replica_vars(
    env: &Env,
    cpa: &MockServer,
    s3: &S3Harness,
    data: &Path,
) -> BTreeMap<String, String> {
    [
        ("LABLET_RESOLVER_URL", env.resolver.uri()),
        ("LABLET_LDS_URL", env.lds.uri()),
        ("LABLET_SE_URL", env.se.uri()),
        ("LABLET_CATALOG", "cpa".to_owned()),
        ("LABLET_CPA_URL", cpa.uri()),
        ("LABLET_DATA_DIR", data.display().to_string()),
        ("LABLET_STORE", format!("s3://{}", s3.bucket)),
        ("LABLET_S3_ENDPOINT", s3.endpoint.clone()),
        ("LABLET_RETRY_ATTEMPTS", "2".to_owned()),
        ("LABLET_RETRY_BACKOFF_MS", "5".to_owned()),
        ("LABLET_LEASE_TTL_SECS", "1".to_owned()),
        ("LABLET_LOCK_WAIT_SECS", "120".to_owned()),
        ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
        ("AWS_REGION", s3.region.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// The pipeline a replica with `vars` builds, in this process.
fn in_process(vars: &BTreeMap<String, String>, s3: &S3Harness) -> LabletSync {
    let config = LabletSyncConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
    LabletSync::from_config(s3_config(config, s3)).unwrap()
}

fn spawn(vars: &BTreeMap<String, String>, args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_lablet-sync"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(vars)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a child and returns its exit code and stderr.
async fn finish(child: Child) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || {
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// The objects under `prefix` in the harness's bucket.
async fn objects(s3: &S3Harness, prefix: &str) -> Vec<String> {
    let prefix = object_store::path::Path::from(prefix);
    s3.store
        .list(Some(&prefix))
        .map_ok(|m| m.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// The resolver points `name` at `mosaic_base`.
async fn resolve_to(env: &Env, name: &str, mosaic_base: &str) {
    Mock::given(method("GET"))
        .and(path(format!("/resolve/{name}")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({ "MOSAIC_BASE_URL": mosaic_base })),
        )
        .mount(&env.resolver)
        .await;
}

/// A Mosaic that serves `body` slowly (64 KiB every 50 ms) and counts the
/// downloads in flight at once: two syncs of one lablet that interleave
/// would both be downloading.
struct SlowMosaic {
    url: String,
    in_flight: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
    served: Arc<AtomicUsize>,
}

impl SlowMosaic {
    fn start(body: Vec<u8>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let this = Self {
            url,
            in_flight: Arc::default(),
            most_at_once: Arc::default(),
            served: Arc::default(),
        };
        let (in_flight, most, served) = (
            Arc::clone(&this.in_flight),
            Arc::clone(&this.most_at_once),
            Arc::clone(&this.served),
        );
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let body = body.clone();
                let (in_flight, most, served) = (
                    Arc::clone(&in_flight),
                    Arc::clone(&most),
                    Arc::clone(&served),
                );
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    let _ = sock.read(&mut buf).await;
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let mut ok = sock.write_all(head.as_bytes()).await.is_ok();
                    for chunk in body.chunks(64 * 1024) {
                        if !ok {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        ok = sock.write_all(chunk).await.is_ok();
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    if ok {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        this
    }
}

#[tokio::test]
async fn slug_collision_is_refused_with_a_clear_error_and_nothing_stored() {
    let s3 = S3Harness::start().await.unwrap();
    // S3 with a bucket per lablet, and the file store with a prefix per slug
    for (label, on_s3, location) in [
        ("s3", true, "lablet-{slug}/package.zip"),
        ("file", false, "{bucket}/lablets/{slug}/package.zip"),
    ] {
        let env = Env::start().await;
        let first = sample_package("1.0", "first: 1\n");
        let second = sample_package("2.0", "second: 2\n");
        env.publish(NAME, first.clone()).await;
        resolve_to(
            &env,
            "lab-1-1-1",
            &format!("{}/content/lab-1-1-1", env.mosaic.uri()),
        )
        .await;
        Mock::given(method("GET"))
            .and(path("/content/lab-1-1-1/package.zip"))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(second))
            .mount(&env.mosaic)
            .await;
        let config = env.config(None).with_location(location);
        let config = if on_s3 {
            s3_config(config, &s3)
        } else {
            config
        };
        let sync = LabletSync::from_config(config).unwrap();
        let owner = sync.sync(NAME).await.unwrap().definition;

        let err = sync.sync("lab-1-1-1").await.unwrap_err();
        let Error::KeyTaken {
            lablet,
            key,
            owner: taken_by,
            ..
        } = &err
        else {
            panic!("{label}: expected KeyTaken, got {err:?}");
        };
        assert_eq!(
            (lablet.as_str(), taken_by.as_str()),
            ("lab-1-1-1", NAME),
            "{label}"
        );
        assert_eq!(key, &owner.content.store.url, "{label}");
        assert!(
            err.to_string().starts_with(&format!(
                "storage key {} already belongs to lablet {NAME}",
                owner.content.store.url
            )),
            "{label}: {err}"
        );
        assert!(!err.is_retryable(), "{label}");
        // nothing downloaded, stored or recorded for the refused name
        let downloads = env.mosaic.received_requests().await.unwrap();
        assert!(
            downloads
                .iter()
                .all(|r| !r.url.path().contains("lab-1-1-1")),
            "{label}: the refused name was downloaded"
        );
        let s3_ref = on_s3.then_some(&s3);
        assert_eq!(
            stored_bytes(&owner.content.store, s3_ref).await,
            Some(first),
            "{label}"
        );
        assert_eq!(
            sync.catalog().get("lab-1-1-1").await.unwrap(),
            None,
            "{label}"
        );
        assert!(sync.pending_records().await.unwrap().is_empty(), "{label}");
        // the owner keeps syncing its key
        assert!(sync.sync(NAME).await.is_ok(), "{label}");
    }
}

#[tokio::test]
async fn concurrent_syncs_of_one_lablet_from_two_processes_serialize_on_the_lease() {
    let s3 = S3Harness::start().await.unwrap();
    let env = Env::start().await;
    let (cpa, cpa_server) = FakeCpa::start().await;
    // about 2.5 s per download, longer than the 1 s lease TTL: the lease
    // holds only because its holder renews it
    let package = big_package(3, 7);
    let mosaic = SlowMosaic::start(package.clone());
    resolve_to(&env, NAME, &mosaic.url).await;
    let a = replica_vars(&env, &cpa_server, &s3, &env.data.path().join("replica-a"));
    let b = replica_vars(&env, &cpa_server, &s3, &env.data.path().join("replica-b"));

    let first = spawn(&a, &["sync", NAME]);
    let second = spawn(&b, &["sync", NAME]);
    let (first, second) = tokio::join!(finish(first), finish(second));
    assert_eq!(first.0, Some(0), "replica a: {}", first.1);
    assert_eq!(second.0, Some(0), "replica b: {}", second.1);

    assert_eq!(mosaic.served.load(Ordering::SeqCst), 2, "both syncs ran");
    assert_eq!(
        mosaic.most_at_once.load(Ordering::SeqCst),
        1,
        "the two syncs of one lablet overlapped"
    );
    // one object, uploaded once (the second sync found the bytes stored),
    // one record matching it
    assert_eq!(s3.completed_uploads(), Some(1));
    let defs = cpa.defs.lock().unwrap().clone();
    assert_eq!(defs.len(), 1);
    let def = &defs[NAME];
    assert_eq!(def.content.content_package_hash, sha256(&package));
    assert_eq!(def.content.content_version, 1);
    let reader = in_process(&a, &s3);
    assert_eq!(
        assert_records_match_bytes(&*reader.catalog(), Some(&s3)).await,
        1
    );
    // the lease was handed back, not left to expire
    let leases = objects(&s3, "_leases").await;
    assert_eq!(leases.len(), 1, "{leases:?}");
    let lease: serde_json::Value = serde_json::from_slice(
        &s3.store
            .get(&leases[0].as_str().into())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(lease["released"], true, "{lease}");
    assert!(
        lease["renewals"].as_u64().unwrap() >= 1,
        "the lease was never renewed: {lease}"
    );
}

#[tokio::test]
async fn kill_9_of_the_lease_holder_mid_sync_lets_another_replica_finish_after_expiry() {
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("!!! the kill -9 test needs the in-process S3 server: skipped !!!");
        return;
    }
    let env = Env::start().await;
    let (_cpa, cpa_server) = FakeCpa::start().await;
    let package = sample_package("1.0", "");
    // Mosaic holds every download a minute: the holder dies mid-download
    env.publish(NAME, package.clone()).await;
    env.mosaic_serves_after(NAME, package.clone(), Duration::from_secs(60))
        .await;
    // a 3 s TTL: long enough that the dead lease still looks live to the
    // impatient replica below
    let mut a = replica_vars(&env, &cpa_server, &s3, &env.data.path().join("replica-a"));
    a.insert("LABLET_LEASE_TTL_SECS".to_owned(), "3".to_owned());
    let mut b = a.clone();
    b.insert(
        "LABLET_DATA_DIR".to_owned(),
        env.data.path().join("replica-b").display().to_string(),
    );
    let mut impatient = b.clone();
    impatient.insert("LABLET_LOCK_WAIT_SECS".to_owned(), "0".to_owned());

    let mut holder = spawn(&a, &["sync", NAME]);
    let holder_pid = holder.id();
    let mut seen = false;
    for _ in 0..1200 {
        let downloading = !env.mosaic.received_requests().await.unwrap().is_empty();
        if downloading && !objects(&s3, "_leases").await.is_empty() {
            seen = true;
            break;
        }
        assert!(
            holder.try_wait().unwrap().is_none(),
            "the holder ended early"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        seen,
        "the holder never took the lease and started downloading"
    );
    holder.kill().unwrap(); // SIGKILL
    assert!(!holder.wait().unwrap().success());
    let key = format!("s3://{}/lablets/{NAME}/package.zip", s3.bucket);
    let lease_path = objects(&s3, "_leases").await.remove(0);
    let read_lease = || async {
        let got = s3.store.get(&lease_path.as_str().into()).await.unwrap();
        serde_json::from_slice::<serde_json::Value>(&got.bytes().await.unwrap()).unwrap()
    };
    let dead = read_lease().await;
    assert!(
        dead["holder"]
            .as_str()
            .unwrap()
            .contains(&format!(":{holder_pid}:")),
        "{dead}"
    );
    assert_eq!(dead["released"], false);

    // a replica that does not wait is told who holds the key
    let err = in_process(&impatient, &s3).sync(NAME).await.unwrap_err();
    let Error::Busy {
        holder: held_by,
        key: busy_key,
        ..
    } = &err
    else {
        panic!("expected Busy, got {err:?}");
    };
    assert!(held_by.contains(&format!(":{holder_pid}:")), "{err}");
    assert_eq!(busy_key, &key);
    assert!(
        err.to_string()
            .starts_with(&format!("lablet {NAME} is busy")),
        "{err}"
    );

    // replica B: Mosaic answers at once now; B waits out the dead lease
    env.mosaic_serves(NAME, package.clone()).await;
    let replica = in_process(&b, &s3);
    let report = replica.sync(NAME).await.unwrap();
    assert!(report.uploaded);
    assert_eq!(report.definition.content.store.url, key);
    assert_eq!(report.definition.content.status, SyncStatus::Synced);
    // no partial object: the killed holder never stored; B's bytes are whole
    assert_eq!(
        stored_bytes(&report.definition.content.store, Some(&s3)).await,
        Some(package)
    );
    assert_eq!(s3.open_uploads(), Some(0));
    assert_eq!(
        assert_records_match_bytes(&*replica.catalog(), Some(&s3)).await,
        1
    );
    let taken_over = read_lease().await;
    assert_eq!(taken_over["released"], true, "{taken_over}");
    assert!(
        !taken_over["holder"]
            .as_str()
            .unwrap()
            .contains(&format!(":{holder_pid}:")),
        "{taken_over}"
    );
}

#[tokio::test]
async fn an_lds_notification_queued_by_one_replica_is_delivered_once_by_another() {
    let s3 = S3Harness::start().await.unwrap();
    let env = Env::start().await;
    let (cpa, cpa_server) = FakeCpa::start().await;
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    // LDS is down while replica A syncs
    env.lds.reset().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&env.lds)
        .await;
    let a = replica_vars(&env, &cpa_server, &s3, &env.data.path().join("replica-a"));
    let (code, stderr) = finish(spawn(&a, &["sync", NAME])).await;
    assert_eq!(code, Some(3), "synced but LDS stale: {stderr}");
    // A is gone (and so is its data dir): the delivery waits in the store
    std::fs::remove_dir_all(env.data.path().join("replica-a")).unwrap();
    let queued = objects(&s3, "_queue/pending_deliveries").await;
    assert_eq!(
        queued,
        vec![format!("_queue/pending_deliveries/lds/{NAME}.json")]
    );
    assert_eq!(
        cpa.defs.lock().unwrap()[NAME].content.status,
        SyncStatus::Stale
    );

    // LDS is back; replicas B and C drain at once, then again
    env.lds.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&env.lds)
        .await;
    let b = in_process(
        &replica_vars(&env, &cpa_server, &s3, &env.data.path().join("replica-b")),
        &s3,
    );
    let c = in_process(
        &replica_vars(&env, &cpa_server, &s3, &env.data.path().join("replica-c")),
        &s3,
    );
    let (rb, rc) = tokio::join!(b.retry_pending(), c.retry_pending());
    let (rb, rc) = (rb.unwrap(), rc.unwrap());
    assert_eq!(rb.delivered + rc.delivered, 1, "{rb:?} {rc:?}");
    let again = c.retry_pending().await.unwrap();
    assert_eq!((again.delivered, again.still_pending), (0, 0), "{again:?}");
    assert!(b.pending_deliveries().await.unwrap().is_empty());
    assert!(objects(&s3, "_queue/pending_deliveries").await.is_empty());
    env.lds.verify().await;
    // the delivery turned the shared record synced
    assert_eq!(
        cpa.defs.lock().unwrap()[NAME].content.status,
        SyncStatus::Synced
    );
}
