//! The HTTP contract end to end: a real server on 127.0.0.1:0, real clients.
use std::sync::Arc;
use std::time::Duration;

use crate::common::{TestServer, error_code, files, post_json, two_node_static_source};
use cfgsync_core::{
    ArtifactFile, BundleConfigSource, CfgsyncClient, Error, FetchOptions, FetchOutcome,
    NodeArtifactsPayload, NodeFilesReplacement, NodeRegistration, StaticConfigSource,
};
use cfgsync_test_support::{long_poll, woken};

fn node(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.0.0.5".parse().unwrap())
}

#[tokio::test]
async fn static_source_register_then_fetch_flow_merges_shared_files() {
    let server = TestServer::with_source(Arc::new(two_node_static_source())).await;
    let client = CfgsyncClient::new(&server.url).unwrap();

    // Not registered yet: 425.
    let err = client.fetch_node_config(&node("node-1")).await.unwrap_err();
    assert!(
        matches!(&err, Error::NotReady { identifier } if identifier == "node-1"),
        "{err}"
    );
    assert!(err.is_retryable());

    client.register_node(&node("node-1")).await.unwrap();
    let payload = client.fetch_node_config(&node("node-1")).await.unwrap();
    let paths: Vec<_> = payload.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["/config.yaml", "/peers.txt", "/shared.yaml"]);
    assert_eq!(
        payload.files.get("/shared.yaml").unwrap().content,
        "shared\n"
    );

    // The node's own file wins the clash with the shared one.
    client.register_node(&node("node-2")).await.unwrap();
    let payload = client.fetch_node_config(&node("node-2")).await.unwrap();
    assert_eq!(
        payload.files.get("/shared.yaml").unwrap().content,
        "node-2 wins\n"
    );
    assert_eq!(
        payload.files.get("/peers.txt").unwrap().content,
        "shared peers\n"
    );

    // Registered, but the map has nothing for it: 404 missing_config.
    client.register_node(&node("node-3")).await.unwrap();
    let err = client.fetch_node_config(&node("node-3")).await.unwrap_err();
    assert!(
        matches!(&err, Error::MissingConfig { identifier } if identifier == "node-3"),
        "{err}"
    );
    assert!(!err.is_retryable());

    // The legacy alias answers as /node.
    let legacy = post_json(
        &server.url("/init-with-node"),
        r#"{"identifier":"node-1","ip":"10.0.0.5"}"#,
    )
    .await;
    assert_eq!(legacy.status(), 200);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn bundle_files_in_yaml_and_json_serve_without_registration() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("bundle.yaml");
    std::fs::write(
        &yaml,
        "nodes:\n  - identifier: node-1\n    files:\n      - path: /config.yaml\n        content: \"id: 1\\n\"\n        mode: \"0600\"\n  - identifier: node-2\n    files:\n      - path: /peers.txt\n        content: mine\nshared_files:\n  - path: /peers.txt\n    content: \"a\\nb\\n\"\n",
    )
    .unwrap();
    let json = dir.path().join("bundle.json");
    std::fs::write(
        &json,
        r#"{"nodes":[{"identifier":"node-1","files":[{"path":"/config.yaml","content":"id: 1\n","mode":384}]},
                   {"identifier":"node-2","files":[{"path":"/peers.txt","content":"mine"}]}],
            "shared_files":[{"path":"/peers.txt","content":"a\nb\n"}]}"#,
    )
    .unwrap();

    let mut etags = Vec::new();
    for path in [&yaml, &json] {
        let server =
            TestServer::with_source(Arc::new(BundleConfigSource::from_path(path).unwrap())).await;
        let client = CfgsyncClient::new(&server.url).unwrap();
        // No registration needed in bundle mode.
        let FetchOutcome::Updated { payload, etag } = client
            .fetch_node_config_with(&node("node-1"), &FetchOptions::default())
            .await
            .unwrap()
        else {
            panic!("expected a payload");
        };
        assert_eq!(payload.files.len(), 2, "shared file merged in: {payload:?}");
        assert_eq!(payload.files.get("/config.yaml").unwrap().mode, Some(0o600));
        assert_eq!(payload.files.get("/peers.txt").unwrap().content, "a\nb\n");
        etags.push(etag.unwrap());
        let own = client.fetch_node_config(&node("node-2")).await.unwrap();
        assert_eq!(own.files.get("/peers.txt").unwrap().content, "mine");
        // Registering is accepted and changes nothing; an unknown node is 404.
        client.register_node(&node("node-9")).await.unwrap();
        let err = client.fetch_node_config(&node("node-9")).await.unwrap_err();
        assert!(matches!(err, Error::MissingConfig { .. }), "{err}");
        server.shutdown().await.unwrap();
    }
    // Same content in YAML and JSON: same ETag.
    assert_eq!(etags[0], etags[1]);
}

