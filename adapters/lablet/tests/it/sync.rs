//! End-to-end syncs against real parts: wiremock for third-party HTTP services, a
//! real S3 server in-process, the real embedded catalog, a fake CPA.
use std::sync::Arc;
use std::time::Duration;

use crate::common::consistency::sidecar_bytes;
use crate::common::env::{Env, FakeCpa, s3_config};
use crate::common::*;
use cfgsync_lablet::catalog::{
    Catalog, CatalogFilter, DeliveryStatus, EmbeddedCatalog, SyncStatus,
};
use cfgsync_lablet::{LabletSync, LabletSyncConfig, Stage, SyncReport};
use cfgsync_test_support::S3Harness;
use object_store::{Attribute, GetOptions, ObjectStore, ObjectStoreExt, path::Path};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const NAME: &str = "LAB-1.1.1";

#[derive(Debug, Clone, Copy)]
enum StoreKind {
    File,
    S3,
}

#[derive(Debug, Clone, Copy)]
enum CatalogKind {
    Embedded,
    Cpa,
}

/// Assert every recorded field against the package the test built.
fn assert_record(report: &SyncReport, package: &[u8], version: &str, expected_version: u64) {
    let c = &report.definition.content;
    assert_eq!(report.definition.id, NAME);
    assert_eq!(c.lablet, NAME);
    assert_eq!(c.content_package_hash, sha256(package));
    assert_eq!(c.content_package_size, package.len() as u64);
    assert_eq!(c.upstream_version.as_deref(), Some(version));
    assert_eq!(
        c.upstream_date_published.as_deref(),
        Some("2026-02-25T10:00:00Z")
    );
    assert_eq!(c.upstream_instance_name.as_deref(), Some("mosaic-prod"));
    assert_eq!(c.upstream_form_id.as_deref(), Some("form-42"));
    assert_eq!(c.grade_xml_path.as_deref(), Some("LAB/grading/grade.xml"));
    assert_eq!(c.cml_yaml_path, "LAB/cml.yaml");
    assert!(c.cml_yaml_content.starts_with(CML));
    assert_eq!(c.cml_yaml_hash, sha256(c.cml_yaml_content.as_bytes()));
    assert_eq!(c.devices_json.as_deref(), Some(DEVICES));
    chrono::DateTime::parse_from_rfc3339(&c.synced_at).unwrap();
    assert_eq!(c.status, SyncStatus::Synced);
    assert!(
        c.store
            .key
            .ends_with(&format!("lablets/{NAME}/package.zip")),
        "{}",
        c.store.key
    );
    assert_eq!(c.content_version, expected_version);
    let targets: Vec<_> = c
        .fanout
        .iter()
        .map(|t| (t.target.as_str(), t.status))
        .collect();
    assert_eq!(
        targets,
        [
            ("lds", DeliveryStatus::Delivered),
            ("se", DeliveryStatus::Delivered)
        ]
    );
    assert_eq!(report.stale_message(), None);
}

