//! `serve`: the operator API and lablet content for nodes, end to end, with
//! wiremock for the third-party services and a real S3 server in process.
use std::sync::Arc;
use std::time::Duration;

use crate::common::env::{Env, s3_config};
use crate::common::{CML, DEVICES, sample_package, sha256};
use cfgsync_adapter::MemoryRegistrationStore;
use cfgsync_core::{
    AuthConfig, CfgsyncClient, Error, FetchOptions, FetchOutcome, NodeRegistration,
};
use cfgsync_lablet::{ServeOptions, build_lablet_app, serve_lablets};
use cfgsync_test_support::{S3Harness, long_poll, woken};
use wiremock::matchers::{method, path};
use wiremock::{Mock, ResponseTemplate};

const LAB: &str = "LAB-1.1.1";

struct Served {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<cfgsync_lablet::Result<()>>,
}

impl Served {
    async fn start(config: cfgsync_lablet::LabletSyncConfig, options: ServeOptions) -> Self {
        let app =
            build_lablet_app(config, Arc::new(MemoryRegistrationStore::new()), &options).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            serve_lablets(app, listener, &options, async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            url,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

fn operator(url: &str, path: &str, token: Option<&str>, post: bool) -> reqwest::RequestBuilder {
    let http = cfgsync_test_support::http_client();
    let request = if post {
        http.post(format!("{url}{path}"))
    } else {
        http.get(format!("{url}{path}"))
    };
    match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    }
}

fn node(id: &str, lablet: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.1.0.1".parse().unwrap())
        .with_metadata(&serde_json::json!({"lablet": lablet, "rack": 7}))
        .unwrap()
}

#[tokio::test]
async fn operator_syncs_and_nodes_receive_lablet_content_on_s3() {
    let env = Env::start().await;
    let v1 = sample_package("1.0.0", "");
    env.publish(LAB, v1.clone()).await;
    let s3 = S3Harness::start().await.unwrap();
    let options = ServeOptions {
        auth: AuthConfig::default()
            .with_admin_token("op-token")
            .with_shared_token("node-token"),
        ..ServeOptions::default()
    };
    let served = Served::start(s3_config(env.config(None), &s3), options).await;
    let url = &served.url;
    let nodes = CfgsyncClient::builder(url)
        .bearer_token("node-token")
        .build()
        .unwrap();

    // The operator API needs the operator token: none → 401, a node's → 403.
    let response = operator(url, "/api/v1/lablets", None, false)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let response = operator(
        url,
        &format!("/api/v1/lablets/{LAB}/sync"),
        Some("node-token"),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 403);

    // Before any sync: registered nodes are not ready, and one long-polls.
    nodes.register_node(&node("node-a", LAB)).await.unwrap();
    assert!(matches!(
        nodes.fetch_node_config(&node("node-a", LAB)).await,
        Err(Error::NotReady { .. })
    ));
    nodes.register_node(&node("node-b", LAB)).await.unwrap();
    let waiting = long_poll(&nodes, &node("node-b", LAB), None);

    // Sync v1 through the operator API.
    let response = operator(
        url,
        &format!("/api/v1/lablets/{LAB}/sync"),
        Some("op-token"),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let report: serde_json::Value = response.json().await.unwrap();
    assert_eq!(report["definition"]["status"], "synced");
    assert_eq!(report["definition"]["content_version"], 1);
    assert_eq!(report["definition"]["content_package_hash"], sha256(&v1));
    assert_eq!(report["uploaded"], true);

    // The waiting node wakes with the lablet's files.
    let (payload, etag_b) = woken(waiting).await;
    let paths: Vec<_> = payload.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["cml.yaml", "devices.json", "content.json"]);
    assert_eq!(payload.files.get("cml.yaml").unwrap().content, CML);
    assert_eq!(payload.files.get("devices.json").unwrap().content, DEVICES);
    let manifest: serde_json::Value =
        serde_json::from_str(&payload.files.get("content.json").unwrap().content).unwrap();
    assert_eq!(manifest["sha256"], sha256(&v1));
    assert_eq!(manifest["version"], 1);
    assert_eq!(manifest["upstream_version"], "1.0.0");
    assert_eq!(manifest["bucket"], s3.bucket);
    assert!(
        manifest["key"]
            .as_str()
            .unwrap()
            .ends_with(&format!("lablets/{LAB}/package.zip")),
        "{manifest}"
    );

    // node-a gets the same payload (same ETag).
    let FetchOutcome::Updated {
        etag: Some(etag_a), ..
    } = nodes
        .fetch_node_config_with(&node("node-a", LAB), &FetchOptions::default())
        .await
        .unwrap()
    else {
        panic!("payload expected");
    };
    assert_eq!(etag_a, etag_b);

    // Catalog queries.
    let list: Vec<serde_json::Value> = operator(
        url,
        "/api/v1/lablets?instance=mosaic-prod",
        Some("op-token"),
        false,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(list.len(), 1);
    let shown: serde_json::Value = operator(
        url,
        &format!("/api/v1/lablets/{LAB}"),
        Some("op-token"),
        false,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(shown["cml_yaml_content"], CML);
    let missing = operator(url, "/api/v1/lablets/LAB-9.9.9", Some("op-token"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["code"],
        "not_found"
    );

    // A changed package: re-sync bumps the version; node-a, holding the old
    // ETag, wakes with the new content.
    let waiting = long_poll(&nodes, &node("node-a", LAB), Some(etag_a.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "unchanged content: still waiting");
    env.mosaic_serves(LAB, sample_package("1.1.0", "  - id: n1\n    label: r2\n"))
        .await;
    let report: serde_json::Value = operator(
        url,
        &format!("/api/v1/lablets/{LAB}/sync"),
        Some("op-token"),
        true,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(report["definition"]["content_version"], 2);
    let (payload, etag_new) = woken(waiting).await;
    assert_ne!(etag_new, etag_a);
    assert!(
        payload
            .files
            .get("cml.yaml")
            .unwrap()
            .content
            .contains("label: r2")
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&payload.files.get("content.json").unwrap().content).unwrap();
    assert_eq!(
        (
            manifest["version"].as_u64(),
            manifest["upstream_version"].as_str()
        ),
        (Some(2), Some("1.1.0"))
    );

    // Nodes without usable lablet metadata are refused at /register with a JSON 400.
    for bad in [
        NodeRegistration::new("node-c", "10.1.0.3".parse().unwrap()),
        node("node-d", "../etc"),
        NodeRegistration::new("node-e", "10.1.0.5".parse().unwrap())
            .with_metadata(&serde_json::json!({"lab": LAB}))
            .unwrap(),
    ] {
        let err = nodes.register_node(&bad).await.unwrap_err();
        assert!(
            matches!(&err, Error::Rejected { status: 400, code, message, .. } if code == "bad_request" && message.contains(&bad.identifier)),
            "{err:?}"
        );
    }

    // A failing sync answers its stage and leaves the served content alone.
    let response = operator(
        url,
        "/api/v1/lablets/LAB-0.0.0/sync",
        Some("op-token"),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 502);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        (body["code"].as_str(), body["stage"].as_str()),
        (Some("cannot_resolve_content"), Some("resolve"))
    );
    assert!(body["message"].as_str().unwrap().contains("LAB-0.0.0"));
    let bad_name = operator(url, "/api/v1/lablets/a..b%20c/sync", Some("op-token"), true)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_name.status(), 400);

    // One /metrics: cfgsync routes, sync results and stage durations.
    let metrics = cfgsync_test_support::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"lablet_sync_syncs_total{result="synced"} 2"#,
        r#"lablet_sync_syncs_total{result="error"} 1"#,
        r#"lablet_sync_stage_duration_seconds_count{stage="store",result="ok"} 2"#,
        r#"lablet_sync_stage_duration_seconds_count{stage="resolve",result="error"} 1"#,
        r#"cfgsync_http_requests_total{route="/register",status="202"} 2"#,
    ] {
        assert!(
            metrics.lines().any(|l| l == expected),
            "missing {expected:?} in\n{metrics}"
        );
    }
    served.stop().await;
}

#[tokio::test]
async fn stale_delivery_is_drained_in_the_background_once_the_target_is_back() {
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0.0", "")).await;
    // SE is down.
    env.se.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync_content"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&env.se)
        .await;
    let options = ServeOptions {
        retry_interval: Duration::from_millis(200),
        ..ServeOptions::default()
    };
    let served = Served::start(env.config(None), options).await;
    let url = &served.url;

    let report: serde_json::Value =
        operator(url, &format!("/api/v1/lablets/{LAB}/sync"), None, true)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(report["definition"]["status"], "stale");

    // SE comes back; the background drain delivers and the record turns synced.
    env.se.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync_content"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&env.se)
        .await;
    let mut status = String::new();
    for _ in 0..100 {
        let shown: serde_json::Value =
            operator(url, &format!("/api/v1/lablets/{LAB}"), None, false)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        status = shown["status"].as_str().unwrap().to_owned();
        if status == "synced" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "synced");
    let delivered = Env::bodies(&env.se).await;
    assert_eq!(
        delivered.len(),
        1,
        "delivered once after recovery: {delivered:?}"
    );
    served.stop().await;
}

/// A raw `POST {route}` with a registration: the answer's status and JSON
/// error body (`{"code","message"}`, empty for a 2xx).
async fn post_node(
    url: &str,
    route: &str,
    token: &str,
    registration: &NodeRegistration,
) -> (u16, String, String) {
    let response = cfgsync_test_support::http_client()
        .post(format!("{url}{route}"))
        .bearer_auth(token)
        .json(registration)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    if response.status().is_success() {
        return (status, String::new(), String::new());
    }
    let body: serde_json::Value = response.json().await.unwrap();
    (
        status,
        body["code"].as_str().unwrap().to_owned(),
        body["message"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn node_tokens_are_scoped_to_a_lablet_and_an_unsynced_lablet_names_the_cause() {
    const OTHER: &str = "LAB-2.0.0";
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0.0", "")).await;
    let secret = cfgsync_core::Secret::new("node-s3cret");
    let options = ServeOptions {
        auth: AuthConfig::default()
            .with_admin_token("op-token")
            .with_node_secret(secret.expose()),
        ..ServeOptions::default()
    };
    let served = Served::start(env.config(None), options).await;
    let url = &served.url;
    let scoped = cfgsync_core::auth::scoped_node_token(&secret, "node-a", LAB);

    // Scoped to LAB: registering for, or fetching, another lablet is 403,
    // and the error names why.
    for route in ["/register", "/node"] {
        let (status, code, message) = post_node(url, route, &scoped, &node("node-a", OTHER)).await;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{route}");
        assert_eq!(
            message,
            format!(
                "{route}: forbidden (403): the token of node \"node-a\" is scoped to \
                 lablet \"{LAB}\", not to lablet \"{OTHER}\""
            ),
        );
    }
    // The default requires scoped tokens: an unscoped per-node token is 403.
    let unscoped = cfgsync_core::auth::node_token(&secret, "node-b");
    let (status, _, message) = post_node(url, "/register", &unscoped, &node("node-b", LAB)).await;
    assert_eq!(status, 403);
    assert!(message.contains("not scoped"), "{message}");

    // Its own lablet: registers; not synced yet, so 425 naming the cause
    // (not "register, then retry"), and the same on a long-poll's end.
    let (status, ..) = post_node(url, "/register", &scoped, &node("node-a", LAB)).await;
    assert_eq!(status, 202);
    let (status, code, message) = post_node(url, "/node", &scoped, &node("node-a", LAB)).await;
    assert_eq!((status, code.as_str()), (425, "not_ready"));
    assert_eq!(
        message,
        format!("config of node \"node-a\" is not ready yet: lablet {LAB} has not been synced yet")
    );
    let (status, _, message) = post_node(url, "/node?wait=1", &scoped, &node("node-a", LAB)).await;
    assert_eq!(status, 425);
    assert!(message.contains("has not been synced yet"), "{message}");
    // A node not registered at all still hears the generic cause.
    let scoped_c = cfgsync_core::auth::scoped_node_token(&secret, "node-c", LAB);
    let (status, _, message) = post_node(url, "/node", &scoped_c, &node("node-c", LAB)).await;
    assert_eq!(status, 425);
    assert!(message.ends_with("register, then retry"), "{message}");

    // Once synced, the scoped node gets its lablet's files.
    let response = operator(
        url,
        &format!("/api/v1/lablets/{LAB}/sync"),
        Some("op-token"),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let nodes = CfgsyncClient::builder(url)
        .bearer_token(&scoped)
        .build()
        .unwrap();
    let payload = nodes.fetch_node_config(&node("node-a", LAB)).await.unwrap();
    assert_eq!(payload.files.get("cml.yaml").unwrap().content, CML);
    // The original client's wire format: no metadata on /node is checked
    // against the stored registration and served.
    let bare = NodeRegistration::new("node-a", "10.1.0.1".parse().unwrap());
    nodes.fetch_node_config(&bare).await.unwrap();
    served.stop().await;

    // `optional`: unscoped per-node tokens work (for any lablet), scoped ones
    // are still held to theirs.
    let options = ServeOptions {
        auth: AuthConfig::default().with_node_secret(secret.expose()),
        node_tokens: cfgsync_lablet::NodeTokenScope::Optional,
        ..ServeOptions::default()
    };
    let served = Served::start(env.config(None), options).await;
    let url = &served.url;
    let (status, ..) = post_node(url, "/register", &unscoped, &node("node-b", OTHER)).await;
    assert_eq!(status, 202);
    let (status, ..) = post_node(url, "/register", &scoped, &node("node-a", OTHER)).await;
    assert_eq!(status, 403);
    served.stop().await;
}

/// A JSON error answer: its status, `allow` header and `code`.
async fn json_error(response: reqwest::Response) -> (u16, Option<String>, String) {
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_owned());
    let content_type = response.headers().get("content-type").cloned();
    let text = response.text().await.unwrap();
    assert_eq!(
        content_type.as_ref().map(|v| v.to_str().unwrap()),
        Some("application/json"),
        "status {status}: {text:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    (status, allow, body["code"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn every_error_of_the_operator_api_is_json() {
    let env = Env::start().await;
    let served = Served::start(env.config(None), ServeOptions::default()).await;
    let url = &served.url;
    let http = cfgsync_test_support::http_client();

    // A wrong method names the right one, on operator and node routes alike.
    for (verb, route, allowed) in [
        ("GET", format!("/api/v1/lablets/{LAB}/sync"), "POST"),
        ("DELETE", "/api/v1/jobs/x".to_owned(), "GET"),
        ("PUT", "/api/v1/lablets".to_owned(), "GET"),
        ("GET", "/register".to_owned(), "POST"),
    ] {
        let response = http
            .request(verb.parse().unwrap(), format!("{url}{route}"))
            .send()
            .await
            .unwrap();
        let (status, allow, code) = json_error(response).await;
        assert_eq!(
            (status, code.as_str()),
            (405, "method_not_allowed"),
            "{verb} {route}"
        );
        assert!(
            allow.as_deref().is_some_and(|a| a.contains(allowed)),
            "{verb} {route}: allow {allow:?}"
        );
    }
    // Unknown routes, undecodable paths, bad queries, bad names, unknown jobs.
    for (verb, route, expected) in [
        ("GET", "/api/v1/nothing", (404, "not_found")),
        ("POST", "/api/v1/lablets/%FF/sync", (400, "bad_request")),
        ("GET", "/api/v1/lablets/%FF", (400, "bad_request")),
        ("GET", "/api/v1/lablets?bogus=1", (400, "bad_request")),
        ("POST", "/api/v1/lablets/..bad/sync", (400, "bad_request")),
        ("GET", "/api/v1/jobs/%FF", (400, "bad_request")),
        ("GET", "/api/v1/jobs/0-1", (404, "not_found")),
    ] {
        let response = http
            .request(verb.parse().unwrap(), format!("{url}{route}"))
            .header("prefer", "respond-async")
            .send()
            .await
            .unwrap();
        let (status, _, code) = json_error(response).await;
        assert_eq!((status, code.as_str()), expected, "{verb} {route}");
    }
    served.stop().await;
}

/// Polls job `location` until `done` holds for it (10 s at most).
async fn poll_job(
    url: &str,
    location: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut job = serde_json::Value::Null;
    for _ in 0..1000 {
        job = operator(url, location, Some("op"), false)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if done(&job) {
            return job;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job never reached the expected state: {job}");
}

#[tokio::test]
async fn async_sync_answers_202_with_a_job_that_shows_stage_bytes_and_outcome() {
    let env = Env::start().await;
    let package = sample_package("1.0.0", "");
    env.publish(LAB, package.clone()).await;
    // LDS answers slowly, so the job is seen running at fan-out.
    env.lds.reset().await;
    Mock::given(method("POST"))
        .and(path("/sync"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&env.lds)
        .await;
    let s3 = S3Harness::start().await.unwrap();
    let options = ServeOptions {
        auth: AuthConfig::default().with_admin_token("op"),
        ..ServeOptions::default()
    };
    let served = Served::start(s3_config(env.config(None), &s3), options).await;
    let url = &served.url;
    let sync = |name: &str| {
        operator(
            url,
            &format!("/api/v1/lablets/{name}/sync"),
            Some("op"),
            true,
        )
        .header("prefer", "respond-async, wait=1")
    };

    let accepted = sync(LAB).send().await.unwrap();
    assert_eq!(accepted.status(), 202);
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(accepted.headers()["preference-applied"], "respond-async");
    let job: serde_json::Value = accepted.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/v1/jobs/{}", job["id"].as_str().unwrap())
    );
    assert_eq!(job["lablet"], LAB);
    assert!(
        ["queued", "running"].contains(&job["state"].as_str().unwrap()),
        "{job}"
    );

    // Running at fan-out: the download and the upload are complete.
    let size = package.len() as u64;
    let running = poll_job(url, &location, |j| j["stage"] == "fan_out").await;
    assert_eq!(running["state"], "running", "{running}");
    assert_eq!(running["step"], 5);
    assert_eq!(running["steps"], 6);
    assert_eq!(
        running["bytes"]["download"],
        serde_json::json!({"done": size, "total": size})
    );
    assert_eq!(
        running["bytes"]["upload"],
        serde_json::json!({"done": size, "total": size})
    );
    assert!(running.get("result").is_none());

    let done = poll_job(url, &location, |j| j["state"] != "running").await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        done["result"]["definition"]["content_package_hash"],
        sha256(&package)
    );
    assert_eq!(done["result"]["uploaded"], true);
    assert!(done["finished_at"].is_string());

    // A failing sync fails its job with the blocking route's error.
    let failed = sync("LAB-9.9.9").send().await.unwrap();
    assert_eq!(failed.status(), 202);
    let location = failed.headers()["location"].to_str().unwrap().to_owned();
    let failed = poll_job(url, &location, |j| j["state"] == "failed").await;
    assert_eq!(
        failed["error"]["code"], "cannot_resolve_content",
        "{failed}"
    );
    assert_eq!(failed["error"]["stage"], "resolve");
    assert_eq!(failed["stage"], "resolve");
    assert!(failed.get("result").is_none());

    // Both are listed, newest first; without Prefer the route still blocks.
    let jobs: Vec<serde_json::Value> = operator(url, "/api/v1/jobs", Some("op"), false)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        jobs.iter()
            .map(|j| j["lablet"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["LAB-9.9.9", LAB]
    );
    let blocking = operator(
        url,
        &format!("/api/v1/lablets/{LAB}/sync"),
        Some("op"),
        true,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(blocking.status(), 200);
    let report: serde_json::Value = blocking.json().await.unwrap();
    assert_eq!(report["uploaded"], false);
    served.stop().await;
}
