//! One behaviour suite, run against every `Catalog` implementation.
use std::sync::Arc;

use crate::common::env::FakeCpa;
use cfgsync_lablet::catalog::{
    Catalog, CatalogError, CatalogFilter, ContentSyncResult, CpaCatalog, DeliveryStatus,
    EmbeddedCatalog, ObjectCatalog, SyncStatus, TargetResult,
};
use cfgsync_lablet::store::StoreLocation;
use cfgsync_test_support::S3Harness;

fn result(lablet: &str, hash: &str, instance: &str, status: SyncStatus) -> ContentSyncResult {
    ContentSyncResult {
        lablet: lablet.to_owned(),
        content_package_hash: hash.to_owned(),
        content_package_size: 123,
        upstream_version: Some("1.2".to_owned()),
        upstream_date_published: Some("2026-02-25".to_owned()),
        upstream_instance_name: Some(instance.to_owned()),
        upstream_form_id: Some("F-1".to_owned()),
        grade_xml_path: Some("grade.xml".to_owned()),
        cml_yaml_path: "cml.yaml".to_owned(),
        cml_yaml_content: "a: 1\n".to_owned(),
        cml_yaml_hash: "c0ffee".to_owned(),
        devices_json: Some("[]".to_owned()),
        synced_at: "2026-11-23T12:00:00.000Z".to_owned(),
        status,
        store: StoreLocation {
            bucket: "b".to_owned(),
            key: format!("lablets/{lablet}/package.zip"),
            url: format!("s3://b/lablets/{lablet}/package.zip"),
        },
        fanout: vec![TargetResult {
            target: "lds".to_owned(),
            status: DeliveryStatus::Delivered,
            attempts: 1,
            error: None,
        }],
        content_version: 99, // a proposal; the catalog decides
    }
}