async fn run_happy_path(store: StoreKind, catalog: CatalogKind) {
    let env = Env::start().await;
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    let s3 = S3Harness::start().await.unwrap();
    let mut config = env.config(None);
    if let StoreKind::S3 = store {
        config = s3_config(config, &s3);
    }
    let cpa = match catalog {
        CatalogKind::Cpa => {
            let (fake, server) = FakeCpa::start().await;
            config = config.with_cpa_url(server.uri());
            Some((fake, server))
        }
        CatalogKind::Embedded => None,
    };
    let sync = LabletSync::from_config(config.clone()).unwrap();

    let seen = std::sync::Mutex::new(Vec::new());
    let moved = std::sync::Mutex::new(Vec::new());
    let report = sync
        .sync_observed(
            NAME,
            &|stage| seen.lock().unwrap().push(stage),
            &|stage, done, total| moved.lock().unwrap().push((stage, done, total)),
        )
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), Stage::ALL);
    // Byte progress: both streaming stages report the whole package, in order.
    let size = package.len() as u64;
    for stage in [Stage::Download, Stage::Store] {
        let reports: Vec<_> = moved
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.0 == stage)
            .cloned()
            .collect();
        assert_eq!(
            reports.last().map(|r| (r.1, r.2)),
            Some((size, Some(size))),
            "{stage}: {reports:?}"
        );
        assert!(
            reports.windows(2).all(|w| w[0].1 <= w[1].1),
            "{stage} goes forward"
        );
    }
    assert!(report.uploaded);
    assert_record(&report, &package, "1.0", 1);

    // the catalog holds what was reported
    assert_eq!(
        sync.catalog().get(NAME).await.unwrap(),
        Some(report.definition.clone())
    );
    if let Some((fake, _server)) = &cpa {
        assert_eq!(
            fake.defs.lock().unwrap().get(NAME),
            Some(&report.definition)
        );
    }

    // the store holds the bytes (and the SHA-256 next to them)
    let loc = &report.definition.content.store;
    match store {
        StoreKind::File => {
            let dir = config.data_dir.join("store");
            assert_eq!(loc.bucket, "store");
            assert_eq!(loc.key, format!("lablets/{NAME}/package.zip"));
            let on_disk = std::fs::read(dir.join(&loc.key)).unwrap();
            assert_eq!(on_disk, package);
            let side = std::fs::read_to_string(dir.join(format!("{}.sha256", loc.key))).unwrap();
            assert_eq!(side, sha256(&package));
            assert!(loc.url.starts_with("file://"));
        }
        StoreKind::S3 => {
            assert_eq!(loc.bucket, s3.bucket);
            let expected_key = format!("lablets/{NAME}/package.zip");
            if s3.prefix.is_empty() {
                assert_eq!(loc.key, expected_key);
            } else {
                assert_eq!(loc.key, format!("{}/{expected_key}", s3.prefix));
            }
            assert_eq!(loc.url, format!("s3://{}/{}", s3.bucket, loc.key));
            let got = s3.store.get(&Path::from(loc.key.as_str())).await.unwrap();
            assert_eq!(
                got.attributes
                    .get(&Attribute::Metadata("sha256".into()))
                    .map(|v| v.as_ref().to_owned()),
                Some(sha256(&package))
            );
            assert_eq!(got.bytes().await.unwrap().to_vec(), package);
        }
    }

    // LDS and SE got the documented body
    let expected_body = serde_json::json!({
        "lablet": NAME, "bucket": loc.bucket, "key": loc.key,
        "sha256": sha256(&package), "version": 1,
    });
    assert_eq!(
        Env::bodies(&env.lds).await,
        std::slice::from_ref(&expected_body)
    );
    assert_eq!(Env::bodies(&env.se).await, [expected_body]);
    let metrics = sync.metrics().encode();
    assert!(
        metrics.contains("lablet_sync_stage_total{stage=\"record\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn happy_path_file_store_embedded_catalog() {
    run_happy_path(StoreKind::File, CatalogKind::Embedded).await;
}

#[tokio::test]
async fn happy_path_s3_store_embedded_catalog() {
    run_happy_path(StoreKind::S3, CatalogKind::Embedded).await;
}

#[tokio::test]
async fn happy_path_file_store_cpa_catalog() {
    run_happy_path(StoreKind::File, CatalogKind::Cpa).await;
}

#[tokio::test]
async fn happy_path_s3_store_cpa_catalog() {
    run_happy_path(StoreKind::S3, CatalogKind::Cpa).await;
}

#[tokio::test]
async fn resync_uploads_nothing_keeps_version_and_a_changed_package_bumps_it() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let v1 = sample_package("1.0", "");
    env.publish(NAME, v1.clone()).await;
    let sync = LabletSync::from_config(s3_config(env.config(None), &s3)).unwrap();

    let first = sync.sync(NAME).await.unwrap();
    assert_eq!(first.uploaded_bytes, v1.len() as u64);
    if s3.is_in_process() {
        let side = sidecar_bytes(&first.definition.content.store, &s3).await;
        assert_eq!(s3.put_body_bytes(), Some(v1.len() as u64 + side));
    }

    s3.reset_counters();
    let again = sync.sync(NAME).await.unwrap();
    assert!(!again.uploaded);
    if s3.is_in_process() {
        assert_eq!(
            s3.put_body_bytes(),
            Some(0),
            "re-sync of the same package uploaded bytes"
        );
        assert_eq!(s3.put_requests(), Some(0));
    }
    assert_eq!(again.definition.content.content_version, 1);
    // fan-out re-triggered
    assert_eq!(Env::bodies(&env.lds).await.len(), 2);
    assert_eq!(Env::bodies(&env.se).await.len(), 2);

    let v2 = sample_package("2.0", "extra: true\n");
    env.mosaic_serves(NAME, v2.clone()).await;
    s3.reset_counters();
    let changed = sync.sync(NAME).await.unwrap();
    assert!(changed.uploaded);
    if s3.is_in_process() {
        let side = sidecar_bytes(&changed.definition.content.store, &s3).await;
        assert_eq!(s3.put_body_bytes(), Some(v2.len() as u64 + side));
    }
    assert_record(&changed, &v2, "2.0", 2);
    let last = Env::bodies(&env.lds).await.pop().unwrap();
    assert_eq!(last["version"], 2);
    assert_eq!(last["sha256"], sha256(&v2));
}

