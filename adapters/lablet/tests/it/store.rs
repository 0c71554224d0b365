//! `PackageStore` on both schemes: a failed upload leaves the previous object intact
//! and nothing half-written.
use crate::common::env::s3_config;
use crate::common::*;
use cfgsync_lablet::LabletSyncConfig;
use cfgsync_lablet::store::{PackageStore, StoreError};
use cfgsync_test_support::S3Harness;
use object_store::{ObjectStoreExt, path::Path};

async fn failed_upload_keeps_previous_object(store: &PackageStore) {
    let dir = tempfile::tempdir().unwrap();
    let loc = store
        .location(cfgsync_lablet::config::DEFAULT_LOCATION, "LAB-7")
        .unwrap();
    let v1 = sample_package("1.0", "");
    let v1_path = dir.path().join("v1.zip");
    std::fs::write(&v1_path, &v1).unwrap();
    let first = store
        .upload("LAB-7", &loc, &v1_path, &sha256(&v1))
        .await
        .unwrap();
    assert!(first.uploaded);
    assert_eq!(first.bytes, v1.len() as u64);
    assert_eq!(store.stored_sha256(&loc).await.unwrap(), Some(sha256(&v1)));
    // same SHA-256: skipped
    let again = store
        .upload("LAB-7", &loc, &v1_path, &sha256(&v1))
        .await
        .unwrap();
    assert_eq!((again.uploaded, again.bytes), (false, 0));

    // a source that fails while being read (a directory: open works, read fails),
    // after the multipart upload was started
    let err = store
        .upload("LAB-7", &loc, dir.path(), "feedbeef")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert_ne!(
        store.stored_sha256(&loc).await.unwrap().as_deref(),
        Some("feedbeef")
    );
}

#[tokio::test]
async fn file_store_failed_upload_leaves_no_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let config = LabletSyncConfig::default().with_store(format!("file://{}", root.display()));
    let store = PackageStore::from_config(&config, cfgsync_test_support::http_client()).unwrap();
    failed_upload_keeps_previous_object(&store).await;
    // the old bytes are still there, and nothing else (no staging file, no sidecar
    // vouching for them: the next sync re-uploads)
    let pkg_dir = root.join("lablets/LAB-7");
    let mut names: Vec<String> = std::fs::read_dir(&pkg_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["package.zip"]);
    assert_eq!(
        std::fs::read(pkg_dir.join("package.zip")).unwrap(),
        sample_package("1.0", "")
    );
}

#[tokio::test]
async fn s3_store_failed_upload_leaves_previous_object_intact() {
    let s3 = S3Harness::start().await.unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = s3_config(LabletSyncConfig::default().with_data_dir(data.path()), &s3);
    let store = PackageStore::from_config(&config, cfgsync_test_support::http_client()).unwrap();
    failed_upload_keeps_previous_object(&store).await;
    let loc = store
        .location(cfgsync_lablet::config::DEFAULT_LOCATION, "LAB-7")
        .unwrap();
    assert_eq!(
        store.stored_sha256(&loc).await.unwrap(),
        Some(sha256(&sample_package("1.0", "")))
    );
    let bytes = s3
        .store
        .get(&Path::from(loc.key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), sample_package("1.0", ""));
}

#[test]
fn location_templates_validate_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let config = LabletSyncConfig::default()
        .with_store(format!("file://{}", dir.path().join("s").display()));
    let store = PackageStore::from_config(&config, cfgsync_test_support::http_client()).unwrap();
    // bucket per lablet is S3 only
    let err = store
        .location(cfgsync_lablet::config::BUCKET_PER_LABLET_LOCATION, "LAB-1")
        .unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    let err = store.location("{bucket}/{nope}", "LAB-1").unwrap_err();
    assert!(matches!(err, StoreError::Config(_)), "{err}");
    let bad = LabletSyncConfig::default().with_store("ftp://x");
    assert!(matches!(
        PackageStore::from_config(&bad, cfgsync_test_support::http_client()).unwrap_err(),
        StoreError::Config(_)
    ));
}
