//! The status page (`GET /`) and its JSON twin (`GET /api/v1/status`): what they
//! show, who may see them, and that values from nodes are shown as text.
use std::sync::Arc;

use crate::common::{TestServer, error_code, post_json, two_node_static_source};
use async_trait::async_trait;
use cfgsync_core::auth::node_token;
use cfgsync_core::status::maud::html;
use cfgsync_core::{
    AuthConfig, CfgsyncClient, CfgsyncServerState, FetchOutcome, NodeRegistration, RenderedSection,
    Secret, StatusSection,
};
use cfgsync_test_support::long_poll;
use serde_json::{Value, json};

fn node(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.0.0.5".parse().unwrap())
}

async fn get(url: &str, auth: Option<&str>) -> reqwest::Response {
    let mut request = cfgsync_test_support::http_client().get(url);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    request.send().await.unwrap()
}

async fn status_json(server: &TestServer) -> Value {
    let response = get(&server.url("/api/v1/status"), None).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

fn node_entry<'a>(status: &'a Value, id: &str) -> &'a Value {
    status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["identifier"] == id)
        .unwrap_or_else(|| panic!("{id} not listed in {status:#}"))
}

/// An app's section, as an adapter adds one.
#[derive(Debug)]
struct Inventory;

#[async_trait]
impl StatusSection for Inventory {
    fn key(&self) -> &str {
        "inventory"
    }
    async fn render(&self) -> cfgsync_core::Result<RenderedSection> {
        Ok(RenderedSection::new(
            json!({"widgets": 3}),
            html! { section #inventory { h2 { "Inventory" } p { "3 widgets" } } },
        ))
    }
}

#[tokio::test]
async fn status_shows_each_node_its_fetches_the_counts_and_the_apps_sections() {
    let state = CfgsyncServerState::builder(Arc::new(two_node_static_source()))
        .with_app("test-server", "9.9.9")
        .with_status_section(Arc::new(Inventory))
        .build();
    let server = TestServer::start(state).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let one = node("node-1")
        .with_metadata(&json!({"rack": "r7"}))
        .unwrap();
    client.register_node(&one).await.unwrap();
    let FetchOutcome::Updated {
        etag: Some(etag), ..
    } = client
        .fetch_node_config_with(&one, &Default::default())
        .await
        .unwrap()
    else {
        panic!("a payload with an ETag expected")
    };
    // node-2 is not registered: its long-poll is held (425 until it registers).
    let held = long_poll(&client, &node("node-2"), None);
    server.until_long_polls_waiting(1).await;
    // Strangers asking leave no trace: the status lists the source's nodes only.
    for i in 0..50 {
        let _ = client
            .fetch_node_config(&node(&format!("stranger-{i}")))
            .await;
    }

    let status = status_json(&server).await;
    assert_eq!(
        (&status["server"], &status["version"], &status["auth"]),
        (&json!("test-server"), &json!("9.9.9"), &json!(false))
    );
    assert_eq!(status["source"]["kind"], "registration");
    assert_eq!(
        status["counts"],
        json!({"nodes": 2, "ready": 1, "waiting": 1, "missing": 0, "failed": 0, "long_polls_held": 1})
    );
    let first = node_entry(&status, "node-1");
    assert_eq!(first["state"], "ready");
    assert_eq!(first["ready"], true);
    assert_eq!(first["ip"], "10.0.0.5");
    assert_eq!(first["metadata"], json!({"rack": "r7"}));
    assert_eq!(first["etag_served"], json!(etag));
    assert_eq!(first["etag"], json!(etag));
    assert_eq!(first["last_status"], 200);
    assert!(first["registered_at"].is_string() && first["last_fetch_at"].is_string());
    let second = node_entry(&status, "node-2");
    assert_eq!(
        (&second["state"], &second["reason"], &second["ready"]),
        (
            &json!("not_ready"),
            &json!("not registered yet"),
            &json!(false)
        )
    );
    assert_eq!(second["etag_served"], Value::Null);
    assert_eq!(status["sections"], json!({"inventory": {"widgets": 3}}));

    let response = get(&server.url("/"), None).await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let page = response.text().await.unwrap();
    for expected in [
        "<title>test-server status</title>",
        "http-equiv=\"refresh\"",
        "data-node=\"node-1\"",
        "data-node=\"node-2\"",
        "not registered yet",
        "3 widgets",
        "{&quot;rack&quot;:&quot;r7&quot;}",
    ] {
        assert!(page.contains(expected), "page lacks {expected:?}:\n{page}");
    }
    assert!(!page.contains("stranger-"), "{page}");
    held.abort();
}

#[tokio::test]
async fn status_needs_the_admin_token_when_auth_is_on() {
    let auth = AuthConfig::default()
        .with_shared_token("shared-token")
        .with_node_secret("node-secret")
        .with_admin_token("admin-token");
    let state = CfgsyncServerState::builder(Arc::new(two_node_static_source()))
        .with_auth(auth)
        .build();
    let server = TestServer::start(state).await;
    let node_1 = node_token(&Secret::new("node-secret"), "node-1");
    use base64::Engine as _;
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("operator:{password}"))
        )
    };
    for path in ["/", "/api/v1/status"] {
        let url = server.url(path);
        // No token: 401, with a Basic challenge so a browser asks the person.
        let response = get(&url, None).await;
        assert_eq!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .split(' ')
                .next(),
            Some("Basic")
        );
        assert_eq!(error_code(response).await.1, "unauthorized", "{path}");
        // Node tokens are not enough: 403.
        for token in [format!("Bearer {node_1}"), "Bearer shared-token".into()] {
            let (status, code, _) = error_code(get(&url, Some(&token)).await).await;
            assert_eq!(
                (status, code.as_str()),
                (403, "forbidden"),
                "{path} {token}"
            );
        }
        // A forged token: 401.
        let (status, _, _) = error_code(get(&url, Some(&basic("guess"))).await).await;
        assert_eq!(status, 401, "{path}");
        // The admin token, as a bearer token or as a browser's Basic password.
        for header in ["Bearer admin-token".to_owned(), basic("admin-token")] {
            assert_eq!(get(&url, Some(&header)).await.status(), 200, "{path}");
        }
    }
    let status: Value = get(&server.url("/api/v1/status"), Some("Bearer admin-token"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["auth"], true);
}

