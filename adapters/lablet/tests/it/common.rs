//! Helpers shared by the integration tests: zip builders and byte patches.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

pub const CML: &str = "lab:\n  title: Sample lab\nnodes:\n  - id: n0\n    label: r1\n";
pub const DEVICES: &str = r#"[{"name": "r1", "type": "iosv"}]"#;

/// A zip with `entries` (name, bytes), deflated.
/// A valid cml.yaml beside a symlink entry pointing out of the package.
pub fn symlink_zip() -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default();
    w.start_file("cml.yaml", opts).unwrap();
    w.write_all(CML.as_bytes()).unwrap();
    w.add_symlink("link", "/etc/passwd", opts).unwrap();
    w.finish().unwrap().into_inner()
}

pub fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `mosaic_meta.json` text for `version`.
pub fn meta_json(version: &str) -> String {
    format!(
        r#"{{"Version": "{version}", "DatePublished": "2026-02-25T10:00:00Z", "InstanceName": "mosaic-prod", "FormId": "form-42"}}"#
    )
}

/// A complete package in a top-level folder, as `zip -r LAB.zip LAB/` makes it.
/// `cml_extra` changes the cml.yaml content (and so every hash).
pub fn sample_package(version: &str, cml_extra: &str) -> Vec<u8> {
    let cml = format!("{CML}{cml_extra}");
    let meta = meta_json(version);
    zip_bytes(&[
        ("LAB/cml.yaml", cml.as_bytes()),
        ("LAB/devices.json", DEVICES.as_bytes()),
        ("LAB/grading/grade.xml", b"<grade/>"),
        ("LAB/mosaic_meta.json", meta.as_bytes()),
        ("LAB/assets/readme.txt", b"hello"),
    ])
}

/// Replace every occurrence of `from` by `to` (same length) in `bytes`.
pub fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    count
}

/// Set the "encrypted" flag bit on every local and central header.
pub fn mark_encrypted(bytes: &mut [u8]) {
    let mut i = 0;
    while i + 10 <= bytes.len() {
        if &bytes[i..i + 4] == b"PK\x03\x04" {
            bytes[i + 6] |= 1;
        } else if &bytes[i..i + 4] == b"PK\x01\x02" {
            bytes[i + 8] |= 1;
        }
        i += 1;
    }
}

/// `len` incompressible bytes from `seed` (xorshift64, eight bytes a step:
/// byte by byte, a debug build spent about a second per 20 MiB here).
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A package of `mib` MiB of incompressible bytes (several multipart parts).
pub fn big_package(mib: usize, seed: u64) -> Vec<u8> {
    let noise = noise(mib * 1024 * 1024, seed);
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("LAB/cml.yaml", stored).unwrap();
    w.write_all(CML.as_bytes()).unwrap();
    w.start_file("LAB/assets/disk.img", stored).unwrap();
    w.write_all(&noise).unwrap();
    w.finish().unwrap().into_inner()
}

/// SHA-256 hex of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

pub mod env {
    //! Third-party services (resolver, Mosaic, LDS, SE, CPA) on wiremock, plus stores.
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use cfgsync_lablet::RetryPolicy;
    use cfgsync_lablet::catalog::{ContentSyncResult, LabletDefinition, next_content_version};
    use cfgsync_lablet::config::S3Options;
    use cfgsync_lablet::{LabletSyncConfig, Secret};
    use cfgsync_test_support::S3Harness;
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    pub struct Env {
        pub resolver: MockServer,
        pub mosaic: MockServer,
        pub lds: MockServer,
        pub se: MockServer,
        pub data: tempfile::TempDir,
    }

    impl Env {
        pub async fn start() -> Self {
            let env = Self {
                resolver: MockServer::start().await,
                mosaic: MockServer::start().await,
                lds: MockServer::start().await,
                se: MockServer::start().await,
                data: tempfile::tempdir().unwrap(),
            };
            env.targets_ok().await;
            env
        }

