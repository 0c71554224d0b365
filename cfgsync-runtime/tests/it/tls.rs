//! TLS end to end through ring (the workspace builds no other rustls
//! provider): `cfgsync-server` keeps its registrations in S3 over https and
//! serves behind a TLS proxy; `cfgsync-client` fetches over https. Both trust
//! a private CA through `SSL_CERT_FILE` alone. A binary that builds an HTTP
//! client before installing the provider panics, and this test fails.
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::wait_healthy_or_exit;
use cfgsync_test_support::free_port;
use cfgsync_test_support::{S3Harness, TlsProxy, test_ca_file};

const SERVER: &str = env!("CARGO_BIN_EXE_cfgsync-server");
const CLIENT: &str = env!("CARGO_BIN_EXE_cfgsync-client");

/// Runs `cfgsync-client` as node-1 (through tokio: the S3 server and the
/// proxies run on this test's runtime).
async fn client(url: &str, out: &Path, ca: Option<&Path>, timeout_secs: &str) -> Output {
    let mut command = tokio::process::Command::new(CLIENT);
    command
        .env_clear()
        .env("CFG_SERVER_ADDR", url)
        .env("CFG_HOST_IP", "127.0.0.7")
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .env("CFG_FILE_PATH", out.join("node/config.yaml"))
        .env("CFG_DEPLOYMENT_PATH", out.join("shared/deployment.yaml"))
        .env("CFG_OUTPUT_ROOT", out)
        .env("CFG_TIMEOUT_SECS", timeout_secs);
    if let Some(ca) = ca {
        command.env("SSL_CERT_FILE", ca);
    }
    command.output().await.unwrap()
}

#[tokio::test]
async fn server_and_client_binaries_speak_https_with_a_private_ca_through_ring() {
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("SKIPPED: an outside S3 cannot be put behind the test TLS proxy");
        return;
    }
    let s3_tls = TlsProxy::in_front_of(&s3.endpoint).await.unwrap();
    let ca: PathBuf = test_ca_file();

    // The server: registrations in S3 through https://localhost:PORT.
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("server.yaml");
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/artifacts.yaml");
    std::fs::write(
        &config,
        format!(
            "port: {port}\nbind: 127.0.0.1\nsource:\n  kind: registration\n  artifacts_path: {}\nregistration_store: s3://{}/tls-test\n",
            artifacts.display(),
            s3.bucket
        ),
    )
    .unwrap();
    let log = dir.path().join("server.log");
    let mut server = Command::new(SERVER)
        .arg("--config")
        .arg(&config)
        .env_clear()
        .env("AWS_ENDPOINT", &s3_tls.url)
        .env("AWS_ACCESS_KEY_ID", &s3.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &s3.secret_key)
        .env("AWS_REGION", &s3.region)
        .env("SSL_CERT_FILE", &ca)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_healthy_or_exit(&mut server, &format!("http://127.0.0.1:{port}"), &log).await;
    let cfgsync_tls = TlsProxy::in_front_of(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();

    // The node trusts the private CA only through SSL_CERT_FILE.
    let out = dir.path().join("out");
    let fetched = client(&cfgsync_tls.url, &out, Some(&ca), "20").await;
    assert!(
        fetched.status.success(),
        "client: {}\nserver: {}",
        String::from_utf8_lossy(&fetched.stderr),
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert_eq!(
        std::fs::read_to_string(out.join("node/config.yaml")).unwrap(),
        "id: node-1\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("shared/deployment.yaml")).unwrap(),
        "peers: [node-1, node-2]\n"
    );
    assert!(cfgsync_tls.handshakes() >= 1, "the client came through TLS");
    // The registration was stored through the TLS proxy: the S3 server had
    // no other client.
    assert!(
        s3_tls.handshakes() >= 1,
        "the server reached S3 through TLS"
    );
    assert!(
        s3.put_requests().unwrap() >= 1,
        "the registration reached S3"
    );

    // Without the CA the certificate is refused (verification is real), and
    // the client says it was TLS.
    let refused = client(&cfgsync_tls.url, &dir.path().join("refused"), None, "2").await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("TLS handshake failed") && stderr.contains("invalid peer certificate"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    server.kill().unwrap();
    server.wait().unwrap();
}
