//! The CPA contract as the seed defines it (ADR-025): CPA guarantees only
//! `POST …/lablet-definitions/{id}/content-synced` and owns the version
//! auto-increment; reading a definition back is optional, and a read-back
//! that carries fields we do not know, or lacks some of ours, still works.
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::common::env::Env;
use crate::common::*;
use cfgsync_lablet::LabletSync;
use serde_json::json;
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

const NAME: &str = "LAB-1.1.1";
const RECORD: &str = "/api/internal/lablet-definitions/LAB-1.1.1/content-synced";

/// CPA's own numbering: a new package hash takes the next number, starting
/// far from ours so the test tells them apart.
#[derive(Clone, Default)]
struct CpaNumbering {
    next: Arc<AtomicU64>,
    last: Arc<Mutex<Option<(String, u64)>>>,
}

impl CpaNumbering {
    fn version_for(&self, hash: &str) -> u64 {
        let mut last = self.last.lock().unwrap();
        match last.as_ref() {
            Some((h, v)) if h == hash => *v,
            _ => {
                let v = 41 + self.next.fetch_add(1, Ordering::SeqCst);
                *last = Some((hash.to_owned(), v));
                v
            }
        }
    }
}

/// POST answers CPA's own shape: its version, a field of its own, none of ours.
impl Respond for CpaNumbering {
    fn respond(&self, req: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        let hash = body["content_package_hash"].as_str().unwrap();
        ResponseTemplate::new(200).set_body_json(json!({
            "content_version": self.version_for(hash),
            "aggregate_version": 17,
        }))
    }
}

/// A read-back with fields we do not know and without most of ours (no `id`,
/// no CML, no store location).
#[derive(Clone)]
struct SparseReadBack(CpaNumbering);

impl Respond for SparseReadBack {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let last = self.0.last.lock().unwrap().clone();
        match last {
            None => ResponseTemplate::new(200).set_body_json(json!({
                "name": NAME, "state": "created", "owner": {"team": "content"},
            })),
            Some((hash, version)) => ResponseTemplate::new(200).set_body_json(json!({
                "name": NAME,
                "state": "active",
                "content_package_hash": hash,
                "content_version": version,
                "owner": {"team": "content"},
                "tags": ["a", "b"],
            })),
        }
    }
}

fn lablet_sync(env: &Env, cpa: &MockServer) -> LabletSync {
    LabletSync::from_config(env.config(None).with_cpa_url(cpa.uri())).unwrap()
}

/// Every request CPA got, as `METHOD path`.
async fn calls(cpa: &MockServer) -> Vec<String> {
    cpa.received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect()
}

