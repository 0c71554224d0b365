//! Every hostile package of the inspect corpus, pushed through a whole sync: it
//! fails at `inspect` with its own reason and changes neither store nor catalog.
use crate::common::env::{Env, s3_config};
use crate::common::*;
use cfgsync_lablet::catalog::CatalogFilter;
use cfgsync_lablet::{LabletSync, Stage};
use cfgsync_test_support::S3Harness;
use object_store::{ObjectStoreExt, path::Path};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

/// Synced once with a good package before the hostile ones arrive.
const SYNCED: &str = "LAB-SYNCED";
/// Never synced.
const FRESH: &str = "LAB-FRESH";
const MAX_ENTRIES: usize = 200;

/// (label, package, expected `InspectError::code`)
fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let good = sample_package("1.0", "");
    let zeros = vec![0u8; 4 * 1024 * 1024];
    let many: Vec<(String, Vec<u8>)> = (0..=MAX_ENTRIES)
        .map(|i| (format!("LAB/f{i}.txt"), b"x".to_vec()))
        .collect();
    let mut many_refs: Vec<(&str, &[u8])> = vec![("LAB/cml.yaml", CML.as_bytes())];
    many_refs.extend(many.iter().map(|(n, b)| (n.as_str(), b.as_slice())));
    let mut duplicate = zip_bytes(&[("cml.yaml", CML.as_bytes()), ("cmX.yaml", CML.as_bytes())]);
    assert_eq!(patch(&mut duplicate, b"cmX.yaml", b"cml.yaml"), 2);
    let mut encrypted = zip_bytes(&[("cml.yaml", CML.as_bytes())]);
    mark_encrypted(&mut encrypted);
    vec![
        (
            "zip-slip",
            zip_bytes(&[
                ("LAB/cml.yaml", CML.as_bytes()),
                ("LAB/../../evil.sh", b"x"),
            ]),
            "unsafe_name",
        ),
        (
            "zip bomb by ratio",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("big.bin", &zeros)]),
            "compression_ratio",
        ),
        (
            "zip bomb by many entries",
            zip_bytes(&many_refs),
            "too_many_entries",
        ),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        (
            "html instead of zip",
            b"<!DOCTYPE html><html><body>Sign in</body></html>".to_vec(),
            "not_a_zip",
        ),
        ("empty file", Vec::new(), "empty"),
        ("encrypted entry", encrypted, "encrypted"),
        ("symlink entry", symlink_zip(), "symlink"),
        ("duplicate names", duplicate, "duplicate_names"),
        (
            "missing cml.yaml",
            zip_bytes(&[("LAB/devices.json", DEVICES.as_bytes())]),
            "missing_cml_yaml",
        ),
        (
            "non-utf8 cml.yaml",
            zip_bytes(&[("cml.yaml", &[0x61, 0x3a, 0x20, 0xff, 0xfe, 0x0a])]),
            "not_utf8",
        ),
        (
            "invalid mosaic_meta.json",
            zip_bytes(&[
                ("cml.yaml", CML.as_bytes()),
                ("mosaic_meta.json", b"Version=1"),
            ]),
            "invalid_json",
        ),
        (
            "devices.json not json",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("devices.json", b"{nope")]),
            "invalid_json",
        ),
    ]
}

async fn serve(env: &Env, name: &str, bytes: &[u8]) {
    Mock::given(method("GET"))
        .and(path(format!("/content/{name}/package.zip")))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(bytes.to_vec()))
        .mount(&env.mosaic)
        .await;
}

async fn object(s3: &S3Harness, name: &str) -> Option<Vec<u8>> {
    let key = format!("lablets/{name}/package.zip");
    let key = if s3.prefix.is_empty() {
        key
    } else {
        format!("{}/{key}", s3.prefix)
    };
    match s3.store.get(&Path::from(key)).await {
        Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
        Err(object_store::Error::NotFound { .. }) => None,
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn hostile_packages_fail_at_inspect_and_change_neither_store_nor_catalog() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    let good = sample_package("1.0", "");
    env.publish(SYNCED, good.clone()).await;
    env.publish(FRESH, good.clone()).await; // resets Mosaic
    serve(&env, SYNCED, &good).await;
    let mut config = s3_config(env.config(None), &s3);
    config.inspect.max_entries = MAX_ENTRIES;
    let sync = LabletSync::from_config(config).unwrap();
    let before = sync.sync(SYNCED).await.unwrap().definition;
    assert_eq!(object(&s3, SYNCED).await.as_deref(), Some(good.as_slice()));
    let lds_before = Env::bodies(&env.lds).await.len();

    for (label, bytes, code) in corpus() {
        env.mosaic.reset().await;
        serve(&env, SYNCED, &bytes).await;
        serve(&env, FRESH, &bytes).await;
        s3.reset_counters();
        for name in [SYNCED, FRESH] {
            let err = sync.sync(name).await.unwrap_err();
            assert_eq!(err.stage(), Some(Stage::Inspect), "{label}/{name}: {err}");
            match &err {
                cfgsync_lablet::Error::Inspect { lablet, source } => {
                    assert_eq!(lablet, name);
                    assert_eq!(source.code(), code, "{label}/{name}: {err}");
                }
                other => panic!("{label}/{name}: {other}"),
            }
            assert!(
                err.to_string()
                    .starts_with(&format!("package invalid for lablet {name}")),
                "{label}: {err}"
            );
        }
        if s3.is_in_process() {
            assert_eq!(s3.put_requests(), Some(0), "{label}: PUT sent");
            assert_eq!(s3.put_body_bytes(), Some(0), "{label}: bytes uploaded");
        }
        assert_eq!(
            object(&s3, SYNCED).await.as_deref(),
            Some(good.as_slice()),
            "{label}: the stored package changed"
        );
        assert_eq!(object(&s3, FRESH).await, None, "{label}: object written");
        assert_eq!(
            sync.catalog().get(SYNCED).await.unwrap().as_ref(),
            Some(&before),
            "{label}: record changed"
        );
        assert_eq!(sync.catalog().get(FRESH).await.unwrap(), None, "{label}");
        assert_eq!(
            sync.catalog()
                .list(&CatalogFilter::default())
                .await
                .unwrap()
                .len(),
            1,
            "{label}"
        );
        assert_eq!(
            Env::bodies(&env.lds).await.len(),
            lds_before,
            "{label}: notified"
        );
        assert!(sync.pending_deliveries().await.unwrap().is_empty());
    }
    // no temp download is left behind by any of them
    let tmp = env.data.path().join("work/tmp");
    assert_eq!(std::fs::read_dir(tmp).unwrap().count(), 0);

    // a package with only cml.yml is valid and syncs
    let yml = zip_bytes(&[
        ("LAB/cml.yml", CML.as_bytes()),
        ("LAB/devices.json", DEVICES.as_bytes()),
    ]);
    env.mosaic.reset().await;
    serve(&env, FRESH, &yml).await;
    let report = sync.sync(FRESH).await.unwrap();
    let c = &report.definition.content;
    assert!(c.cml_yaml_path.ends_with("cml.yml"), "{}", c.cml_yaml_path);
    assert_eq!(c.cml_yaml_content, CML);
    assert_eq!(c.content_package_hash, sha256(&yml));
    assert_eq!(object(&s3, FRESH).await, Some(yml));
}