#[tokio::test]
async fn bucket_per_lablet_layout_creates_the_bucket() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    let config = s3_config(env.config(None), &s3)
        .with_location(cfgsync_lablet::config::BUCKET_PER_LABLET_LOCATION);
    let sync = LabletSync::from_config(config).unwrap();
    if s3.is_in_process() {
        assert_eq!(s3.bucket_exists("lablet-lab-1-1-1"), Some(false));
    }
    let report = sync.sync(NAME).await.unwrap();
    let loc = &report.definition.content.store;
    assert_eq!(
        (loc.bucket.as_str(), loc.key.as_str()),
        ("lablet-lab-1-1-1", "package.zip")
    );
    let store = s3.store_for_bucket("lablet-lab-1-1-1").unwrap();
    let bytes = store
        .get(&Path::from("package.zip"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), package);
    assert_eq!(Env::bodies(&env.se).await[0]["bucket"], "lablet-lab-1-1-1");
    // a second sync finds the bucket and the object
    assert!(!sync.sync(NAME).await.unwrap().uploaded);
}

/// Nothing was stored, nothing recorded, nobody notified. (The storage key's
/// claim and released lease, shared state under `_claims/` and `_leases/`,
/// are not content.)
async fn assert_unchanged(sync: &LabletSync, s3: &S3Harness, env: &Env) {
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), None);
    assert!(
        sync.catalog()
            .list(&CatalogFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    let prefix = (!s3.prefix.is_empty()).then(|| Path::from(s3.prefix.as_str()));
    let listed: Vec<_> =
        futures::StreamExt::collect::<Vec<_>>(s3.store.list(prefix.as_ref())).await;
    // content, and the retry queue an S3 store keeps under `_queue/`
    let changed: Vec<_> = listed
        .iter()
        .map(|meta| meta.as_ref().unwrap().location.to_string())
        .filter(|key| key.contains("_queue/") || !key.split('/').any(|part| part.starts_with('_')))
        .collect();
    assert!(changed.is_empty(), "store changed: {changed:?}");
    assert!(Env::bodies(&env.lds).await.is_empty());
    assert!(Env::bodies(&env.se).await.is_empty());
}

async fn s3_sync(env: &Env, s3: &S3Harness) -> LabletSync {
    LabletSync::from_config(s3_config(env.config(None), s3)).unwrap()
}

#[tokio::test]
async fn resolve_failure_is_cannot_resolve_content_and_changes_nothing() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    // resolver down (503): retried a bounded number of times
    Mock::given(method("GET"))
        .and(path(format!("/resolve/{NAME}")))
        .respond_with(ResponseTemplate::new(503))
        .mount(&env.resolver)
        .await;
    let sync = s3_sync(&env, &s3).await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Resolve));
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot resolve content for lablet {NAME}")),
        "{msg}"
    );
    assert!(msg.contains("503"), "{msg}");
    assert_eq!(env.resolver.received_requests().await.unwrap().len(), 3);
    assert_unchanged(&sync, &s3, &env).await;

    // form name not registered (404) is not retried; an answer without
    // MOSAIC_BASE_URL is rejected
    env.resolver.reset().await;
    Mock::given(method("GET"))
        .and(path(format!("/resolve/{NAME}")))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"X": "1"})))
        .mount(&env.resolver)
        .await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert!(
        matches!(
            err,
            cfgsync_lablet::Error::Resolve {
                source: cfgsync_lablet::resolver::ResolveError::MissingVar {
                    var: "MOSAIC_BASE_URL"
                },
                ..
            }
        ),
        "{err}"
    );
    env.resolver.reset().await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert!(!err.is_retryable());
    assert_eq!(env.resolver.received_requests().await.unwrap().len(), 1);
    assert_unchanged(&sync, &s3, &env).await;
}

