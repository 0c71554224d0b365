//! The client's typed errors for every answer, and the auth matrix.
use crate::common;
use std::sync::Arc;
use std::time::Duration;

use crate::common::{TestServer, files, two_node_static_source};
use cfgsync_core::auth::node_token;
use cfgsync_core::{
    AuthConfig, CfgsyncClient, CfgsyncServerState, ConfigResolveResponse, ConfigSource, Error,
    NodeFilesReplacement, NodeRegistration, Secret,
};

fn node(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.0.0.5".parse().unwrap())
}

#[derive(Debug)]
struct Failing;

#[async_trait::async_trait]
impl ConfigSource for Failing {
    async fn register(&self, _: NodeRegistration) -> cfgsync_core::Result<()> {
        Ok(())
    }
    async fn resolve(&self, _: &NodeRegistration) -> cfgsync_core::Result<ConfigResolveResponse> {
        Err(Error::source_failure(
            "backing store read",
            std::io::Error::other("disk on fire"),
        ))
    }
    async fn check_ready(&self) -> cfgsync_core::Result<()> {
        Err(Error::Unavailable {
            message: "backing store does not answer".into(),
            source: None,
        })
    }
}

#[tokio::test]
async fn server_failures_map_to_rejected_with_code_and_message_and_hide_internals() {
    let server = TestServer::with_source(Arc::new(Failing)).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let err = client.fetch_node_config(&node("n")).await.unwrap_err();
    match &err {
        Error::Rejected {
            route,
            status,
            code,
            message,
        } => {
            assert_eq!((*route, *status, code.as_str()), ("/node", 500, "internal"));
            assert!(
                !message.contains("disk on fire"),
                "internals leaked: {message}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(err.is_retryable(), "a 5xx may pass later");
    let readyz = cfgsync_test_support::get(server.url("/readyz"))
        .await
        .unwrap();
    let (status, code, message) = common::error_code(readyz).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert!(message.contains("does not answer"), "{message}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn answers_of_an_original_server_in_text_plain_are_typed_too() {
    // The original answers its input errors as text/plain.
    let app = axum::Router::new()
        .route(
            "/register",
            axum::routing::post(|| async {
                (
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "Failed to deserialize: missing field `ip`",
                )
            }),
        )
        .route(
            "/node",
            axum::routing::post(|| async { (axum::http::StatusCode::NOT_FOUND, "") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = CfgsyncClient::new(&url).unwrap();
    let err = client.register_node(&node("n")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { status: 422, code, message, .. } if code.is_empty() && message.contains("missing field")),
        "{err:?}"
    );
    let err = client.fetch_node_config(&node("n")).await.unwrap_err();
    assert!(matches!(err, Error::MissingConfig { .. }), "{err:?}");
}

#[tokio::test]
async fn dead_and_silent_servers_give_transport_errors_within_the_timeout() {
    // Nothing listens: connection refused.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let client = CfgsyncClient::builder(format!("http://127.0.0.1:{port}"))
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let err = client.register_node(&node("n")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Transport {
                route: "/register",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable());

    // Accepts connections but never answers: the configured timeout fires.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let client = CfgsyncClient::builder(format!("http://{addr}"))
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.fetch_node_config(&node("n")),
    )
    .await
    .expect("the client's own timeout must end the request")
    .unwrap_err();
    match err {
        Error::Transport {
            route: "/node",
            source,
            ..
        } => assert!(source.is_timeout(), "{source:?}"),
        other => panic!("expected a transport timeout, got {other:?}"),
    }
    held.abort();
}

async fn auth_server(auth: AuthConfig) -> TestServer {
    TestServer::start(
        CfgsyncServerState::builder(Arc::new(two_node_static_source()))
            .with_auth(auth)
            .build(),
    )
    .await
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
async fn auth_matrix_none_shared_and_per_node() {
    let secret = Secret::new("node-secret");
    let token_1 = node_token(&secret, "node-1");
    let token_2 = node_token(&secret, "node-2");

    // Auth off: no token needed.
    let server = auth_server(AuthConfig::default()).await;
    client_with(&server.url, None)
        .register_node(&node("node-1"))
        .await
        .unwrap();
    server.shutdown().await.unwrap();

    // Shared token: any node with it, nobody without it.
    let server = auth_server(AuthConfig::default().with_shared_token("shared-token")).await;
    let shared = client_with(&server.url, Some("shared-token"));
    shared.register_node(&node("node-1")).await.unwrap();
    shared.register_node(&node("node-2")).await.unwrap();
    shared.fetch_node_config(&node("node-2")).await.unwrap();
    for token in [None, Some("wrong-token")] {
        let err = client_with(&server.url, token)
            .register_node(&node("node-1"))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Unauthorized {
                    route: "/register",
                    ..
                }
            ),
            "{token:?}: {err:?}"
        );
    }
    server.shutdown().await.unwrap();

    // Per-node tokens bind to one identifier.
    let auth = AuthConfig::default()
        .with_node_secret(secret.expose())
        .with_admin_token("admin-token");
    let server = auth_server(auth).await;
    let as_1 = client_with(&server.url, Some(&token_1));
    as_1.register_node(&node("node-1")).await.unwrap();
    as_1.fetch_node_config(&node("node-1")).await.unwrap();
    // A's token on B: 403 on both routes.
    let err = as_1.register_node(&node("node-2")).await.unwrap_err();
    assert!(
        matches!(&err, Error::Forbidden { route: "/register", message } if message.contains("node-1")),
        "{err:?}"
    );
    let err = as_1.fetch_node_config(&node("node-2")).await.unwrap_err();
    assert!(
        matches!(err, Error::Forbidden { route: "/node", .. }),
        "{err:?}"
    );
    // Forged: right shape, wrong MAC; another secret's token; garbage; missing.
    let forged = format!("node-2.{}", "0".repeat(64));
    let other_secret = node_token(&Secret::new("another-secret"), "node-2");
    for token in [
        Some(forged.as_str()),
        Some(other_secret.as_str()),
        Some("node-2"),
        None,
    ] {
        let client = client_with(&server.url, token);
        let err = client.register_node(&node("node-2")).await.unwrap_err();
        assert!(
            matches!(err, Error::Unauthorized { .. }),
            "{token:?}: {err:?}"
        );
        let err = client.fetch_node_config(&node("node-2")).await.unwrap_err();
        assert!(
            matches!(err, Error::Unauthorized { .. }),
            "{token:?}: {err:?}"
        );
    }
    client_with(&server.url, Some(&token_2))
        .register_node(&node("node-2"))
        .await
        .unwrap();

    // The admin route: node tokens are forbidden, the admin token passes.
    let replacement = NodeFilesReplacement {
        identifier: "node-1".into(),
        files: files(&[("/config.yaml", "replaced\n")]),
    };
    let err = as_1.replace_node_files(&replacement).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Forbidden {
                route: "/node/replace",
                ..
            }
        ),
        "{err:?}"
    );
    let err = client_with(&server.url, None)
        .replace_node_files(&replacement)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    client_with(&server.url, Some("admin-token"))
        .replace_node_files(&replacement)
        .await
        .unwrap();
    let payload = as_1.fetch_node_config(&node("node-1")).await.unwrap();
    assert_eq!(
        payload.files.get("/config.yaml").unwrap().content,
        "replaced\n"
    );

    // Health routes stay open.
    assert_eq!(
        cfgsync_test_support::get(server.url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    // Tokens never show in Debug.
    let printed = format!(
        "{as_1:?} {:?}",
        AuthConfig::default().with_admin_token("admin-token")
    );
    assert!(
        !printed.contains(&token_1) && !printed.contains("admin-token"),
        "{printed}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn tokens_of_a_rotated_secret_are_refused() {
    let old = node_token(&Secret::new("secret-2025"), "node-1");
    let server = auth_server(AuthConfig::default().with_node_secret("secret-2026")).await;
    let err = client_with(&server.url, Some(&old))
        .register_node(&node("node-1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err:?}");
    let new = node_token(&Secret::new("secret-2026"), "node-1");
    client_with(&server.url, Some(&new))
        .register_node(&node("node-1"))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}

fn scoped(id: &str, tenant: Option<&str>) -> NodeRegistration {
    match tenant {
        Some(tenant) => node(id)
            .with_metadata(&serde_json::json!({"tenant": tenant, "rack": 7}))
            .unwrap(),
        None => node(id),
    }
}

#[tokio::test]
async fn scoped_node_tokens_hold_a_node_to_its_scope_on_register_and_node() {
    let secret = Secret::new("node-secret");
    let token_a = cfgsync_core::auth::scoped_node_token(&secret, "node-1", "tenant-a");
    let auth = AuthConfig::default()
        .with_node_secret(secret.expose())
        .with_shared_token("shared-token")
        .with_scope_key("tenant", true);
    let server = auth_server(auth).await;
    let as_a = client_with(&server.url, Some(&token_a));
    let forbidden = |err: Error, route: &str, scope: &str| match err {
        Error::Forbidden {
            route: got,
            message,
        } => {
            assert_eq!(got, route);
            assert!(
                message.contains(r#"scoped to tenant "tenant-a""#) && message.contains(scope),
                "{message}"
            );
        }
        other => panic!("expected 403 on {route}, got {other:?}"),
    };

    // Another scope: refused on both routes, before anything is stored.
    let err = as_a
        .register_node(&scoped("node-1", Some("tenant-b")))
        .await
        .unwrap_err();
    forbidden(err, "/register", r#"not to tenant "tenant-b""#);
    let err = as_a
        .fetch_node_config(&scoped("node-1", Some("tenant-b")))
        .await
        .unwrap_err();
    forbidden(err, "/node", r#"not to tenant "tenant-b""#);
    // The JSON body names the reason too.
    let response = cfgsync_test_support::http_client()
        .post(server.url("/register"))
        .bearer_auth(&token_a)
        .json(&scoped("node-1", Some("tenant-b")))
        .send()
        .await
        .unwrap();
    let (status, code, message) = common::error_code(response).await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    assert!(message.contains(r#"not to tenant "tenant-b""#), "{message}");
    // No scope named and none stored yet: refused.
    let err = as_a
        .register_node(&scoped("node-1", None))
        .await
        .unwrap_err();
    forbidden(err, "/register", "names no tenant");

    // Its own scope: registers and fetches, also without metadata on /node
    // (checked against the stored registration).
    as_a.register_node(&scoped("node-1", Some("tenant-a")))
        .await
        .unwrap();
    as_a.fetch_node_config(&scoped("node-1", Some("tenant-a")))
        .await
        .unwrap();
    as_a.fetch_node_config(&scoped("node-1", None))
        .await
        .unwrap();

    // Whoever stored another scope (here the shared token), the node's
    // token is not served it.
    let shared = client_with(&server.url, Some("shared-token"));
    shared
        .register_node(&scoped("node-1", Some("tenant-b")))
        .await
        .unwrap();
    for body in [Some("tenant-a"), None] {
        let err = as_a
            .fetch_node_config(&scoped("node-1", body))
            .await
            .unwrap_err();
        forbidden(err, "/node", r#"not to tenant "tenant-b""#);
    }

    // Required: an unscoped per-node token is refused, naming why.
    let unscoped = client_with(&server.url, Some(&node_token(&secret, "node-2")));
    let err = unscoped
        .register_node(&scoped("node-2", Some("tenant-a")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Forbidden { message, .. } if message.contains("not scoped")),
        "{err:?}"
    );
    server.shutdown().await.unwrap();

    // Not required: unscoped tokens work as before, with any scope.
    let server = auth_server(
        AuthConfig::default()
            .with_node_secret(secret.expose())
            .with_scope_key("tenant", false),
    )
    .await;
    let unscoped = client_with(&server.url, Some(&node_token(&secret, "node-2")));
    unscoped
        .register_node(&scoped("node-2", Some("tenant-b")))
        .await
        .unwrap();
    unscoped
        .fetch_node_config(&scoped("node-2", Some("tenant-b")))
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}
