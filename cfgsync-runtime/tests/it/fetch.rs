//! Register → 425 → ready, against real servers: long-poll on ours, backoff on
//! one that ignores `wait` as the original does, one deadline, and immediate
//! failure on answers that waiting cannot change.
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{QuorumSource, TestServer, entries, files, node};
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use cfgsync_core::{
    AuthConfig, BundleConfigSource, CfgsyncClient, CfgsyncServerState, NodeArtifactsBundle,
    StaticConfigSource,
};
use cfgsync_runtime::{
    ArtifactOutputMap, ClientOptions, Error, Step, fetch_and_write_artifacts_with,
    register_and_fetch_artifacts_with,
};
use cfgsync_test_support::CapturedLogs;

/// Retries fast, so tests do not wait on real backoff.
fn fast() -> ClientOptions {
    ClientOptions::default().with_backoff(Duration::from_millis(1), Duration::from_millis(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_waits_for_readiness_in_one_request() {
    let dir = tempfile::tempdir().unwrap();
    let source = Arc::new(QuorumSource::new(2));
    let server = TestServer::with_source(source.clone()).await;
    let outputs = ArtifactOutputMap::new().with_root(dir.path());

    let registration = node("node-1")
        .with_metadata(&serde_json::json!({"role": "seed"}))
        .unwrap();
    let client = tokio::spawn({
        let (url, outputs) = (server.url.clone(), outputs.clone());
        async move { register_and_fetch_artifacts_with(&registration, &url, &outputs, &fast()).await }
    });
    // node-1 registered and is now parked on a long-poll; node-2 completes the quorum.
    tokio::time::timeout(Duration::from_secs(30), server.until_long_polls_waiting(1))
        .await
        .expect("the client never parked on a long-poll");
    assert!(!client.is_finished());
    CfgsyncClient::new(&server.url)
        .unwrap()
        .register_node(&node("node-2"))
        .await
        .unwrap();

    let written = client.await.unwrap().unwrap();
    assert_eq!(written.len(), 2);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("peers.txt")).unwrap(),
        "node-1\nnode-2\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config.yaml")).unwrap(),
        "id: node-1\n"
    );
    // One held request, answered 200 when the quorum formed: no polling.
    assert_eq!(server.node_answers().await, [(200, 1)].into());
    // The registration carried the metadata.
    assert_eq!(
        source.registration("node-1").unwrap().metadata.as_value(),
        &serde_json::json!({"role": "seed"})
    );
    server.shutdown().await.unwrap();
}

/// What an original cfgsync server does: `wait` is ignored, 425 comes at once.
#[derive(Clone, Default)]
struct OriginalLikeServer {
    /// The `wait` query of each `/node` request, in order.
    node_waits: Arc<Mutex<Vec<Option<String>>>>,
    registrations: Arc<Mutex<u32>>,
    not_ready_answers: u32,
}

async fn original_register(State(s): State<OriginalLikeServer>) -> StatusCode {
    *s.registrations.lock().unwrap() += 1;
    StatusCode::ACCEPTED
}

async fn original_node(
    State(s): State<OriginalLikeServer>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let attempt = {
        let mut waits = s.node_waits.lock().unwrap();
        waits.push(query.get("wait").cloned());
        waits.len() as u32
    };
    if attempt <= s.not_ready_answers {
        // The original's body for 425.
        return (
            StatusCode::TOO_EARLY,
            axum::Json(serde_json::json!({"code": "not_ready", "message": "config not ready"})),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({
        "files": [{"path": "/config.yaml", "content": "id: node-1\n"}]
    }))
    .into_response()
}

async fn start_original_like(state: OriginalLikeServer) -> String {
    let app = Router::new()
        .route("/register", post(original_register))
        .route("/node", post(original_node))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

#[tokio::test]
async fn a_server_that_ignores_wait_is_polled_with_backoff_until_ready() {
    let dir = tempfile::tempdir().unwrap();
    let state = OriginalLikeServer {
        not_ready_answers: 2,
        ..OriginalLikeServer::default()
    };
    let url = start_original_like(state.clone()).await;

    let written = register_and_fetch_artifacts_with(
        &node("node-1"),
        &url,
        &ArtifactOutputMap::new().route("/config.yaml", dir.path().join("node-1.yaml")),
        &fast(),
    )
    .await
    .unwrap();

    assert_eq!(written[0].path, dir.path().join("node-1.yaml"));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("node-1.yaml")).unwrap(),
        "id: node-1\n"
    );
    assert_eq!(*state.registrations.lock().unwrap(), 1);
    // 425, 425, 200: each asked to long-poll (whole seconds, the default 30).
    let waits = state.node_waits.lock().unwrap().clone();
    assert_eq!(waits, vec![Some("30".to_owned()); 3]);
}

