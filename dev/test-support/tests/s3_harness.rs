//! The in-process S3 server answers like S3: real objects, counted uploads,
//! conditional writes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cfgsync_test_support::S3Harness;
use object_store::{ObjectStoreExt, PutMode, PutOptions, path::Path};

#[tokio::test]
async fn harness_serves_real_s3_and_counts_uploaded_bytes() {
    let s3 = S3Harness::start().await.unwrap();
    let path = Path::from("dir/object.txt");
    s3.store.put(&path, "hello world".into()).await.unwrap();
    let got = s3.store.get(&path).await.unwrap().bytes().await.unwrap();
    assert_eq!(&got[..], b"hello world");
    if s3.is_in_process() {
        assert_eq!(s3.put_body_bytes(), Some(11));
        assert_eq!(s3.put_requests(), Some(1));
    }

    // conditional create on an existing key is refused by the server
    let err = s3
        .store
        .put_opts(&path, "x".into(), PutOptions::from(PutMode::Create))
        .await
        .unwrap_err();
    assert!(
        matches!(err, object_store::Error::AlreadyExists { .. }),
        "{err:?}"
    );

    if s3.is_in_process() {
        s3.reset_counters();
        s3.store.head(&path).await.unwrap();
        assert_eq!(s3.put_body_bytes(), Some(0));
        assert_eq!(s3.requests(), Some(1));
    }
}
