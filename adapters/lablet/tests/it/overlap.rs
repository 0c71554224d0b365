//! The overlapped S3 sync: the package is uploaded while it downloads, the upload
//! is completed only after inspect accepted the package and aborted on every
//! other way out, the digest lives in the `KEY.sha256.json` sidecar, and an
//! unchanged re-sync uploads nothing (objects stored by older versions, with the
//! digest in their metadata, included).
use std::sync::Mutex;
use std::time::Duration;

use crate::common::env::{Env, s3_config};
use crate::common::*;
use cfgsync_lablet::store::{SHA256_METADATA, SIDECAR_SUFFIX};
use cfgsync_lablet::{LabletSync, LabletSyncConfig, RetryPolicy, Stage};
use cfgsync_test_support::S3Harness;
use object_store::{
    Attribute, AttributeValue, Attributes, ObjectStore, ObjectStoreExt, PutOptions, path::Path,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const NAME: &str = "LAB-1.1.1";
/// Where the default location template puts `NAME`'s package.
const KEY: &str = "lablets/LAB-1.1.1/package.zip";

async fn start() -> Option<(Env, S3Harness)> {
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("!!! the overlap tests count requests of the in-process S3 server: skipped !!!");
        return None;
    }
    Some((Env::start().await, s3))
}

fn config(env: &Env, s3: &S3Harness) -> LabletSyncConfig {
    let mut config = s3_config(env.config(None), s3);
    // s3s-fs in a debug build may take over a second to take an 8 MiB part
    config.http.read_timeout_secs = 30;
    config
}

/// Mosaic serves `bytes` for `NAME` with `etag`.
async fn mosaic_serves_tagged(env: &Env, bytes: Vec<u8>, etag: &str) {
    env.mosaic.reset().await;
    Mock::given(method("GET"))
        .and(path(format!("/content/{NAME}/package.zip")))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_bytes(bytes)
                .insert_header("etag", etag),
        )
        .mount(&env.mosaic)
        .await;
}

/// Runs a sync and tells whether its upload overlapped the download: some
/// bytes were handed to the store before the download's last progress report.
async fn sync_watched(
    sync: &LabletSync,
) -> (cfgsync_lablet::Result<cfgsync_lablet::SyncReport>, bool) {
    let events: Mutex<Vec<Stage>> = Mutex::new(Vec::new());
    let on_bytes = |stage: Stage, done: u64, _total: Option<u64>| {
        if done > 0 {
            events.lock().unwrap().push(stage);
        }
    };
    let result = sync.sync_observed(NAME, &|_| {}, &on_bytes).await;
    let events = events.into_inner().unwrap();
    let last_download = events.iter().rposition(|s| *s == Stage::Download);
    let first_store = events.iter().position(|s| *s == Stage::Store);
    let overlapped = matches!((first_store, last_download), (Some(s), Some(d)) if s < d);
    (result, overlapped)
}