#[tokio::test]
async fn the_deadline_error_names_the_step_and_the_last_answer() {
    // Fetch: the server keeps answering 425.
    let state = OriginalLikeServer {
        not_ready_answers: u32::MAX,
        ..OriginalLikeServer::default()
    };
    let url = start_original_like(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let options = fast().with_timeout(Duration::from_secs(1));
    let error = register_and_fetch_artifacts_with(
        &node("node-1"),
        &url,
        &ArtifactOutputMap::new().with_root(dir.path()),
        &options,
    )
    .await
    .unwrap_err();
    let Error::DeadlineExceeded {
        step,
        attempts,
        ref last_answer,
        ..
    } = error
    else {
        panic!("expected DeadlineExceeded, got {error:?}");
    };
    assert_eq!(step, Step::Fetch);
    assert_eq!(last_answer, "425 not_ready");
    let waits = state.node_waits.lock().unwrap().clone();
    // Every request but the last (which the deadline may cut off before it
    // reaches the server) was answered.
    assert!(
        (waits.len()..=waits.len() + 1).contains(&(attempts as usize)),
        "{attempts} attempts, {} answered",
        waits.len()
    );
    // The long-poll wait (30 s by default) is capped by the 1 s left.
    assert!(
        waits
            .iter()
            .flatten()
            .all(|w| w.parse::<u64>().unwrap() <= 1),
        "{waits:?}"
    );
    assert!(attempts > 1);
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(
        message.starts_with("fetch: gave up after 1s and ")
            && message.ends_with("; last answer: 425 not_ready"),
        "{message}"
    );
    assert!(entries(dir.path()).is_empty());

    // Register: nothing listens on the port.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let error = register_and_fetch_artifacts_with(
        &node("node-1"),
        &closed,
        &ArtifactOutputMap::new().with_root(dir.path()),
        &options,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, Error::DeadlineExceeded { step: Step::Register, last_answer, .. } if last_answer.starts_with("no answer (")),
        "{error:?}"
    );
    assert!(
        error.to_string().starts_with("register: gave up after 1s"),
        "{error}"
    );
}

/// The INFO lines of `logs` containing `what`.
fn info_lines_with(logs: &CapturedLogs, what: &str) -> Vec<String> {
    logs.lines()
        .into_iter()
        .filter(|l| l.contains(" INFO ") && l.contains(what))
        .collect()
}

#[tokio::test]
async fn a_waiting_client_says_what_it_waits_for_at_info() {
    let (logs, _guard) = CapturedLogs::start("info");
    let dir = tempfile::tempdir().unwrap();
    let outputs = ArtifactOutputMap::new().with_root(dir.path());
    let options = fast()
        .with_timeout(Duration::from_secs(1))
        .with_progress_interval(Some(Duration::from_millis(200)))
        .with_address_setting("CFG_SERVER_ADDR");

    // Nothing listens: it says it is still registering, and why.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let error = register_and_fetch_artifacts_with(&node("node-1"), &closed, &outputs, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::DeadlineExceeded {
                step: Step::Register,
                ..
            }
        ),
        "{error:?}"
    );
    let lines = info_lines_with(&logs, "still registering");
    assert!(lines.len() >= 2, "{lines:?}");
    assert!(
        lines.iter().all(
            |l| l.contains(&format!("node-1: still registering with {closed}"))
                && l.contains("last answer no answer (")
                && l.contains("connection refused")
                && l.contains("s elapsed")
                && l.contains("s left")
        ),
        "{lines:?}"
    );

    // Registered, the server not ready (425, as the original answers).
    let state = OriginalLikeServer {
        not_ready_answers: u32::MAX,
        ..OriginalLikeServer::default()
    };
    let url = start_original_like(state).await;
    let error = register_and_fetch_artifacts_with(&node("node-1"), &url, &outputs, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::DeadlineExceeded {
                step: Step::Fetch,
                ..
            }
        ),
        "{error:?}"
    );
    let lines = info_lines_with(
        &logs,
        &format!("node-1: registered; waiting for {url} to have our config"),
    );
    assert!(
        lines.len() >= 2
            && lines
                .iter()
                .all(|l| l.contains("last answer 425 not_ready")),
        "{lines:?}"
    );

    // Served at once: nothing to say.
    let before = info_lines_with(&logs, "").len();
    let ready = OriginalLikeServer::default();
    let url = start_original_like(ready).await;
    register_and_fetch_artifacts_with(&node("node-1"), &url, &outputs, &options)
        .await
        .unwrap();
    assert_eq!(info_lines_with(&logs, "").len(), before);
}