#[tokio::test]
async fn download_failure_is_package_not_available_and_changes_nothing() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    env.publish(NAME, sample_package("1.0", "")).await;
    env.mosaic.reset().await; // not published in Mosaic: 404
    let sync = s3_sync(&env, &s3).await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Download));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("package not available for lablet {NAME}")),
        "{msg}"
    );
    assert!(msg.contains("404"), "{msg}");
    assert_unchanged(&sync, &s3, &env).await;

    // transient 503s are retried with backoff, then the download succeeds
    let package = sample_package("1.0", "");
    env.mosaic.reset().await;
    Mock::given(method("GET"))
        .and(path(format!("/content/{NAME}/package.zip")))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&env.mosaic)
        .await;
    Mock::given(method("GET"))
        .and(path(format!("/content/{NAME}/package.zip")))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(package.clone()))
        .with_priority(2)
        .mount(&env.mosaic)
        .await;
    let report = sync.sync(NAME).await.unwrap();
    assert_eq!(
        report.definition.content.content_package_hash,
        sha256(&package)
    );
    assert_eq!(env.mosaic.received_requests().await.unwrap().len(), 3);
    drop(sync);

    // larger than the cap
    let s3 = S3Harness::start().await.unwrap();
    let env = Env::start().await;
    env.publish(NAME, sample_package("1.0", "")).await;
    let big = sample_package("1.0", &"x: y\n".repeat(10));
    env.mosaic_serves(NAME, big.clone()).await;
    let sync = LabletSync::from_config(
        s3_config(env.config(None), &s3).with_max_package_bytes(big.len() as u64 - 1),
    )
    .unwrap();
    let err = sync.sync(NAME).await.unwrap_err();
    assert!(
        matches!(
            err,
            cfgsync_lablet::Error::Download {
                source: cfgsync_lablet::mosaic::DownloadError::TooLarge { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_unchanged(&sync, &s3, &env).await;
    // no temp file left behind
    let tmp = env.data.path().join("work/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);
}

#[tokio::test]
async fn hostile_package_fails_at_inspect_and_changes_nothing() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    env.publish(NAME, b"<html><body>Sign in</body></html>".to_vec())
        .await;
    let sync = s3_sync(&env, &s3).await;
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Inspect));
    assert!(
        err.to_string()
            .starts_with(&format!("package invalid for lablet {NAME}"))
    );
    assert!(
        matches!(
            err,
            cfgsync_lablet::Error::Inspect {
                source: cfgsync_lablet::InspectError::NotAZip { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_unchanged(&sync, &s3, &env).await;
}

#[tokio::test]
async fn store_failure_is_blob_upload_failed_and_records_nothing() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    env.publish(NAME, sample_package("1.0", "")).await;
    // wrong credentials
    let mut config = s3_config(env.config(None), &s3);
    config.store.s3.secret_access_key = Some(cfgsync_lablet::Secret::new("wrong-secret"));
    let sync = LabletSync::from_config(config).unwrap();
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Store));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("blob upload failed for lablet {NAME}")),
        "{msg}"
    );
    assert_unchanged(&sync, &s3, &env).await;
}