#[tokio::test]
async fn bad_bundle_files_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "dup.yaml",
            "nodes:\n  - identifier: a\n  - identifier: a\n",
            "appears twice",
        ),
        (
            "dup-path.yaml",
            "nodes:\n  - identifier: a\n    files:\n      - {path: x, content: '1'}\n      - {path: x, content: '2'}\n",
            "duplicate artifact path",
        ),
        (
            "bad-id.yaml",
            "nodes:\n  - identifier: a/b\n",
            "path separator",
        ),
        ("broken.json", "{\"nodes\": [", "EOF"),
        ("shape.yaml", "nodes: 12\n", "expected sequence"),
    ];
    for (name, text, expected) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let err = BundleConfigSource::from_path(&path).unwrap_err();
        let message = err.to_string();
        assert!(matches!(err, Error::ParseFile { .. }), "{name}: {message}");
        assert!(
            message.contains(name) && message.contains(expected),
            "{name}: {message}"
        );
    }
    let err = BundleConfigSource::from_path(dir.path().join("absent.yaml")).unwrap_err();
    assert!(matches!(err, Error::ReadFile { .. }), "{err}");
}

#[tokio::test]
async fn wire_bytes_match_the_original() {
    let server = TestServer::with_source(Arc::new(two_node_static_source())).await;

    // A registration exactly as the original client sends it: 202, empty body.
    let response = post_json(
        &server.url("/register"),
        r#"{"identifier":"node-1","ip":"10.0.0.5"}"#,
    )
    .await;
    assert_eq!(response.status(), 202);
    assert!(response.bytes().await.unwrap().is_empty());
    // With metadata too.
    let response = post_json(
        &server.url("/register"),
        r#"{"identifier":"node-2","ip":"10.0.0.6","metadata":{"network_port":3000}}"#,
    )
    .await;
    assert_eq!(response.status(), 202);

    let response = post_json(
        &server.url("/node"),
        r#"{"identifier":"node-1","ip":"10.0.0.5"}"#,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"schema_version":1,"files":[{"path":"/config.yaml","content":"id: node-1\n"},{"path":"/peers.txt","content":"shared peers\n"},{"path":"/shared.yaml","content":"shared\n"}]}"#
    );

    // A payload as the original server sends it (and one from a newer server with
    // fields we do not know) parses.
    let original: NodeArtifactsPayload = serde_json::from_str(
        r#"{"schema_version":1,"files":[{"path":"/config.yaml","content":"a: 1\n"}]}"#,
    )
    .unwrap();
    assert_eq!(
        original.files.get("/config.yaml").unwrap().content,
        "a: 1\n"
    );
    let newer: NodeArtifactsPayload = serde_json::from_str(
        r#"{"schema_version":1,"generation":7,"files":[{"path":"a","content":"x","owner":"root"}]}"#,
    )
    .unwrap();
    assert_eq!(newer.files.len(), 1);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn etag_is_stable_answers_304_and_changes_with_content() {
    let source = Arc::new(two_node_static_source());
    let server = TestServer::with_source(source.clone()).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    client.register_node(&node("node-1")).await.unwrap();

    let fetch = |etag: Option<String>| {
        let client = client.clone();
        async move {
            client
                .fetch_node_config_with(
                    &node("node-1"),
                    &FetchOptions {
                        if_none_match: etag,
                        wait: None,
                    },
                )
                .await
                .unwrap()
        }
    };
    let FetchOutcome::Updated {
        etag: Some(first), ..
    } = fetch(None).await
    else {
        panic!("expected a payload with an ETag");
    };
    let FetchOutcome::Updated {
        etag: Some(again), ..
    } = fetch(None).await
    else {
        panic!("expected a payload with an ETag");
    };
    assert_eq!(first, again, "identical payloads keep their ETag");
    assert_eq!(fetch(Some(first.clone())).await, FetchOutcome::NotModified);

    // 304 over the wire has no body and repeats the ETag.
    let raw = cfgsync_test_support::http_client()
        .post(server.url("/node"))
        .header("content-type", "application/json")
        .header("if-none-match", &first)
        .body(r#"{"identifier":"node-1","ip":"10.0.0.5"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 304);
    assert_eq!(raw.headers()["etag"].to_str().unwrap(), first);
    assert!(raw.bytes().await.unwrap().is_empty());

    // Replacing the content changes the ETag, and the old one no longer matches.
    client
        .replace_node_files(&NodeFilesReplacement {
            identifier: "node-1".into(),
            files: files(&[("/config.yaml", "id: node-1\nversion: 2\n")]),
        })
        .await
        .unwrap();
    let FetchOutcome::Updated {
        payload,
        etag: Some(changed),
    } = fetch(Some(first.clone())).await
    else {
        panic!("expected the new payload");
    };
    assert_ne!(changed, first);
    assert_eq!(
        payload.files.get("/config.yaml").unwrap().content,
        "id: node-1\nversion: 2\n"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn long_poll_wakes_on_registration_and_on_change_and_old_clients_answer_at_once() {
    let source = Arc::new(two_node_static_source());
    let server = TestServer::with_source(source.clone()).await;
    let client = CfgsyncClient::new(&server.url).unwrap();

    // Without wait: immediate 425, as the original.
    assert!(matches!(
        client.fetch_node_config(&node("node-1")).await,
        Err(Error::NotReady { .. })
    ));

    // A long-poll held while node-1 is not registered returns once it registers.
    let waiting = long_poll(&client, &node("node-1"), None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "long-poll must hold while not ready"
    );
    client.register_node(&node("node-1")).await.unwrap();
    let (_, etag) = woken(waiting).await;

    // Holding the current ETag, a long-poll waits for a change and wakes on it.
    let waiting = long_poll(&client, &node("node-1"), Some(etag.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "long-poll must hold while the ETag matches"
    );
    client
        .replace_node_files(&NodeFilesReplacement {
            identifier: "node-1".into(),
            files: files(&[("/config.yaml", "v2\n")]),
        })
        .await
        .unwrap();
    let (payload, new_etag) = woken(waiting).await;
    assert_ne!(new_etag, etag);
    assert_eq!(payload.files.get("/config.yaml").unwrap().content, "v2\n");

    // At the end of a short wait with nothing changed: the answer it would give.
    let outcome = client
        .fetch_node_config_with(
            &node("node-1"),
            &FetchOptions {
                if_none_match: Some(new_etag),
                wait: Some(Duration::from_secs(1)),
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, FetchOutcome::NotModified);

    // A missing config is final: answered at once, not held for the wait.
    client.register_node(&node("node-3")).await.unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.fetch_node_config_with(
            &node("node-3"),
            &FetchOptions {
                if_none_match: None,
                wait: Some(Duration::from_secs(60)),
            },
        ),
    )
    .await
    .expect("404 must not be held for the 60 s wait");
    assert!(
        matches!(answer, Err(Error::MissingConfig { .. })),
        "{answer:?}"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_releases_held_long_polls() {
    let server = TestServer::with_source(Arc::new(StaticConfigSource::default())).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let waiting = tokio::spawn(async move {
        client
            .fetch_node_config_with(
                &node("node-1"),
                &FetchOptions {
                    if_none_match: None,
                    wait: Some(Duration::from_secs(60)),
                },
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(10), server.shutdown())
        .await
        .unwrap()
        .unwrap();
    let answer = waiting.await.unwrap();
    assert!(matches!(answer, Err(Error::NotReady { .. })), "{answer:?}");
}

#[tokio::test]
async fn every_bad_input_gets_its_status_and_json_code() {
    let server = TestServer::with_source(Arc::new(two_node_static_source())).await;
    let http = cfgsync_test_support::http_client();
    let long_id = "x".repeat(254);
    let big_metadata = format!(
        r#"{{"identifier":"n","ip":"10.0.0.1","metadata":"{}"}}"#,
        "m".repeat(70_000)
    );
    let huge = format!(
        r#"{{"identifier":"n","ip":"10.0.0.1","metadata":"{}"}}"#,
        "m".repeat(3 * 1024 * 1024)
    );
    let deep = format!(
        r#"{{"identifier":"n","ip":"10.0.0.1","metadata":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let ok = r#"{"identifier":"n","ip":"10.0.0.1"}"#;

    // (route, content type, body, status, code, word the message must name)
    type Case<'a> = (&'a str, Option<&'a str>, String, u16, &'a str, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            "/register",
            None,
            ok.into(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "/register",
            Some("text/plain"),
            ok.into(),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            "/node",
            Some("application/x-www-form-urlencoded"),
            ok.into(),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "/register",
            Some("application/json"),
            "{not json".into(),
            400,
            "bad_request",
            "invalid JSON",
        ),
        (
            "/register",
            Some("application/json"),
            String::new(),
            400,
            "bad_request",
            "EOF",
        ),
        (
            "/register",
            Some("application/json"),
            deep,
            400,
            "bad_request",
            "recursion",
        ),
        (
            "/register",
            Some("application/json"),
            r#"{"identifier":"n"}"#.into(),
            400,
            "bad_request",
            "ip",
        ),
        (
            "/node",
            Some("application/json"),
            r#"{"ip":"10.0.0.1"}"#.into(),
            400,
            "bad_request",
            "identifier",
        ),
        (
            "/register",
            Some("application/json"),
            r#"{"identifier":"n","ip":"999.1.1.1"}"#.into(),
            400,
            "bad_request",
            "IP",
        ),
        (
            "/register",
            Some("application/json"),
            r#"{"identifier":"","ip":"10.0.0.1"}"#.into(),
            400,
            "bad_request",
            "identifier",
        ),
        (
            "/register",
            Some("application/json"),
            format!(r#"{{"identifier":"{long_id}","ip":"10.0.0.1"}}"#),
            400,
            "bad_request",
            "identifier",
        ),
        (
            "/node",
            Some("application/json"),
            r#"{"identifier":"a\u0007b","ip":"10.0.0.1"}"#.into(),
            400,
            "bad_request",
            "control character",
        ),
        (
            "/register",
            Some("application/json"),
            r#"{"identifier":"../etc","ip":"10.0.0.1"}"#.into(),
            400,
            "bad_request",
            "path separator",
        ),
        (
            "/register",
            Some("application/json"),
            big_metadata,
            400,
            "bad_request",
            "metadata",
        ),
        (
            "/register",
            Some("application/json"),
            huge,
            413,
            "payload_too_large",
            "2097152",
        ),
        (
            "/node?wait=soon",
            Some("application/json"),
            ok.into(),
            400,
            "bad_request",
            "query",
        ),
        (
            "/node/replace",
            Some("application/json"),
            r#"{"identifier":"n","files":[{"path":"a","content":"1"},{"path":"a","content":"2"}]}"#
                .into(),
            400,
            "bad_request",
            "duplicate",
        ),
        (
            "/nowhere",
            Some("application/json"),
            ok.into(),
            404,
            "not_found",
            "/nowhere",
        ),
    ];
    for (route, content_type, body, status, code, word) in cases {
        let mut request = http.post(server.url(route)).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (got_status, got_code, message) = error_code(request.send().await.unwrap()).await;
        assert_eq!(
            (got_status, got_code.as_str()),
            (status, code),
            "{route} {content_type:?}: {message}"
        );
        assert!(
            message.contains(word),
            "{route}: {message:?} should name {word:?}"
        );
    }

    // A wrong method on a known route is a JSON 405 naming the right method.
    let response = http.get(server.url("/register")).send().await.unwrap();
    assert_eq!(
        response.headers().get("allow").map(|v| v.to_str().unwrap()),
        Some("POST")
    );
    let (status, code, _) = error_code(response).await;
    assert_eq!((status, code.as_str()), (405, "method_not_allowed"));

    // Nothing above hurt the server.
    let health = http.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(
        http.get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let server = TestServer::with_source(Arc::new(two_node_static_source())).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let _ = client.fetch_node_config(&node("node-1")).await;
    client.register_node(&node("node-1")).await.unwrap();
    client.fetch_node_config(&node("node-1")).await.unwrap();
    client.fetch_node_config(&node("node-1")).await.unwrap();

    let text = cfgsync_test_support::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        r#"cfgsync_http_requests_total{route="/node",status="200"} 2"#,
        r#"cfgsync_http_requests_total{route="/node",status="425"} 1"#,
        r#"cfgsync_http_requests_total{route="/register",status="202"} 1"#,
        "cfgsync_registrations_total 1",
        r#"cfgsync_http_request_duration_seconds_count{route="/node"} 3"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn replace_answers_405_when_the_source_cannot_replace() {
    #[derive(Debug)]
    struct Fixed;
    #[async_trait::async_trait]
    impl cfgsync_core::ConfigSource for Fixed {
        async fn register(&self, _: NodeRegistration) -> cfgsync_core::Result<()> {
            Ok(())
        }
        async fn resolve(
            &self,
            _: &NodeRegistration,
        ) -> cfgsync_core::Result<cfgsync_core::ConfigResolveResponse> {
            Ok(cfgsync_core::ConfigResolveResponse::Missing)
        }
    }
    let server = TestServer::with_source(Arc::new(Fixed)).await;
    let response = post_json(
        &server.url("/node/replace"),
        r#"{"identifier":"n","files":[]}"#,
    )
    .await;
    let (status, code, message) = error_code(response).await;
    assert_eq!(
        (status, code.as_str()),
        (405, "method_not_allowed"),
        "{message}"
    );
    let _ = ArtifactFile::new("unused", "");
    server.shutdown().await.unwrap();
}

/// A server that refuses a body it will not read (405 on a route without one,
/// 413 past the limit) must still let a client that writes its whole request
/// before reading (as Python's http.client, or a hyper client racing the reset)
/// see the answer. Closing at once with unread bytes resets the connection and
/// such a client only saw a broken pipe; the server now drains (bounded) first.
#[tokio::test]
async fn a_refused_body_still_gets_its_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::with_source(Arc::new(two_node_static_source())).await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    // Well past what the socket buffers on both sides can hold.
    let declared = 32 * 1024 * 1024;
    for (route, status) in [("/readyz", 405), ("/register", 413)] {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {route} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
             content-length: {declared}\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let chunk = vec![b'a'; 64 * 1024];
        for written in (0..declared).step_by(chunk.len()) {
            stream
                .write_all(&chunk)
                .await
                .unwrap_or_else(|e| panic!("{route}: writing at byte {written}: {e}"));
        }
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{route}: read {read:?}, answer {answer:?}"
        );
    }
    assert_eq!(
        cfgsync_test_support::get(server.url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}