#[tokio::test]
async fn the_attempts_bound_ends_a_wait_before_the_deadline() {
    // The server keeps answering 425 at once; the deadline is far away.
    let state = OriginalLikeServer {
        not_ready_answers: u32::MAX,
        ..OriginalLikeServer::default()
    };
    let url = start_original_like(state.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let options = fast()
        .with_timeout(Duration::from_secs(3600))
        .with_max_attempts(4);
    let error = register_and_fetch_artifacts_with(
        &node("node-1"),
        &url,
        &ArtifactOutputMap::new().with_root(dir.path()),
        &options,
    )
    .await
    .unwrap_err();
    let Error::AttemptsExhausted {
        step,
        attempts,
        ref last_answer,
        ..
    } = error
    else {
        panic!("expected AttemptsExhausted, got {error:?}");
    };
    assert_eq!(step, Step::Fetch);
    assert_eq!(attempts, 4);
    assert_eq!(last_answer, "425 not_ready");
    assert_eq!(
        state.node_waits.lock().unwrap().len(),
        4,
        "exactly 4 requests sent"
    );
    assert!(error.is_retryable());
    let message = error.to_string();
    assert!(
        message.starts_with("fetch: gave up after 4 attempt(s) in ")
            && message.ends_with("; last answer: 425 not_ready"),
        "{message}"
    );
    assert!(entries(dir.path()).is_empty());
}

#[tokio::test]
async fn answers_that_waiting_cannot_change_fail_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = ArtifactOutputMap::new().with_root(dir.path());
    // A retry would end in DeadlineExceeded, not in the error asserted below.
    let options = fast().with_timeout(Duration::from_secs(10));

    // Bundle mode: a node the bundle does not name gets 404 missing_config.
    let bundle: NodeArtifactsBundle = serde_json::from_value(serde_json::json!({
        "nodes": [{"identifier": "node-1", "files": [{"path": "/a", "content": "a"}]}]
    }))
    .unwrap();
    let server =
        TestServer::with_source(Arc::new(BundleConfigSource::from_bundle(bundle).unwrap())).await;
    // (Our server holds a 404 for the whole long-poll, since `/node/replace` may
    // still add the node; the client does not retry it either way.)
    let no_long_poll = options.clone().with_long_poll(None);
    let error =
        fetch_and_write_artifacts_with(&node("stranger"), &server.url, &outputs, &no_long_poll)
            .await
            .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Server { step: Step::Fetch, source: cfgsync_core::Error::MissingConfig { identifier } }
                if identifier == "stranger"
        ),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("fetch: "), "{error}");
    assert!(!error.is_retryable());
    assert_eq!(server.node_answers().await, [(404, 1)].into());
    server.shutdown().await.unwrap();

    // Auth on: no token is 401 at register, at once; the right token works.
    let source = StaticConfigSource::new(files(&[]))
        .unwrap()
        .with_node("node-1", files(&[("/config.yaml", "id: node-1\n")]))
        .unwrap();
    let server = TestServer::start(
        CfgsyncServerState::builder(Arc::new(source))
            .with_auth(AuthConfig::default().with_shared_token("s3cret-token"))
            .build(),
    )
    .await;
    let error = register_and_fetch_artifacts_with(&node("node-1"), &server.url, &outputs, &options)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &error,
            Error::Server {
                step: Step::Register,
                source: cfgsync_core::Error::Unauthorized { .. }
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().starts_with("register: "), "{error}");
    assert!(entries(dir.path()).is_empty());
    register_and_fetch_artifacts_with(
        &node("node-1"),
        &server.url,
        &outputs,
        &options.clone().with_token("s3cret-token"),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("config.yaml")).unwrap(),
        "id: node-1\n"
    );
    assert!(!format!("{options:?}").contains("s3cret"));
    server.shutdown().await.unwrap();

    // A URL that cannot address a server fails before any request.
    for url in [
        "cfgsync:4400",
        "127.0.0.1:4400",
        "http://",
        "http://h:1/?wait=3",
    ] {
        let error = register_and_fetch_artifacts_with(&node("node-1"), url, &outputs, &options)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, Error::InvalidServerUrl { url: given, .. } if given == url),
            "{url}: {error:?}"
        );
    }
}