async fn behaviour_suite(catalog: Arc<dyn Catalog>) {
    // the change marker: present, moved by every record, not by reads
    let empty = catalog.marker().await.unwrap().expect("a change marker");
    assert_eq!(catalog.get("LAB-1").await.unwrap(), None);
    assert!(
        catalog
            .list(&CatalogFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // first record: version 1, every field kept
    let r1 = result("LAB-1", "h1", "mosaic-a", SyncStatus::Synced);
    let d1 = catalog.record("LAB-1", &r1).await.unwrap();
    assert_eq!(d1.id, "LAB-1");
    assert_eq!(d1.content.content_version, 1);
    let mut expected = r1.clone();
    expected.content_version = 1;
    assert_eq!(d1.content, expected);
    assert_eq!(catalog.get("LAB-1").await.unwrap(), Some(d1.clone()));
    let after_first = catalog.marker().await.unwrap().unwrap();
    assert_ne!(after_first, empty, "a record moves the marker");
    catalog.list(&CatalogFilter::default()).await.unwrap();
    assert_eq!(
        catalog.marker().await.unwrap().unwrap(),
        after_first,
        "reads do not"
    );

    // same hash: version kept, other fields updated
    let mut r1b = r1.clone();
    r1b.synced_at = "2026-11-23T13:00:00.000Z".to_owned();
    let d1b = catalog.record("LAB-1", &r1b).await.unwrap();
    assert_eq!(d1b.content.content_version, 1);
    assert_eq!(d1b.content.synced_at, r1b.synced_at);
    assert_ne!(
        catalog.marker().await.unwrap().unwrap(),
        after_first,
        "a record of the same package moves it too"
    );

    // new hash: version bumped
    let d2 = catalog
        .record(
            "LAB-1",
            &result("LAB-1", "h2", "mosaic-a", SyncStatus::Synced),
        )
        .await
        .unwrap();
    assert_eq!(d2.content.content_version, 2);
    assert_eq!(
        catalog
            .get("LAB-1")
            .await
            .unwrap()
            .unwrap()
            .content
            .content_version,
        2
    );

    // queries
    catalog
        .record(
            "LAB-2",
            &result("LAB-2", "x", "mosaic-b", SyncStatus::Stale),
        )
        .await
        .unwrap();
    let all = catalog.list(&CatalogFilter::default()).await.unwrap();
    assert_eq!(
        all.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["LAB-1", "LAB-2"]
    );
    let from_a = catalog
        .list(&CatalogFilter {
            upstream_instance_name: Some("mosaic-a".to_owned()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        from_a.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["LAB-1"]
    );
    let stale = catalog
        .list(&CatalogFilter {
            status: Some(SyncStatus::Stale),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        stale.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["LAB-2"]
    );
}

#[tokio::test]
async fn embedded_catalog_passes_the_suite_and_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("catalog.redb");
    let catalog = Arc::new(EmbeddedCatalog::open(&path).unwrap());
    behaviour_suite(catalog.clone()).await;
    drop(catalog);
    let reopened = EmbeddedCatalog::open(&path).unwrap();
    let def = reopened.get("LAB-1").await.unwrap().unwrap();
    assert_eq!(def.content.content_version, 2);
    assert_eq!(def.content.content_package_hash, "h2");
}

#[tokio::test]
async fn object_catalog_passes_the_suite_and_concurrent_writers_lose_no_version_bump() {
    let s3 = S3Harness::start().await.unwrap();
    let prefix = format!("{}/_catalog", s3.prefix);
    let catalog = Arc::new(ObjectCatalog::new(s3.store.clone(), &prefix));
    let empty = catalog.marker().await.unwrap();
    behaviour_suite(catalog.clone()).await;
    let after_suite = catalog.marker().await.unwrap();
    assert_ne!(after_suite, empty, "writes change the marker");
    assert_eq!(catalog.marker().await.unwrap(), after_suite, "reads do not");

    // a second replica: its own client, the same bucket and prefix
    let replica = Arc::new(ObjectCatalog::new(
        s3.store_for_bucket(&s3.bucket).unwrap(),
        &prefix,
    ));
    assert_eq!(replica.marker().await.unwrap(), after_suite);
    // eight new packages recorded at once from both: every bump counts
    let writes = (0..8).map(|i| {
        let writer = if i % 2 == 0 { &catalog } else { &replica };
        let r = result(
            "LAB-1",
            &format!("race-{i}"),
            "mosaic-a",
            SyncStatus::Synced,
        );
        async move { writer.record("LAB-1", &r).await.unwrap() }
    });
    let mut versions: Vec<u64> = futures::future::join_all(writes)
        .await
        .iter()
        .map(|d| d.content.content_version)
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (3..=10).collect::<Vec<_>>());
    let def = replica.get("LAB-1").await.unwrap().unwrap();
    assert_eq!(def.content.content_version, 10);
    assert_ne!(catalog.marker().await.unwrap(), after_suite);

    // every compare-and-swap loses: a typed, retryable error, nothing written
    if s3.is_in_process() {
        s3.faults().conflict_conditional_puts();
        let err = catalog
            .record(
                "LAB-1",
                &result("LAB-1", "lost", "mosaic-a", SyncStatus::Synced),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, CatalogError::Contended { .. }), "{err}");
        assert!(err.is_retryable());
        s3.faults().clear();
        assert_eq!(replica.get("LAB-1").await.unwrap(), Some(def));
    }
}

#[tokio::test]
async fn cpa_catalog_passes_the_suite() {
    let (_fake, server) = FakeCpa::start().await;
    let http = cfgsync_test_support::http_client();
    // the marker lists CPA at every call here (no poll interval)
    let catalog = CpaCatalog::new(http, server.uri()).with_poll_interval(std::time::Duration::ZERO);
    behaviour_suite(Arc::new(catalog)).await;
    // the record call is the documented contract
    let posts: Vec<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.method.as_str() == "POST")
        .map(|r| r.url.path().to_owned())
        .collect();
    assert!(
        posts
            .iter()
            .all(|p| p.starts_with("/api/internal/lablet-definitions/")
                && p.ends_with("/content-synced"))
    );
    assert_eq!(posts.len(), 4);
}

#[tokio::test]
async fn cpa_catalog_reports_server_errors_after_bounded_retries() {
    use wiremock::{Mock, MockServer, ResponseTemplate, matchers::any};
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let catalog = CpaCatalog::new(cfgsync_test_support::http_client(), server.uri()).with_retry(
        cfgsync_lablet::RetryPolicy::default()
            .with_max_attempts(2)
            .with_backoff(
                std::time::Duration::from_millis(1),
                std::time::Duration::from_millis(2),
            ),
    );
    let err = catalog.get("LAB-1").await.unwrap_err();
    assert!(err.is_retryable());
    assert!(
        matches!(
            err,
            cfgsync_lablet::catalog::CatalogError::Status { status: 503, .. }
        ),
        "{err}"
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
}