#[tokio::test]
async fn fan_out_failure_records_stale_queues_and_the_queue_survives_a_restart() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    env.lds.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&env.lds)
        .await;
    let config = s3_config(env.config(None), &s3);
    let sync = LabletSync::from_config(config.clone()).unwrap();
    let report = sync.sync(NAME).await.unwrap();

    // stored and recorded, but stale
    let c = &report.definition.content;
    assert_eq!(c.status, SyncStatus::Stale);
    let msg = report.stale_message().unwrap();
    assert!(
        msg.starts_with("catalog synced but delivery stale"),
        "{msg}"
    );
    assert!(msg.contains("lds") && !msg.contains("se,"), "{msg}");
    let lds = c.fanout.iter().find(|t| t.target == "lds").unwrap();
    assert_eq!((lds.status, lds.attempts), (DeliveryStatus::Queued, 3));
    assert!(lds.error.as_deref().unwrap().contains("503"));
    let se = c.fanout.iter().find(|t| t.target == "se").unwrap();
    assert_eq!(se.status, DeliveryStatus::Delivered);
    assert_eq!(env.lds.received_requests().await.unwrap().len(), 3);
    assert_eq!(
        sync.catalog()
            .get(NAME)
            .await
            .unwrap()
            .unwrap()
            .content
            .status,
        SyncStatus::Stale
    );
    let got = s3
        .store
        .get_opts(
            &Path::from(c.store.key.as_str()),
            GetOptions {
                head: true,
                ..Default::default()
            },
        )
        .await;
    assert!(got.is_ok());
    let pending = sync.pending_deliveries().await.unwrap();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].target, "lds");
    assert_eq!(pending[0].body.sha256, sha256(&package));

    // restart: drop everything, reopen the same data dir
    drop(sync);
    let sync = LabletSync::from_config(config.clone()).unwrap();
    assert_eq!(sync.pending_deliveries().await.unwrap().len(), 1);

    // still down: the entry stays
    let r = sync.retry_pending().await.unwrap();
    assert_eq!((r.delivered, r.still_pending), (0, 1));

    // LDS is back: the queue drains, exactly one more delivery, record becomes synced
    env.lds.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&env.lds)
        .await;
    let r = sync.retry_pending().await.unwrap();
    assert_eq!((r.delivered, r.still_pending), (1, 0));
    let delivered = Env::bodies(&env.lds).await;
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0]["sha256"], sha256(&package));
    assert!(sync.pending_deliveries().await.unwrap().is_empty());
    let def = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(def.content.status, SyncStatus::Synced);
    assert_eq!(def.content.content_version, 1);
    // nothing left: another drain delivers nothing
    assert_eq!(sync.retry_pending().await.unwrap().delivered, 0);
    assert_eq!(Env::bodies(&env.lds).await.len(), 1);
}

#[tokio::test]
async fn queued_delivery_is_drained_by_a_later_sync_of_another_lablet() {
    let env = Env::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().join("store").display());
    env.publish(NAME, sample_package("1.0", "")).await;
    Mock::given(method("GET"))
        .and(path("/resolve/LAB-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "MOSAIC_BASE_URL": format!("{}/content/{NAME}", env.mosaic.uri()),
        })))
        .mount(&env.resolver)
        .await;
    env.se.reset().await;
    let sync = LabletSync::from_config(env.config(Some(store))).unwrap();
    // SE has no route yet: 404, queued
    let first = sync.sync(NAME).await.unwrap();
    assert_eq!(first.definition.content.status, SyncStatus::Stale);
    assert_eq!(
        env.se.received_requests().await.unwrap().len(),
        1,
        "404 is not retried"
    );
    env.se.reset().await;
    env.targets_ok().await;
    let second = sync.sync("LAB-2").await.unwrap();
    assert_eq!(second.definition.content.status, SyncStatus::Synced);
    assert!(sync.pending_deliveries().await.unwrap().is_empty());
    assert_eq!(
        sync.catalog()
            .get(NAME)
            .await
            .unwrap()
            .unwrap()
            .content
            .status,
        SyncStatus::Synced
    );
    let lablets: Vec<_> = Env::bodies(&env.se)
        .await
        .iter()
        .map(|b| b["lablet"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(lablets.len(), 2);
    assert!(lablets.contains(&NAME.to_owned()) && lablets.contains(&"LAB-2".to_owned()));
}

#[tokio::test]
async fn twenty_concurrent_syncs_of_one_lablet_are_serialized() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    // slow downloads: without the lock, the syncs would all see no object and upload
    env.mosaic_serves_after(NAME, package.clone(), Duration::from_millis(20))
        .await;
    let sync = Arc::new(s3_sync(&env, &s3).await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let sync = Arc::clone(&sync);
            tokio::spawn(async move { sync.sync(NAME).await })
        })
        .collect();
    let mut uploads = 0;
    for t in tasks {
        let report = t.await.unwrap().unwrap();
        assert_eq!(report.definition.content.content_version, 1);
        uploads += usize::from(report.uploaded);
    }
    assert_eq!(uploads, 1, "exactly one sync uploaded");
    if s3.is_in_process() {
        let def = sync.catalog().get(NAME).await.unwrap().unwrap();
        let side = sidecar_bytes(&def.content.store, &s3).await;
        assert_eq!(s3.put_body_bytes(), Some(package.len() as u64 + side));
    }
    let def = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(def.content.content_package_hash, sha256(&package));
    assert_eq!(def.content.content_version, 1);
    assert_eq!(def.content.status, SyncStatus::Synced);
    assert_eq!(Env::bodies(&env.lds).await.len(), 20);
}

