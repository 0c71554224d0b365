//! Many (50, or `CFGSYNC_LABLET_STRESS_LABLETS`) different lablets synced at once, by two pipelines sharing one data dir
//! (standing for two processes), on the file store and on S3: all succeed and
//! every record matches its stored bytes. (20 concurrent syncs of ONE lablet are
//! in `sync.rs`: `twenty_concurrent_syncs_of_one_lablet_are_serialized`.)
use std::collections::BTreeSet;
use std::sync::Arc;

use crate::common::consistency::assert_records_match_bytes;
use crate::common::env::{Env, s3_config};
use crate::common::*;
use cfgsync_lablet::catalog::SyncStatus;
use cfgsync_lablet::store::SIDECAR_SUFFIX;
use cfgsync_lablet::{LabletSync, LabletSyncConfig};
use cfgsync_test_support::S3Harness;
use object_store::{ObjectStoreExt, path::Path};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

/// Lablets synced at once; `CFGSYNC_LABLET_STRESS_LABLETS` raises it for a long run.
fn lablet_count() -> usize {
    std::env::var("CFGSYNC_LABLET_STRESS_LABLETS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

async fn publish_many(env: &Env) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..lablet_count() {
        let name = format!("LAB-{i}.0.1");
        let package = sample_package(&format!("{i}.0"), &format!("i: {i}\n"));
        Mock::given(method("GET"))
            .and(path(format!("/resolve/{name}")))
            .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                "MOSAIC_BASE_URL": format!("{}/content/{name}", env.mosaic.uri()),
            })))
            .mount(&env.resolver)
            .await;
        Mock::given(method("GET"))
            .and(path(format!("/content/{name}/package.zip")))
            .respond_with(ResponseTemplate::new(200).set_body_bytes(package.clone()))
            .mount(&env.mosaic)
            .await;
        out.push((name, package));
    }
    out
}

async fn fifty_lablets_in_parallel(config: LabletSyncConfig, env: &Env, s3: Option<&S3Harness>) {
    let lablets = publish_many(env).await;
    let a = Arc::new(LabletSync::from_config(config.clone()).unwrap());
    let b = Arc::new(LabletSync::from_config(config).unwrap());
    let tasks: Vec<_> = lablets
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let sync = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let name = name.clone();
            tokio::spawn(async move { sync.sync(&name).await })
        })
        .collect();
    for (task, (name, package)) in tasks.into_iter().zip(&lablets) {
        let report = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = &report.definition.content;
        assert!(report.uploaded, "{name}");
        assert_eq!(c.lablet, *name);
        assert_eq!(c.content_package_hash, sha256(package), "{name}");
        assert_eq!(c.content_version, 1, "{name}");
        assert_eq!(c.status, SyncStatus::Synced, "{name}");
    }
    // every record, read back by either pipeline, matches its bytes
    assert_eq!(
        assert_records_match_bytes(&*a.catalog(), s3).await,
        lablet_count()
    );
    assert_eq!(
        assert_records_match_bytes(&*b.catalog(), s3).await,
        lablet_count()
    );
    for (name, package) in &lablets {
        let def = a.catalog().get(name).await.unwrap().unwrap();
        assert_eq!(def.content.content_package_hash, sha256(package), "{name}");
    }
    // each target heard of each lablet exactly once
    for server in [&env.lds, &env.se] {
        let bodies = Env::bodies(server).await;
        assert_eq!(bodies.len(), lablet_count());
        let names: BTreeSet<_> = bodies
            .iter()
            .map(|b| b["lablet"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(names.len(), lablet_count());
    }
    assert!(a.pending_deliveries().await.unwrap().is_empty());
    if let Some(s3) = s3.filter(|s| s.is_in_process()) {
        let total: u64 = lablets.iter().map(|(_, p)| p.len() as u64).sum();
        // plus one digest sidecar (KEY.sha256.json) per package
        let mut sidecars = 0;
        for (name, _) in &lablets {
            let def = a.catalog().get(name).await.unwrap().unwrap();
            let side = format!("{}{}", def.content.store.key, SIDECAR_SUFFIX);
            sidecars += s3.store.head(&Path::from(side)).await.unwrap().size;
        }
        assert_eq!(
            s3.put_body_bytes(),
            Some(total + sidecars),
            "each package uploaded once"
        );
    }
}

#[tokio::test]
async fn fifty_lablets_in_parallel_on_the_file_store() {
    let env = Env::start().await;
    let config = env.config(None);
    fifty_lablets_in_parallel(config, &env, None).await;
}

#[tokio::test]
async fn fifty_lablets_in_parallel_on_s3() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let config = s3_config(env.config(None), &s3);
    fifty_lablets_in_parallel(config, &env, Some(&s3)).await;
}
