//! `serve`'s status page (`GET /`, with its `lablets` section) and JSON twin
//! (`GET /api/v1/status`): rendered by headless Chromium (when installed), the
//! facts behind it, who may see it, and the page's sync form.
//!
//! `CFGSYNC_UPDATE_SCREENSHOTS=1` also rewrites `docs/status-lablet-sync.png`.
use std::path::Path;
use std::sync::Arc;

use crate::common::env::{Env, FakeCpa};
use crate::common::{CML, DEVICES, sample_package, zip_bytes};
use base64::Engine as _;
use cfgsync_adapter::MemoryRegistrationStore;
use cfgsync_core::{AuthConfig, CfgsyncClient, NodeRegistration};
use cfgsync_lablet::{LabletService, ServeOptions, build_lablet_app, serve_lablets};
use cfgsync_test_support::Chromium;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const LAB: &str = "LAB-1.1.1";
const WAITING_LAB: &str = "LAB-2.0.0";
const CLEAN_LAB: &str = "LAB-1.2.0";
const HOSTILE: &str = "<script>document.title='pwned';document.body.append(Object.assign(document.createElement('p'),{id:'injected'}))</script>";

/// A package whose `mosaic_meta.json` fields are markup.
fn hostile_package() -> Vec<u8> {
    let meta = json!({
        "Version": "1.0.0<img src=x onerror=\"document.title='pwned'\">",
        "DatePublished": "2026-02-25T10:00:00Z",
        "InstanceName": HOSTILE,
        "FormId": "form-42",
    })
    .to_string();
    zip_bytes(&[
        ("LAB/cml.yaml", CML.as_bytes()),
        ("LAB/devices.json", DEVICES.as_bytes()),
        ("LAB/mosaic_meta.json", meta.as_bytes()),
    ])
}

/// LDS answers 500 from now on (SE still 200).
async fn lds_fails(env: &Env) {
    env.lds.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(ResponseTemplate::new(500).set_body_string("lds is down"))
        .mount(&env.lds)
        .await;
}

struct Server {
    url: String,
}

/// `serve` on 127.0.0.1:0 (it stops with the test's runtime).
async fn start(env: &Env, auth: AuthConfig) -> (Arc<LabletService>, Server) {
    start_with(env.config(None), auth).await
}

async fn start_with(
    config: cfgsync_lablet::LabletSyncConfig,
    auth: AuthConfig,
) -> (Arc<LabletService>, Server) {
    let options = ServeOptions {
        auth,
        ..ServeOptions::default()
    };
    let app = build_lablet_app(config, Arc::new(MemoryRegistrationStore::new()), &options).unwrap();
    let service = app.service.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        async move { serve_lablets(app, listener, &options, std::future::pending()).await },
    );
    (service, Server { url })
}

fn node(id: &str, lablet: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.1.0.7".parse().unwrap())
        .with_metadata(&json!({"lablet": lablet, "note": HOSTILE}))
        .unwrap()
}

async fn dom(chromium: &Chromium, url: &str) -> String {
    let (chromium, url) = (chromium.clone(), url.to_owned());
    tokio::task::spawn_blocking(move || chromium.dump_dom(&url))
        .await
        .unwrap()
        .expect("chromium renders the page")
}