#[tokio::test]
async fn embedded_catalog_file_is_shared_with_a_direct_reader_after_close() {
    let env = Env::start().await;
    env.publish(NAME, sample_package("1.0", "")).await;
    let config: LabletSyncConfig = env.config(None);
    let sync = LabletSync::from_config(config.clone()).unwrap();
    sync.sync(NAME).await.unwrap();
    drop(sync);
    let catalog = EmbeddedCatalog::open(config.data_dir.join("catalog.redb")).unwrap();
    let found = catalog
        .list(&CatalogFilter {
            upstream_instance_name: Some("mosaic-prod".to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn invalid_names_are_rejected_before_any_call() {
    let env = Env::start().await;
    let config = env.config(None);
    let stale = config.data_dir.join("tmp/package-crashed.zip.part");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, b"half a download").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    let active = config.data_dir.join("tmp/package-active.zip.part");
    std::fs::write(&active, b"being written by another process").unwrap();
    let sync = LabletSync::from_config(config).unwrap();
    assert!(
        !stale.exists(),
        "a crashed run's download is cleaned up at start"
    );
    assert!(
        active.exists(),
        "a recent download may be another process's"
    );
    for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
        let err = sync.sync(bad).await.unwrap_err();
        assert!(
            matches!(err, cfgsync_lablet::Error::InvalidName { .. }),
            "{bad}: {err}"
        );
    }
    assert!(env.resolver.received_requests().await.unwrap().is_empty());
}

#[tokio::test]
async fn record_failure_is_record_failed_after_the_bytes_are_stored() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    let cpa = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404))
        .mount(&cpa)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&cpa)
        .await;
    let sync =
        LabletSync::from_config(s3_config(env.config(None), &s3).with_cpa_url(cpa.uri())).unwrap();
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Record));
    assert!(err.is_retryable());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("record failed for lablet {NAME}")),
        "{msg}"
    );
    assert!(msg.contains("500"), "{msg}");
    // the record never points at missing bytes: the bytes are there, the record is not
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), None);
    let key = format!(
        "{}lablets/{NAME}/package.zip",
        if s3.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", s3.prefix)
        }
    );
    let bytes = s3
        .store
        .get(&Path::from(key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), package);
}

#[tokio::test]
async fn two_pipelines_sharing_a_data_dir_stand_for_two_processes() {
    // Two `LabletSync`s on one data dir share nothing in memory, like two processes:
    // they meet only in the redb files and the lock files.
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let package = sample_package("1.0", "");
    env.publish(NAME, package.clone()).await;
    env.mosaic_serves_after(NAME, package.clone(), Duration::from_millis(20))
        .await;
    Mock::given(method("GET"))
        .and(path("/resolve/LAB-2"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "MOSAIC_BASE_URL": format!("{}/content/{NAME}", env.mosaic.uri()),
        })))
        .mount(&env.resolver)
        .await;
    let config = s3_config(env.config(None), &s3);
    let a = LabletSync::from_config(config.clone()).unwrap();
    let b = LabletSync::from_config(config).unwrap();

    // the same lablet from both: serialized by the file lock, one upload
    let (ra, rb) = tokio::join!(a.sync(NAME), b.sync(NAME));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(usize::from(ra.uploaded) + usize::from(rb.uploaded), 1);
    assert_eq!(ra.definition.content.content_version, 1);
    assert_eq!(rb.definition.content.content_version, 1);

    // different lablets from both at once, and each sees the other's records
    let (r1, r2) = tokio::join!(a.sync("LAB-2"), b.sync(NAME));
    r1.unwrap();
    r2.unwrap();
    let ids: Vec<_> = b
        .catalog()
        .list(&CatalogFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(ids, ["LAB-1.1.1", "LAB-2"]);
}
