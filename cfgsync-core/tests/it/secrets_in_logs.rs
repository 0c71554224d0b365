//! Secrets never reach the logs: every line the server writes at TRACE level is
//! captured. The subscriber is this test's thread's default, not the process's
//! (other tests share the binary): `#[tokio::test]` runs the server, the
//! client and every task they spawn on this one thread.
use std::sync::Arc;

use crate::common::{TestServer, files, two_node_static_source};
use cfgsync_core::auth::node_token;
use cfgsync_core::{
    AuthConfig, CfgsyncClient, CfgsyncServerState, NodeFilesReplacement, NodeRegistration, Secret,
};
use cfgsync_test_support::CapturedLogs;

fn node(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.0.0.5".parse().unwrap())
}

fn client_with(url: &str, token: Option<&str>) -> CfgsyncClient {
    let builder = CfgsyncClient::builder(url);
    match token {
        Some(token) => builder.bearer_token(token),
        None => builder,
    }
    .build()
    .unwrap()
}

#[tokio::test]
async fn secrets_never_reach_the_logs() {
    // every line the server writes, at the most verbose level
    let (logs, _captured) = CapturedLogs::start("trace");

    let secret = Secret::new("node-secret-XYZZY");
    let token = node_token(&secret, "node-1");
    let auth = AuthConfig::default()
        .with_node_secret(secret.expose())
        .with_shared_token("shared-token-PLUGH")
        .with_admin_token("admin-token-FROBOZZ");
    let state = CfgsyncServerState::builder(Arc::new(two_node_static_source()))
        .with_auth(auth)
        .build();
    tracing::info!(state = ?state, "server state");
    let server = TestServer::start(state).await;
    let good = client_with(&server.url, Some(&token));
    good.register_node(&node("node-1")).await.unwrap();
    good.fetch_node_config(&node("node-1")).await.unwrap();
    let _ = good.fetch_node_config(&node("node-2")).await;
    let _ = client_with(&server.url, Some("shared-token-PLUGH"))
        .register_node(&node("node-2"))
        .await;
    let _ = client_with(&server.url, Some("forged.0000"))
        .register_node(&node("node-2"))
        .await;
    let _ = client_with(&server.url, Some("admin-token-FROBOZZ"))
        .replace_node_files(&NodeFilesReplacement {
            identifier: "node-1".into(),
            files: files(&[("a", "b")]),
        })
        .await;
    tracing::info!(client = ?good, "client");
    server.shutdown().await.unwrap();

    let text = logs.text();
    assert!(
        text.contains("node registered"),
        "the capture works: {text}"
    );
    for secret in [
        "XYZZY",
        "PLUGH",
        "FROBOZZ",
        token.rsplit_once('.').unwrap().1,
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the logs:\n{text}"
        );
    }
}