fn lablet<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["sections"]["lablets"]["lablets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == name)
        .unwrap_or_else(|| panic!("no lablet {name} in {status:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lablet_page_shows_versions_a_stale_target_and_waiting_nodes() {
    let env = Env::start().await;
    let (app, server) = start(&env, AuthConfig::default()).await;
    // One lablet synced while every target answers.
    env.publish(CLEAN_LAB, sample_package("2.3.0", "")).await;
    app.sync_lablet(CLEAN_LAB).await.unwrap();
    env.publish(LAB, hostile_package()).await;
    lds_fails(&env).await;
    let nodes = CfgsyncClient::new(&server.url).unwrap();
    nodes.register_node(&node("node-a", LAB)).await.unwrap();
    nodes.register_node(&node("node-b", LAB)).await.unwrap();
    nodes
        .register_node(&node("node-w", WAITING_LAB))
        .await
        .unwrap();

    // Synced, but LDS answered 500: stale, LDS queued.
    let report = app.sync_lablet(LAB).await.unwrap();
    assert!(report.stale_message().is_some());
    nodes.fetch_node_config(&node("node-a", LAB)).await.unwrap();

    // The JSON twin holds the facts.
    let status: Value = cfgsync_test_support::get(format!("{}/api/v1/status", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["server"], "lablet-sync");
    let lab = lablet(&status, LAB);
    assert_eq!(lab["status"], "stale", "{lab:#}");
    assert_eq!(lab["stale_targets"], json!(["lds"]));
    assert_eq!(lab["content_version"], 1);
    assert_eq!(lab["upstream_instance_name"], HOSTILE);
    assert_eq!(
        lab["content_package_hash"],
        report.definition.content.content_package_hash
    );
    assert_eq!(lab["store"]["url"], report.definition.content.store.url);
    assert_eq!(lab["last_attempt"]["ok"], true);
    assert_eq!(lab["queued_deliveries"][0]["target"], "lds");
    assert!(
        lab["queued_deliveries"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("500"),
        "{lab:#}"
    );
    assert_eq!(
        lab["nodes"],
        json!({"registered": ["node-a", "node-b"], "waiting": 0})
    );
    let clean = lablet(&status, CLEAN_LAB);
    assert_eq!(clean["status"], "synced", "{clean:#}");
    assert_eq!(clean["stale_targets"], json!([]));
    assert_eq!(clean["upstream_version"], "2.3.0");
    let waiting = lablet(&status, WAITING_LAB);
    assert_eq!(waiting["status"], "not_synced");
    assert_eq!(
        waiting["nodes"],
        json!({"registered": ["node-w"], "waiting": 1})
    );
    let node_w = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["identifier"] == "node-w")
        .unwrap();
    assert_eq!(
        node_w["reason"],
        format!("lablet {WAITING_LAB} has not been synced yet")
    );

    // A failed sync shows with its stage and error.
    let failed = app.sync_lablet("LAB-9.9.9").await.unwrap_err();
    let status: Value = cfgsync_test_support::get(format!("{}/api/v1/status", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let missing = lablet(&status, "LAB-9.9.9");
    assert_eq!(missing["last_attempt"]["ok"], false);
    assert_eq!(missing["last_attempt"]["stage"], "resolve");
    assert_eq!(missing["last_attempt"]["error"], failed.to_string());

    // What a person sees in a real browser.
    let Some(chromium) = Chromium::find("the_lablet_page_shows_versions_a_stale_target") else {
        return;
    };
    let page = dom(&chromium, &server.url).await;
    for expected in [
        "<title>lablet-sync status</title>",
        "data-lablet=\"LAB-1.1.1\"",
        "<td class=\"version\">v1</td>",
        "<span class=\"warn\">stale</span>",
        "<span class=\"ok\">synced</span>",
        "2.3.0",
        "<span class=\"stale-targets\">lds</span> not told yet",
        "lds queued",
        "data-lablet=\"LAB-2.0.0\"",
        "not synced",
        "data-node=\"node-a\"",
        "data-node=\"node-w\"",
        "lablet LAB-2.0.0 has not been synced yet",
        "last sync failed",
        "Sync now",
        "action=\"/lablets/sync\"",
    ] {
        assert!(
            page.contains(expected),
            "the page lacks {expected:?}:\n{page}"
        );
    }
    // Nothing a package or a node sent ran or became markup.
    cfgsync_test_support::assert_inert(&page);
    assert!(page.contains("1.0.0&lt;img src=x"), "{page}");

    if std::env::var_os("CFGSYNC_UPDATE_SCREENSHOTS").is_some() {
        let png = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/status-lablet-sync.png");
        let url = server.url.clone();
        tokio::task::spawn_blocking(move || chromium.screenshot(&url, &png, 1600, 1250))
            .await
            .unwrap()
            .unwrap();
    }
}

fn basic(password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("operator:{password}"));
    format!("Basic {encoded}")
}

async fn get(url: &str, auth: Option<&str>) -> u16 {
    let mut request = cfgsync_test_support::http_client().get(url);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.unwrap().status().as_u16()
}

/// Posts the page's sync form for `lablet` with `headers`.
async fn post_form(url: &str, lablet: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let client = cfgsync_test_support::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client
        .post(format!("{url}/lablets/sync"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("lablet={lablet}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn the_status_needs_the_operator_token_and_the_sync_form_refuses_cross_site_posts() {
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0.0", "")).await;
    let auth = AuthConfig::default()
        .with_admin_token("op-token")
        .with_shared_token("node-token");
    let (app, server) = start(&env, auth).await;
    let url = &server.url;
    let host = url.trim_start_matches("http://");
    let origin = url.as_str();

    // The page and its twin: the operator token (bearer or Basic password).
    for route in ["/", "/api/v1/status"] {
        let at = format!("{url}{route}");
        assert_eq!(get(&at, None).await, 401, "{route}");
        assert_eq!(get(&at, Some("Bearer node-token")).await, 403, "{route}");
        assert_eq!(get(&at, Some(&basic("node-token"))).await, 403, "{route}");
        assert_eq!(get(&at, Some("Bearer op-token")).await, 200, "{route}");
        assert_eq!(get(&at, Some(&basic("op-token"))).await, 200, "{route}");
    }
    // The JSON operator API takes the Basic password too.
    assert_eq!(
        get(&format!("{url}/api/v1/lablets"), Some(&basic("op-token"))).await,
        200
    );

    // The form: no token → 401 with a Basic challenge; a node's → 403.
    let response = post_form(url, LAB, &[("origin", origin)]).await;
    assert_eq!(response.status(), 401);
    assert!(
        response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    let node_basic = basic("node-token");
    let response = post_form(
        url,
        LAB,
        &[("origin", origin), ("authorization", &node_basic)],
    )
    .await;
    assert_eq!(response.status(), 403);

    // The operator's credentials posted from another site: refused, no sync.
    let op = basic("op-token");
    for headers in [
        vec![
            ("origin", "http://evil.example"),
            ("authorization", op.as_str()),
        ],
        vec![
            ("referer", "http://evil.example/page"),
            ("authorization", op.as_str()),
        ],
        vec![
            ("sec-fetch-site", "cross-site"),
            ("origin", origin),
            ("authorization", op.as_str()),
        ],
        vec![("authorization", op.as_str())],
    ] {
        let response = post_form(url, LAB, &headers).await;
        assert_eq!(response.status(), 403, "{headers:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "forbidden");
    }
    assert!(
        env.mosaic.received_requests().await.unwrap().is_empty(),
        "a refused form started a sync"
    );
    assert!(app.sync().catalog().get(LAB).await.unwrap().is_none());

    // From the page itself: synced, and back to the page.
    let response = post_form(
        url,
        LAB,
        &[
            ("origin", origin),
            ("sec-fetch-site", "same-origin"),
            ("host", host),
            ("authorization", op.as_str()),
        ],
    )
    .await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()["location"], format!("/#lablet-{LAB}"));
    let definition = app.sync().catalog().get(LAB).await.unwrap().unwrap();
    assert_eq!(
        definition.content.upstream_version.as_deref(),
        Some("1.0.0")
    );

    // A name that is not a lablet name is refused before anything runs.
    let response = post_form(
        url,
        "%3Cscript%3E",
        &[
            ("referer", &format!("{url}/")),
            ("authorization", op.as_str()),
        ],
    )
    .await;
    assert_eq!(response.status(), 400);
}

/// A page of another origin that posts the sync form on load, as a hostile
/// site would (auth off: without the origin check this would start a sync).
async fn hostile_site(target: &str) -> String {
    let page = format!(
        "<!doctype html><html><body><form id=\"f\" method=\"post\" action=\"{target}/lablets/sync\">\
         <input name=\"lablet\" value=\"{LAB}\"></form>\
         <script>document.getElementById('f').submit()</script></body></html>"
    );
    let router = axum::Router::new().route(
        "/",
        axum::routing::get(move || {
            let page = page.clone();
            async move { axum::response::Html(page) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_form_another_site_posts_in_chromium_is_refused_and_syncs_nothing() {
    let Some(chromium) = Chromium::find("a_form_another_site_posts_in_chromium_is_refused") else {
        return;
    };
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0.0", "")).await;
    let (app, server) = start(&env, AuthConfig::default()).await;
    let evil = hostile_site(&server.url).await;

    let page = dom(&chromium, &evil).await;
    // The browser followed the form to our answer: the refusal.
    assert!(
        page.contains("cross-site form post refused"),
        "chromium did not show the refusal:\n{page}"
    );
    assert!(
        env.mosaic.received_requests().await.unwrap().is_empty(),
        "the hostile site started a sync"
    );
    assert!(app.sync().catalog().get(LAB).await.unwrap().is_none());
}

#[tokio::test]
async fn a_cpa_catalog_that_cannot_list_still_shows_what_it_recorded() {
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0.0", "")).await;
    let (_cpa, cpa_server) = FakeCpa::start().await;
    // CPA guarantees only the record call: this one has no list.
    Mock::given(method("GET"))
        .and(path("/api/internal/lablet-definitions"))
        .respond_with(ResponseTemplate::new(404))
        .with_priority(1)
        .mount(&cpa_server)
        .await;
    let config = env.config(None).with_cpa_url(cpa_server.uri());
    let (app, server) = start_with(config, AuthConfig::default()).await;
    CfgsyncClient::new(&server.url)
        .unwrap()
        .register_node(&node("node-a", LAB))
        .await
        .unwrap();
    app.sync_lablet(LAB).await.unwrap();

    let status: Value = cfgsync_test_support::get(format!("{}/api/v1/status", server.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lab = lablet(&status, LAB);
    assert_eq!(lab["status"], "synced", "{lab:#}");
    assert_eq!(lab["upstream_version"], "1.0.0");
    assert_eq!(
        lab["nodes"],
        json!({"registered": ["node-a"], "waiting": 0})
    );
}