async fn object(s3: &S3Harness, key: &str) -> Option<Vec<u8>> {
    match s3.store.get(&Path::from(key)).await {
        Ok(got) => Some(got.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("get {key}: {e}"),
    }
}

async fn sidecar(s3: &S3Harness) -> Option<serde_json::Value> {
    let bytes = object(s3, &format!("{KEY}{SIDECAR_SUFFIX}")).await?;
    Some(serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test]
async fn overlapped_upload_stores_the_download_byte_for_byte_with_its_sidecar_and_resync_uploads_nothing()
 {
    let Some((env, s3)) = start().await else {
        return;
    };
    // 13 MiB: two 8 MiB parts, and after the first is handed to the store
    // 5 MiB still to download — more than the feed channel can hold (8 chunks
    // of at most a few hundred KiB), so the download's last progress report
    // comes after it
    let v1 = big_package(13, 3);
    env.publish(NAME, v1.clone()).await;
    mosaic_serves_tagged(&env, v1.clone(), "\"v1\"").await;
    let sync = LabletSync::from_config(config(&env, &s3)).unwrap();

    // first sync: nothing stored, so the parts go up while the download runs
    let (report, overlapped) = sync_watched(&sync).await;
    let report = report.unwrap();
    assert!(overlapped, "the upload waited for the whole download");
    assert_eq!(
        env.mosaic.received_requests().await.unwrap().len(),
        1,
        "inspect read only what the overlapped download kept"
    );
    assert!(report.uploaded);
    assert_eq!(report.uploaded_bytes, v1.len() as u64);
    assert!(s3.upload_parts().unwrap() >= 2, "13 MiB in 8 MiB parts");
    assert_eq!(s3.completed_uploads(), Some(1));
    assert_eq!(s3.open_uploads(), Some(0));
    assert_eq!(object(&s3, KEY).await.as_deref(), Some(v1.as_slice()));
    assert_eq!(report.definition.content.content_package_hash, sha256(&v1));

    // the digest is in the sidecar, naming the object's ETag and Mosaic's
    let head = s3.store.head(&Path::from(KEY)).await.unwrap();
    let side = sidecar(&s3).await.expect("no sidecar");
    assert_eq!(side["sha256"], sha256(&v1));
    assert_eq!(side["size"], v1.len() as u64);
    assert_eq!(side["object_etag"].as_str(), head.e_tag.as_deref());
    assert_eq!(side["upstream_etag"], "\"v1\"");
    let attrs = s3.store.get(&Path::from(KEY)).await.unwrap().attributes;
    assert_eq!(
        attrs
            .get(&Attribute::Metadata(SHA256_METADATA.into()))
            .map(|v| v.as_ref()),
        Some("sidecar"),
        "the object's metadata points at the sidecar"
    );

    // unchanged re-sync (same ETag, same length): downloaded, compared, nothing sent
    s3.reset_counters();
    let (report, overlapped) = sync_watched(&sync).await;
    let report = report.unwrap();
    assert!(!report.uploaded && !overlapped);
    assert_eq!(report.uploaded_bytes, 0);
    assert_eq!(
        s3.put_body_bytes(),
        Some(0),
        "an unchanged re-sync sent bytes"
    );
    assert_eq!(s3.upload_parts(), Some(0));

    // same length, another ETag: known changed, so overlapped again
    let mut v2 = v1.clone();
    let at = v2.len() / 2;
    v2[at] ^= 0xff;
    mosaic_serves_tagged(&env, v2.clone(), "\"v2\"").await;
    let (report, overlapped) = sync_watched(&sync).await;
    let report = report.unwrap();
    assert!(overlapped && report.uploaded);
    assert_eq!(object(&s3, KEY).await.as_deref(), Some(v2.as_slice()));
    assert_eq!(sidecar(&s3).await.unwrap()["sha256"], sha256(&v2));
    assert_eq!(s3.open_uploads(), Some(0));

    // another ETag on the same bytes: the parts go up, but the stored digest
    // matches before completion, so the upload is aborted and nothing changes
    mosaic_serves_tagged(&env, v2.clone(), "\"v2-again\"").await;
    s3.reset_counters();
    let (report, overlapped) = sync_watched(&sync).await;
    let report = report.unwrap();
    assert!(overlapped && !report.uploaded);
    assert_eq!(s3.completed_uploads(), Some(0));
    assert_eq!(s3.aborted_uploads(), Some(1));
    assert_eq!(s3.open_uploads(), Some(0));
    assert_eq!(object(&s3, KEY).await.as_deref(), Some(v2.as_slice()));
}

#[tokio::test]
async fn inspect_failure_during_an_overlapped_upload_leaves_no_object_and_no_open_upload() {
    let Some((env, s3)) = start().await else {
        return;
    };
    // 13 MiB that are no zip: parts go up during the download, inspect refuses
    let mut junk = big_package(13, 5);
    let eocd = junk.len() - 22;
    junk.truncate(eocd);
    env.publish(NAME, junk).await;
    let sync = LabletSync::from_config(config(&env, &s3)).unwrap();
    let (result, overlapped) = sync_watched(&sync).await;
    let err = result.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Inspect), "{err}");
    assert!(overlapped, "no part went up during the download");
    assert!(s3.upload_parts().unwrap() >= 2);
    assert_eq!(s3.completed_uploads(), Some(0));
    assert_eq!(s3.aborted_uploads(), Some(1));
    assert_eq!(s3.open_uploads(), Some(0), "the upload was left open");
    assert_eq!(
        object(&s3, KEY).await,
        None,
        "an object appeared at the key"
    );
    assert_eq!(sidecar(&s3).await, None);
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), None);

    // a stored package stays as it was when the next one is refused
    let good = big_package(9, 6);
    env.mosaic_serves(NAME, good.clone()).await;
    assert!(sync.sync(NAME).await.unwrap().uploaded);
    let mut junk = big_package(13, 8);
    junk.truncate(junk.len() - 22);
    env.mosaic_serves(NAME, junk).await;
    s3.reset_counters();
    let err = sync.sync(NAME).await.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Inspect), "{err}");
    assert!(s3.upload_parts().unwrap() >= 2);
    assert_eq!(s3.aborted_uploads(), Some(1));
    assert_eq!(s3.open_uploads(), Some(0));
    assert_eq!(object(&s3, KEY).await.as_deref(), Some(good.as_slice()));
    assert_eq!(sidecar(&s3).await.unwrap()["sha256"], sha256(&good));
}

