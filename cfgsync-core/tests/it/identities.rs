//! Identities and secrets: one identifier rule that every valid identifier can
//! authenticate under, 401s that say why, a client that refuses what the
//! server would refuse, and `Secret` done right.

use crate::common;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::TestServer;
use cfgsync_core::auth::node_token;
use cfgsync_core::{
    AuthConfig, CfgsyncClient, CfgsyncServerState, Error, NodeRegistration, Secret,
    StaticConfigSource, validate_identifier,
};
use proptest::prelude::*;

const NODE_SECRET: &str = "node-secret-for-identities";

async fn auth_server() -> TestServer {
    TestServer::start(
        CfgsyncServerState::builder(Arc::new(StaticConfigSource::default()))
            .with_auth(
                AuthConfig::default()
                    .with_node_secret(NODE_SECRET)
                    .with_admin_token("admin-token"),
            )
            .build(),
    )
    .await
}

fn registration(identifier: &str) -> NodeRegistration {
    NodeRegistration::new(identifier, "10.0.0.7".parse().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CFGSYNC_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
    ))]

    /// Every identifier the rule accepts gets a token that registers it and
    /// reaches its files (404 missing_config here: authenticated and
    /// registered, nothing to serve), and no other's.
    #[test]
    fn every_valid_identifier_can_authenticate(
        identifier in "[A-Za-z0-9._:@-]{1,253}",
    ) {
        prop_assume!(identifier != "." && identifier != "..");
        validate_identifier(&identifier).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let server = auth_server().await;
            let token = node_token(&Secret::new(NODE_SECRET), &identifier);
            let client = CfgsyncClient::builder(&server.url).bearer_token(&token).build().unwrap();
            client.register_node(&registration(&identifier)).await.unwrap();
            let fetched = client.fetch_node_config(&registration(&identifier)).await;
            assert!(matches!(fetched, Err(Error::MissingConfig { .. })), "{fetched:?}");
            let other = client.register_node(&registration("someone-else")).await;
            assert!(matches!(other, Err(Error::Forbidden { .. })), "{other:?}");
            server.shutdown().await.unwrap();
        });
    }
}

#[test]
fn identifiers_outside_the_rule_are_refused() {
    for bad in [
        "ñodo",
        "node 1",
        "a/b",
        "tab\there",
        "",
        ".",
        "..",
        "x,y",
        "é",
    ] {
        assert!(
            matches!(
                validate_identifier(bad),
                Err(Error::Invalid {
                    field: "identifier",
                    ..
                })
            ),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn the_client_refuses_an_identifier_the_server_would_refuse_before_any_request() {
    // A listener that counts connections: the client must make none.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let acceptor = tokio::spawn(async move {
        while let Ok((_socket, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
        }
    });
    let client = CfgsyncClient::new(&url).unwrap();
    let node = registration("ñodo-1");
    for result in [
        client.register_node(&node).await,
        client.fetch_node_config(&node).await.map(|_| ()),
    ] {
        match result {
            Err(Error::Invalid {
                field: "identifier",
                reason,
            }) => assert!(reason.contains("non-ASCII"), "{reason}"),
            other => panic!("expected Invalid identifier, got {other:?}"),
        }
    }
    tokio::task::yield_now().await;
    assert_eq!(connections.load(Ordering::SeqCst), 0);
    acceptor.abort();
}

#[tokio::test]
async fn a_401_says_why() {
    let server = auth_server().await;
    let body = r#"{"identifier":"node-1","ip":"10.0.0.1"}"#;
    let other_secret_token = node_token(&Secret::new("another-secret"), "node-1");
    let cases: [(Option<&[u8]>, u16, &str); 7] = [
        (None, 401, "missing Authorization header"),
        (Some(b"Basic bm9kZTpwdw=="), 401, "scheme is not Bearer"),
        (Some(b"Bearer"), 401, "not `Bearer <token>`"),
        (Some(b"Bearer \xc3\xb1"), 401, "not visible ASCII"),
        (
            Some(b"Bearer nope"),
            401,
            "matches none of this server's tokens",
        ),
        (
            Some(format!("Bearer {other_secret_token}").into_bytes().leak()),
            401,
            "not issued under this server's node secret",
        ),
        (
            Some(
                format!("Bearer {}", node_token(&Secret::new(NODE_SECRET), "node-2"))
                    .into_bytes()
                    .leak(),
            ),
            403,
            "belongs to node \"node-2\"",
        ),
    ];
    let http = cfgsync_test_support::http_client();
    for (header, status, why) in cases {
        let mut request = http
            .post(server.url("/register"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(value) = header {
            request = request.header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(value).unwrap(),
            );
        }
        let (got, code, message) = common::error_code(request.send().await.unwrap()).await;
        assert_eq!(got, status, "{header:?}: {message}");
        assert_eq!(
            code,
            if status == 401 {
                "unauthorized"
            } else {
                "forbidden"
            }
        );
        assert!(
            message.contains(why),
            "{header:?}: {message:?} should say {why:?}"
        );
    }
    server.shutdown().await.unwrap();
}

#[test]
fn secrets_compare_by_value_never_serialize_and_never_print() {
    let secret = Secret::new("s3cret-value");
    assert_eq!(secret, Secret::new("s3cret-value"));
    assert_ne!(secret, Secret::new("s3cret-valuf"));
    assert_ne!(secret, Secret::new("s3cret"));
    assert!(secret.ct_eq("s3cret-value") && !secret.ct_eq(""));
    assert_eq!(format!("{secret:?}"), "***");
    let config = AuthConfig::default()
        .with_shared_token("shared-s3cret")
        .with_node_secret("node-s3cret");
    let json = serde_json::to_string(&config).unwrap();
    assert!(!json.contains("s3cret"), "{json}");
    assert_eq!(json, "{}", "secrets are skipped, not masked");
    // `Secret` itself has no `Serialize` (a compile_fail doc test on it).
    // Config files still load their secrets.
    let loaded: Secret = serde_json::from_str("\"from-file\"").unwrap();
    assert_eq!(loaded.expose(), "from-file");
}