#[tokio::test]
async fn a_cpa_with_only_the_record_route_syncs_records_once_and_versions_from_our_last_record() {
    let env = Env::start().await;
    let cpa = MockServer::start().await;
    // the seed's one route, answered with an empty body; nothing else exists
    Mock::given(method("POST"))
        .and(path(RECORD))
        .respond_with(ResponseTemplate::new(200))
        .expect(2)
        .mount(&cpa)
        .await;
    let v1 = sample_package("1.0", "");
    let v2 = sample_package("2.0", "v: 2\n");
    env.publish(NAME, v1.clone()).await;
    let sync = lablet_sync(&env, &cpa);

    let first = sync.sync(NAME).await.unwrap().definition;
    assert_eq!(first.content.content_package_hash, sha256(&v1));
    assert_eq!(first.content.content_version, 1);
    // nodes are served from our last known record: CPA cannot be read back
    let known = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(known, first);

    env.mosaic_serves(NAME, v2.clone()).await;
    let second = sync.sync(NAME).await.unwrap().definition;
    assert_eq!(second.content.content_version, 2);
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), Some(second));

    // nothing kept, nothing re-posted by a drain
    assert!(sync.pending_records().await.unwrap().is_empty());
    let report = sync.retry_pending().await.unwrap();
    assert_eq!((report.recorded, report.records_pending), (0, 0));
    assert!(!report.anything_pending());
    let posts = calls(&cpa).await;
    assert_eq!(
        posts.iter().filter(|c| c.starts_with("POST")).count(),
        2,
        "{posts:?}"
    );
    drop(sync);

    // the binary: sync exits 0 once the record landed, retry exits 0 and posts nothing
    let bin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lablet-sync"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LABLET_DATA_DIR", env.data.path().join("work"))
            .env("LABLET_RESOLVER_URL", env.resolver.uri())
            .env("LABLET_LDS_URL", env.lds.uri())
            .env("LABLET_SE_URL", env.se.uri())
            .env("LABLET_CATALOG", "cpa")
            .env("LABLET_CPA_URL", cpa.uri())
            .env("LABLET_RETRY_ATTEMPTS", "1")
            .args(args)
            .output()
            .unwrap()
    };
    cpa.reset().await;
    Mock::given(method("POST"))
        .and(path(RECORD))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&cpa)
        .await;
    let v3 = sample_package("3.0", "v: 3\n");
    env.mosaic_serves(NAME, v3).await;
    let out = bin(&["sync", NAME, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let def: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(def["content_version"], 3);
    let out = bin(&["retry"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = bin(&["catalog", "show", NAME]);
    assert_eq!(out.status.code(), Some(0));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["content_version"], 3);
}

#[tokio::test]
async fn versions_are_cpas_and_a_sparse_read_back_with_unknown_fields_decodes() {
    let env = Env::start().await;
    let cpa = MockServer::start().await;
    let numbering = CpaNumbering::default();
    Mock::given(method("POST"))
        .and(path(RECORD))
        .respond_with(numbering.clone())
        .expect(2)
        .mount(&cpa)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/internal/lablet-definitions/LAB-1.1.1"))
        .respond_with(SparseReadBack(numbering.clone()))
        .mount(&cpa)
        .await;
    // no listing: 405, as a CPA without that route answers
    Mock::given(method("GET"))
        .and(path_regex("^/api/internal/lablet-definitions/?$"))
        .respond_with(ResponseTemplate::new(405))
        .mount(&cpa)
        .await;
    let v1 = sample_package("1.0", "");
    let v2 = sample_package("2.0", "v: 2\n");
    env.publish(NAME, v1.clone()).await;
    let sync = lablet_sync(&env, &cpa);

    // before any sync the read-back is a definition without a sync record
    assert_eq!(sync.catalog().get(NAME).await.unwrap(), None);

    let first = sync.sync(NAME).await.unwrap().definition;
    assert_eq!(first.content.content_version, 41, "CPA's number");
    let read = sync.catalog().get(NAME).await.unwrap().unwrap();
    assert_eq!(read.id, NAME);
    assert_eq!(read.content.content_version, 41);
    assert_eq!(
        read.content.cml_yaml_content,
        first.content.cml_yaml_content
    );

    // a re-sync of the same package: CPA keeps its number, and so do we
    let again = sync.sync(NAME).await.unwrap().definition;
    assert_eq!(again.content.content_version, 41);
    env.mosaic_serves(NAME, v2.clone()).await;
    // (the re-sync above was the second POST; wiremock's expect(2) would
    // fail on a third, so the new package goes to a fresh mock below)
    cpa.reset().await;
    Mock::given(method("POST"))
        .and(path(RECORD))
        .respond_with(numbering.clone())
        .expect(1)
        .mount(&cpa)
        .await;
    Mock::given(method("GET"))
        .and(path("/api/internal/lablet-definitions/LAB-1.1.1"))
        .respond_with(SparseReadBack(numbering.clone()))
        .mount(&cpa)
        .await;
    let second = sync.sync(NAME).await.unwrap().definition;
    assert_eq!(second.content.content_version, 42, "CPA's next number");
    assert_eq!(second.content.content_package_hash, sha256(&v2));
    let listed = sync.catalog().list(&Default::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].content.content_version, 42);

    let report = sync.retry_pending().await.unwrap();
    assert_eq!((report.recorded, report.records_pending), (0, 0));
    assert!(sync.pending_records().await.unwrap().is_empty());
}

/// A CPA whose record answer is cut off: `200` with a `Content-Length` it
/// never fills, then the connection closes; every GET is `404`. Counts POSTs.
async fn cpa_cutting_record_answers() -> (String, Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posts = Arc::new(AtomicU64::new(0));
    let counted = posts.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                // the request head and its body (Content-Length)
                loop {
                    let Ok(n) = sock.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length = text[..end]
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let answer: &[u8] = if seen.starts_with(b"POST") {
                    counted.fetch_add(1, Ordering::SeqCst);
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"content_ver"
                } else {
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
                };
                let _ = sock.write_all(answer).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, posts)
}

#[tokio::test]
async fn a_record_answered_2xx_with_a_cut_off_body_landed_and_is_not_posted_again() {
    let env = Env::start().await;
    env.publish(NAME, sample_package("1.0", "")).await;
    let (url, posts) = cpa_cutting_record_answers().await;
    let sync = LabletSync::from_config(env.config(None).with_cpa_url(url)).unwrap();
    let def = sync.sync(NAME).await.unwrap().definition;
    assert_eq!(def.content.content_version, 1);
    assert!(sync.pending_records().await.unwrap().is_empty());
    let report = sync.retry_pending().await.unwrap();
    assert_eq!((report.recorded, report.records_pending), (0, 0));
    assert_eq!(posts.load(Ordering::SeqCst), 1, "posted once, not retried");
}