/// Mosaic answers `200` with the length of `body`; to its first `cut`
/// requests it sends only `sent` bytes of it and closes the connection, to the
/// others all of it.
fn cut_server(body: Vec<u8>, sent: usize, cut: usize) -> (String, tokio::task::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let task = tokio::spawn(async move {
        let mut served = 0usize;
        while let Ok((mut sock, _)) = listener.accept().await {
            let body = body.clone();
            let end = if served < cut { sent } else { body.len() };
            served += 1;
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/zip\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(&body[..end]).await;
                let _ = sock.flush().await;
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_download_cut_mid_stream_aborts_the_overlapped_upload() {
    let Some((env, s3)) = start().await else {
        return;
    };
    // cut at 18 MiB: two whole 8 MiB parts went up before it
    let package = big_package(20, 9);
    let (url, server) = cut_server(package, 18 * 1024 * 1024, usize::MAX);
    let mut config = config(&env, &s3);
    config.mosaic.download_url = format!("{url}/package.zip");
    let mut config = config.with_retry(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    config.http.read_timeout_secs = 30;
    env.publish(NAME, Vec::new()).await;
    let sync = LabletSync::from_config(config).unwrap();
    let (result, overlapped) = sync_watched(&sync).await;
    server.abort();
    let err = result.unwrap_err();
    assert_eq!(err.stage(), Some(Stage::Download), "{err}");
    assert!(overlapped, "no part went up before the cut");
    assert!(s3.upload_parts().unwrap() >= 2);
    assert_eq!(s3.completed_uploads(), Some(0));
    assert_eq!(
        s3.aborted_uploads(),
        Some(1),
        "one upload, restarted by the retry"
    );
    assert_eq!(s3.open_uploads(), Some(0), "the upload was left open");
    assert_eq!(object(&s3, KEY).await, None);
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), None);
}

/// The temp file inspect reads is written by the upload from its parts: after
/// a download retried mid-stream it must hold the second attempt's bytes,
/// including entries that sit in a middle part and the central directory at
/// the end.
#[tokio::test]
async fn a_download_retried_mid_stream_is_inspected_and_stored_from_the_second_attempt() {
    let Some((env, s3)) = start().await else {
        return;
    };
    // cml.yaml in the second 8 MiB part, between two blobs
    let package = package_with_cml_between_blobs("LAB/cml.yaml");
    let (url, server) = cut_server(package.clone(), 20 * 1024 * 1024, 1);
    let mut config = config(&env, &s3);
    config.mosaic.download_url = format!("{url}/package.zip");
    let mut config = config.with_retry(
        RetryPolicy::default()
            .with_max_attempts(2)
            .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
    );
    config.http.read_timeout_secs = 30;
    env.publish(NAME, Vec::new()).await;
    let sync = LabletSync::from_config(config).unwrap();
    let (report, overlapped) = sync_watched(&sync).await;
    server.abort();
    let report = report.unwrap();
    assert!(overlapped, "the upload waited for the whole download");
    let content = &report.definition.content;
    assert_eq!(content.cml_yaml_path, "LAB/cml.yaml");
    assert_eq!(content.cml_yaml_content, CML);
    assert_eq!(content.content_package_hash, sha256(&package));
    assert_eq!(content.content_package_size, package.len() as u64);
    assert_eq!(object(&s3, KEY).await.as_deref(), Some(package.as_slice()));
    assert_eq!(s3.completed_uploads(), Some(1));
    assert_eq!(s3.open_uploads(), Some(0));
}

/// 12 MiB of noise, `name` holding `CML`, 12 MiB of noise: stored, so
/// `cml.yaml` sits in the second 8 MiB part.
fn package_with_cml_between_blobs(name: &str) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (entry, bytes) in [
        ("LAB/a.img", noise(12 * 1024 * 1024, 3)),
        (name, CML.as_bytes().to_vec()),
        ("LAB/z.img", noise(12 * 1024 * 1024, 5)),
    ] {
        w.start_file(entry, stored).unwrap();
        w.write_all(&bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// The overlapped download keeps in its temp file only what inspect reads,
/// found from the local headers as the bytes stream by. A package whose
/// central directory disagrees with them (here: the local header of
/// `cml.yaml` names another file, so its data was not kept) makes inspect
/// read what was not kept: the sync downloads it again whole and inspect
/// judges those bytes, exactly as it judges the package on disk.
#[tokio::test]
async fn inspect_of_bytes_the_overlapped_download_did_not_keep_judges_the_whole_package() {
    let Some((env, s3)) = start().await else {
        return;
    };
    let mut package = package_with_cml_between_blobs("LAB/cml.yaml");
    let local = package
        .windows(12)
        .position(|w| w == b"LAB/cml.yaml")
        .unwrap();
    package[local..local + 12].copy_from_slice(b"LAB/cml.txt_");
    let on_disk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(on_disk.path(), &package).unwrap();
    let verdict = cfgsync_lablet::inspect_package(on_disk.path(), &Default::default());

    env.publish(NAME, package.clone()).await;
    mosaic_serves_tagged(&env, package.clone(), "\"v1\"").await;
    let sync = LabletSync::from_config(config(&env, &s3)).unwrap();
    let result = sync.sync(NAME).await;
    let gets = env.mosaic.received_requests().await.unwrap().len();
    assert_eq!(gets, 2, "downloaded once overlapped, once whole");
    match (verdict, result) {
        (Ok(info), Ok(report)) => {
            assert_eq!(
                report.definition.content.cml_yaml_content,
                info.cml_yaml_content
            );
            assert_eq!(object(&s3, KEY).await.as_deref(), Some(package.as_slice()));
        }
        (Err(expected), Err(err)) => {
            assert_eq!(err.stage(), Some(Stage::Inspect), "{err}");
            assert!(
                err.to_string().contains(&expected.to_string()),
                "{err} / {expected}"
            );
            assert_eq!(object(&s3, KEY).await, None);
            assert_eq!(s3.open_uploads(), Some(0));
        }
        (verdict, result) => panic!("inspect on disk: {verdict:?}, sync: {result:?}"),
    }
}

#[tokio::test]
async fn an_object_stored_by_an_older_version_is_skipped_by_its_metadata_digest() {
    let Some((env, s3)) = start().await else {
        return;
    };
    let v1 = sample_package("1.0", "");
    // as versions before the sidecar stored it: digest in the metadata only
    let attributes = Attributes::from_iter([(
        Attribute::Metadata(SHA256_METADATA.into()),
        AttributeValue::from(sha256(&v1)),
    )]);
    s3.store
        .put_opts(
            &Path::from(KEY),
            v1.clone().into(),
            PutOptions {
                attributes,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    env.publish(NAME, v1.clone()).await;
    let sync = LabletSync::from_config(config(&env, &s3)).unwrap();
    s3.reset_counters();
    let report = sync.sync(NAME).await.unwrap();
    assert!(!report.uploaded);
    assert_eq!(s3.put_body_bytes(), Some(0));
    assert_eq!(report.definition.content.content_package_hash, sha256(&v1));
}
