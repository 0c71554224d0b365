//! The cfgsync-server status page in a real browser (headless Chromium): what a
//! person sees, and that values from nodes stay text.
//!
//! Runs when `chromium` is on PATH (`.ci/run` installs it), and says loudly
//! when it skips. `CFGSYNC_UPDATE_SCREENSHOTS=1` also rewrites
//! `docs/status-cfgsync-server.png`.
use std::path::Path;
use std::time::Duration;

use cfgsync_core::{CfgsyncClient, NodeRegistration};
use cfgsync_runtime::{CfgsyncServerConfig, build_server_state};
use cfgsync_test_support::{Chromium, TestServer};
use serde_json::{Value, json};

const HOSTILE_ID: &str = "<img src=x onerror=\"document.title='pwned'\">";
const HOSTILE_NOTE: &str = "<script>document.title='pwned';document.body.append(Object.assign(document.createElement('p'),{id:'injected'}))</script>";

fn reg(id: &str, ip: &str) -> NodeRegistration {
    NodeRegistration::new(id, ip.parse().unwrap())
}

async fn status(url: &str) -> Value {
    cfgsync_test_support::get(format!("{url}/api/v1/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn dom(chromium: &Chromium, url: &str) -> String {
    let (chromium, url) = (chromium.clone(), url.to_owned());
    tokio::task::spawn_blocking(move || chromium.dump_dom(&url))
        .await
        .unwrap()
        .expect("chromium renders the page")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_in_chromium_shows_nodes_generation_and_a_broken_edit() {
    let Some(chromium) = Chromium::find("the_status_page_in_chromium_shows_nodes") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("artifacts.yaml");
    std::fs::write(
        &file,
        "nodes:\n  node-1: {files: [{path: /config.yaml, content: \"id: 1\"}]}\n  node-2: {files: [{path: /config.yaml, content: \"id: 2\"}]}\n  node-3: {files: [{path: /config.yaml, content: \"id: 3\"}]}\nshared: {files: [{path: /peers.txt, content: \"node-1 node-2 node-3\"}]}\n",
    )
    .unwrap();
    let config_path = dir.path().join("server.yaml");
    std::fs::write(
        &config_path,
        format!(
            "source:\n  kind: registration\n  artifacts_path: {}\n",
            file.display()
        ),
    )
    .unwrap();
    let config = CfgsyncServerConfig::from_path(&config_path).unwrap();
    let server = TestServer::start(build_server_state(&config).await.unwrap()).await;
    let client = CfgsyncClient::new(&server.url).unwrap();

    let one = reg("node-1", "10.0.0.11")
        .with_metadata(&json!({"rack": "r1", "note": HOSTILE_NOTE}))
        .unwrap();
    client.register_node(&one).await.unwrap();
    client.fetch_node_config(&one).await.unwrap();
    let two = reg("node-2", "10.0.0.12")
        .with_metadata(&json!({"rack": "r2"}))
        .unwrap();
    client.register_node(&two).await.unwrap();
    client.fetch_node_config(&two).await.unwrap();
    // Registered, but the file has no config for it.
    client
        .register_node(&reg("node-9", "10.0.0.19"))
        .await
        .unwrap();
    // An identifier that is markup: refused by the identifier rule, or shown as text.
    let hostile_accepted = client
        .register_node(&reg(HOSTILE_ID, "10.0.0.66"))
        .await
        .is_ok();

    // A broken edit: still serving generation 1, the error on the page.
    std::fs::write(&file, "nodes:\n  node-1: {files: [\n").unwrap();
    for _ in 0..200 {
        if status(&server.url).await["source"]["reload"]["last_outcome"] == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let page = dom(&chromium, &server.url).await;
    // What a person sees.
    for expected in [
        "<title>cfgsync-server status</title>",
        "data-node=\"node-1\"",
        "data-node=\"node-2\"",
        "data-node=\"node-9\"",
        "10.0.0.11",
        "id=\"source-generation\">1<",
        "Reload failed",
        "is not a valid cfgsync artifacts file",
        "Still serving generation 1",
        "no config",
    ] {
        assert!(
            page.contains(expected),
            "the page lacks {expected:?}:\n{page}"
        );
    }
    assert_eq!(
        page.matches("<span class=\"ok\">ready</span>").count(),
        2,
        "{page}"
    );
    // Nothing a node sent ran or became markup: the title is ours, no injected
    // element, no script or img element at all, and the text is shown escaped.
    cfgsync_test_support::assert_inert(&page);
    if hostile_accepted {
        assert!(
            page.contains("&lt;img src=x onerror=\"document.title='pwned'\"&gt;"),
            "{page}"
        );
    }

    if std::env::var_os("CFGSYNC_UPDATE_SCREENSHOTS").is_some() {
        let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/status-cfgsync-server.png");
        let url = server.url.clone();
        tokio::task::spawn_blocking(move || chromium.screenshot(&url, &png, 1200, 1000))
            .await
            .unwrap()
            .unwrap();
    }
}