        /// LDS and SE answer 200.
        pub async fn targets_ok(&self) {
            Mock::given(method("POST"))
                .and(path("/sync"))
                .respond_with(ResponseTemplate::new(200))
                .mount(&self.lds)
                .await;
            Mock::given(method("POST"))
                .and(path("/sync_content"))
                .respond_with(ResponseTemplate::new(200))
                .mount(&self.se)
                .await;
        }

        /// The resolver knows `name`, Mosaic serves `bytes` for it.
        pub async fn publish(&self, name: &str, bytes: Vec<u8>) {
            Mock::given(method("GET"))
                .and(path(format!("/resolve/{name}")))
                .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
                    "MOSAIC_BASE_URL": format!("{}/content/{name}", self.mosaic.uri()),
                    "OTHER": "x",
                })))
                .mount(&self.resolver)
                .await;
            self.mosaic_serves(name, bytes).await;
        }

        /// Replace what Mosaic serves for `name`.
        pub async fn mosaic_serves(&self, name: &str, bytes: Vec<u8>) {
            self.mosaic_serves_after(name, bytes, Duration::ZERO).await;
        }

        /// Replace what Mosaic serves for `name`, answering each download
        /// only after `delay` (so concurrent syncs overlap).
        pub async fn mosaic_serves_after(&self, name: &str, bytes: Vec<u8>, delay: Duration) {
            self.mosaic.reset().await;
            Mock::given(method("GET"))
                .and(path(format!("/content/{name}/package.zip")))
                .respond_with(
                    ResponseTemplate::new(200)
                        .set_body_bytes(bytes)
                        .insert_header("content-type", "application/zip")
                        .set_delay(delay),
                )
                .mount(&self.mosaic)
                .await;
        }

        /// Config for these services; a fast retry policy; the given store URL.
        pub fn config(&self, store: Option<String>) -> LabletSyncConfig {
            let mut c = LabletSyncConfig::default()
                .with_resolver_url(self.resolver.uri())
                .with_lds_url(self.lds.uri())
                .with_se_url(self.se.uri())
                .with_data_dir(self.data.path().join("work"))
                .with_retry(
                    RetryPolicy::default()
                        .with_max_attempts(3)
                        .with_backoff(Duration::from_millis(1), Duration::from_millis(5)),
                );
            c.store.url = store;
            c
        }

        /// Bodies POSTed to a server.
        pub async fn bodies(server: &MockServer) -> Vec<serde_json::Value> {
            server
                .received_requests()
                .await
                .unwrap_or_default()
                .iter()
                .filter(|r| r.method.as_str() == "POST")
                .map(|r| serde_json::from_slice(&r.body).unwrap())
                .collect()
        }
    }

    /// The `LABLET_*` / `AWS_*` variables the binary runs with against these
    /// services: data dir `data`, the S3 harness as store when given.
    pub fn bin_vars(
        env: &Env,
        s3: Option<&S3Harness>,
        data: &std::path::Path,
    ) -> BTreeMap<String, String> {
        let mut vars: BTreeMap<String, String> = [
            ("LABLET_RESOLVER_URL", env.resolver.uri()),
            ("LABLET_LDS_URL", env.lds.uri()),
            ("LABLET_SE_URL", env.se.uri()),
            ("LABLET_DATA_DIR", data.display().to_string()),
            ("LABLET_RETRY_ATTEMPTS", "2".to_owned()),
            ("LABLET_RETRY_BACKOFF_MS", "5".to_owned()),
            ("LABLET_READ_TIMEOUT_SECS", "5".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        if let Some(s3) = s3 {
            let store = if s3.prefix.is_empty() {
                format!("s3://{}", s3.bucket)
            } else {
                format!("s3://{}/{}", s3.bucket, s3.prefix)
            };
            for (k, v) in [
                ("LABLET_STORE", store),
                ("LABLET_S3_ENDPOINT", s3.endpoint.clone()),
                ("AWS_ACCESS_KEY_ID", s3.access_key.clone()),
                ("AWS_SECRET_ACCESS_KEY", s3.secret_key.clone()),
                ("AWS_REGION", s3.region.clone()),
            ] {
                vars.insert(k.to_owned(), v);
            }
        }
        vars
    }

    /// The `lablet-sync` binary with exactly `vars` in its environment.
    pub fn bin_with(vars: &BTreeMap<String, String>) -> std::process::Command {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_lablet-sync"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(vars);
        cmd
    }

    /// Runs the binary with `vars` and `args` to its end, off the runtime's
    /// thread (the in-process S3 server it talks to runs on that runtime).
    pub async fn run_bin(vars: &BTreeMap<String, String>, args: &[&str]) -> std::process::Output {
        let mut cmd = bin_with(vars);
        cmd.args(args);
        tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap()
    }

    /// A `lablet-sync serve` process on a loopback port; killed on drop.
    pub struct ServeProcess {
        pub url: String,
        child: std::process::Child,
    }

    impl ServeProcess {
        /// Starts `lablet-sync serve` with `vars` and waits until it answers
        /// `/healthz`.
        pub async fn start(vars: &BTreeMap<String, String>) -> Self {
            let port = cfgsync_test_support::free_port();
            let child = bin_with(vars)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let this = Self {
                url: format!("http://127.0.0.1:{port}"),
                child,
            };
            let healthz = format!("{}/healthz", this.url);
            for _ in 0..600 {
                if cfgsync_test_support::get(&healthz)
                    .await
                    .is_ok_and(|r| r.status().is_success())
                {
                    return this;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("lablet-sync serve did not answer on {healthz}");
        }

        /// Syncs `name` through the operator API; the answer's JSON.
        pub async fn sync(&self, name: &str) -> serde_json::Value {
            let response = cfgsync_test_support::http_client()
                .post(format!("{}/api/v1/lablets/{name}/sync", self.url))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200, "sync {name} on {}", self.url);
            response.json().await.unwrap()
        }
    }

    impl Drop for ServeProcess {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Config pointing at the in-process S3 server.
    pub fn s3_config(mut config: LabletSyncConfig, s3: &S3Harness) -> LabletSyncConfig {
        config.store.url = Some(if s3.prefix.is_empty() {
            format!("s3://{}", s3.bucket)
        } else {
            format!("s3://{}/{}", s3.bucket, s3.prefix)
        });
        config.with_s3(S3Options {
            endpoint: Some(s3.endpoint.clone()),
            region: Some(s3.region.clone()),
            access_key_id: Some(s3.access_key.clone()),
            secret_access_key: Some(Secret::new(s3.secret_key.clone())),
            allow_http: Some(true),
        })
    }

    /// A fake CPA: stores definitions in memory and bumps `content_version` when the
    /// package hash changes, as our assumed CPA contract says.
    #[derive(Clone, Default)]
    pub struct FakeCpa {
        pub defs: Arc<Mutex<BTreeMap<String, LabletDefinition>>>,
    }

    impl Respond for FakeCpa {
        fn respond(&self, req: &Request) -> ResponseTemplate {
            let p = req
                .url
                .path()
                .trim_start_matches("/api/internal/lablet-definitions");
            let mut defs = self.defs.lock().unwrap();
            match (
                req.method.as_str(),
                p.trim_start_matches('/')
                    .split('/')
                    .collect::<Vec<_>>()
                    .as_slice(),
            ) {
                ("POST", [id, "content-synced"]) => {
                    let Ok(mut content) = serde_json::from_slice::<ContentSyncResult>(&req.body)
                    else {
                        return ResponseTemplate::new(400);
                    };
                    content.content_version =
                        next_content_version(defs.get(*id), &content.content_package_hash);
                    let def = LabletDefinition {
                        id: (*id).to_owned(),
                        content,
                    };
                    defs.insert((*id).to_owned(), def.clone());
                    ResponseTemplate::new(200).set_body_json(def)
                }
                ("GET", [""]) => {
                    let q: BTreeMap<String, String> = req.url.query_pairs().into_owned().collect();
                    let list: Vec<_> = defs
                        .values()
                        .filter(|d| {
                            q.get("upstream_instance_name").is_none_or(|n| {
                                d.content.upstream_instance_name.as_ref() == Some(n)
                            }) && q
                                .get("status")
                                .is_none_or(|s| d.content.status.as_str() == s)
                        })
                        .cloned()
                        .collect();
                    ResponseTemplate::new(200).set_body_json(list)
                }
                ("GET", [id]) => match defs.get(*id) {
                    Some(def) => ResponseTemplate::new(200).set_body_json(def),
                    None => ResponseTemplate::new(404),
                },
                _ => ResponseTemplate::new(404),
            }
        }
    }

    impl FakeCpa {
        pub async fn start() -> (Self, MockServer) {
            let fake = Self::default();
            let server = MockServer::start().await;
            Mock::given(path_regex("^/api/internal/lablet-definitions"))
                .respond_with(fake.clone())
                .mount(&server)
                .await;
            (fake, server)
        }
    }
}

pub mod consistency {
    //! The promise: every record points at stored bytes that match it.
    use cfgsync_lablet::catalog::{Catalog, CatalogFilter};
    use cfgsync_lablet::store::StoreLocation;
    use cfgsync_test_support::S3Harness;
    use object_store::{ObjectStoreExt, path::Path};

    /// A store for `bucket`: the harness's own for its bucket. Building one
    /// loads the system's root certificates, ~15 ms in a debug build, and
    /// the consistency check reads every record's object.
    fn store_for(s3: &S3Harness, bucket: &str) -> std::sync::Arc<dyn object_store::ObjectStore> {
        if bucket == s3.bucket {
            s3.store.clone()
        } else {
            s3.store_for_bucket(bucket).unwrap()
        }
    }

    /// The bytes stored at `loc` (`file://` read from disk, `s3://` from `s3`).
    pub async fn stored_bytes(loc: &StoreLocation, s3: Option<&S3Harness>) -> Option<Vec<u8>> {
        if let Some(path) = loc.url.strip_prefix("file://") {
            return match std::fs::read(path) {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => panic!("read {path}: {e}"),
            };
        }
        let s3 = s3.expect("an s3:// location needs the harness");
        let store = store_for(s3, &loc.bucket);
        match store.get(&Path::from(loc.key.as_str())).await {
            Ok(r) => Some(r.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("get {}: {e}", loc.url),
        }
    }

    /// Bytes of the digest sidecar (`KEY.sha256.json`) an S3 store PUTs after
    /// the package at `loc`; 0 without one.
    #[allow(dead_code)]
    pub async fn sidecar_bytes(loc: &StoreLocation, s3: &S3Harness) -> u64 {
        let store = store_for(s3, &loc.bucket);
        let side = format!("{}{}", loc.key, cfgsync_lablet::store::SIDECAR_SUFFIX);
        store
            .head(&Path::from(side))
            .await
            .map(|m| m.size)
            .unwrap_or(0)
    }

    /// For every record: the object exists, and its SHA-256 and size are the
    /// recorded ones. Returns how many records there are.
    pub async fn assert_records_match_bytes(
        catalog: &dyn Catalog,
        s3: Option<&S3Harness>,
    ) -> usize {
        let defs = catalog.list(&CatalogFilter::default()).await.unwrap();
        for def in &defs {
            let c = &def.content;
            let bytes = stored_bytes(&c.store, s3)
                .await
                .unwrap_or_else(|| panic!("record {} points at missing {}", def.id, c.store.url));
            assert_eq!(
                super::sha256(&bytes),
                c.content_package_hash,
                "record {} points at other bytes ({})",
                def.id,
                c.store.url
            );
            assert_eq!(bytes.len() as u64, c.content_package_size, "{}", def.id);
        }
        defs.len()
    }
}