#[tokio::test]
async fn values_from_nodes_are_shown_as_text_never_as_markup() {
    let server = TestServer::with_source(Arc::new(two_node_static_source())).await;
    let hostile_metadata = json!({"note": "</code><script>document.title='pwned'</script>"});
    let hostile_id = "<img src=x onerror=document.title='pwned'>";
    let registered = post_json(
        &server.url("/register"),
        &json!({"identifier": hostile_id, "ip": "10.0.0.9", "metadata": hostile_metadata})
            .to_string(),
    )
    .await;
    // Either the identifier rule refuses it, or it is shown escaped.
    let id_accepted = match registered.status().as_u16() {
        202 => true,
        400 => false,
        other => panic!("unexpected {other}"),
    };
    let with_metadata = node("node-1").with_metadata(&hostile_metadata).unwrap();
    CfgsyncClient::new(&server.url)
        .unwrap()
        .register_node(&with_metadata)
        .await
        .unwrap();

    let page = get(&server.url("/"), None).await.text().await.unwrap();
    assert!(!page.contains("<script"), "a script got through:\n{page}");
    assert!(!page.contains("<img"), "an element got through:\n{page}");
    assert!(
        page.contains("&lt;/code&gt;&lt;script&gt;document.title='pwned'&lt;/script&gt;"),
        "{page}"
    );
    if id_accepted {
        assert!(
            page.contains("&lt;img src=x onerror=document.title='pwned'&gt;"),
            "{page}"
        );
        assert!(page.contains("data-node=\"&lt;img"), "{page}");
    }
    // The JSON twin carries the values as they were sent.
    let status = status_json(&server).await;
    assert_eq!(node_entry(&status, "node-1")["metadata"], hostile_metadata);
}
