//! Hostile peers against the server, over raw TCP sockets: connections that
//! idle, trickle their request head or body, exceed the connection cap, send
//! what the HTTP layer cannot parse, or hold shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cfgsync_core::{
    AuthConfig, CfgsyncClient, CfgsyncServerState, ConfigResolveResponse, ConfigSource, Error,
    FetchOptions, NodeRegistration, ServerLimits, StaticConfigSource, serve_cfgsync_on,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A correctness bound, not a speed claim: what should happen within a second
/// or two must have happened by then.
const GENEROUS: Duration = Duration::from_secs(15);

struct Server {
    addr: SocketAddr,
    state: CfgsyncServerState,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<cfgsync_core::Result<()>>,
}

impl Server {
    async fn start(limits: ServerLimits, source: Arc<dyn ConfigSource>) -> Self {
        Self::start_on("127.0.0.1:0", limits, AuthConfig::default(), source).await
    }

    async fn start_on(
        bind: &str,
        limits: ServerLimits,
        auth: AuthConfig,
        source: Arc<dyn ConfigSource>,
    ) -> Self {
        let listener = TcpListener::bind(bind).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = CfgsyncServerState::builder(source)
            .with_limits(limits)
            .with_auth(auth)
            .build();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_cfgsync_on(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], addr.port())),
            state,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr).await.unwrap()
    }

    /// Signals shutdown and waits (boundedly) for the server to return.
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(GENEROUS, self.task)
            .await
            .expect("the server did not stop within the bound")
            .unwrap()
            .unwrap();
    }
}

fn limits(header_secs: u64, idle_secs: u64) -> ServerLimits {
    ServerLimits::default()
        .with_header_read_timeout(Duration::from_secs(header_secs))
        .with_idle_timeout(Duration::from_secs(idle_secs))
}

fn empty_source() -> Arc<dyn ConfigSource> {
    Arc::new(StaticConfigSource::default())
}

/// Reads until the server closes the connection (end of stream or reset),
/// within [`GENEROUS`]; returns what arrived, or `None` if it never closed.
async fn until_closed(stream: &mut TcpStream) -> Option<String> {
    let mut received = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GENEROUS, read).await.ok()?;
    Some(String::from_utf8_lossy(&received).into_owned())
}

/// Status line, and the body parsed as our JSON error body.
fn json_answer(raw: &str) -> (String, serde_json::Value) {
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((raw, ""));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "not a JSON answer: {raw:?}"
    );
    let status = head.lines().next().unwrap_or_default().to_owned();
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {raw:?}"));
    assert!(
        body["code"].is_string() && body["message"].is_string(),
        "{raw}"
    );
    (status, body)
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed_by_the_server() {
    let server = Server::start(limits(1, 1), empty_source()).await;

    // Connected, never sends a byte.
    let mut silent = server.connect().await;
    // Sends part of a request head, then nothing.
    let mut trickling = server.connect().await;
    trickling
        .write_all(b"POST /node HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // A keep-alive connection after one answered request.
    let mut kept_alive = server.connect().await;
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // A request whose body stalls after its head.
    let mut stalled_body = server.connect().await;
    stalled_body
        .write_all(
            b"POST /register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ident",
        )
        .await
        .unwrap();

    assert_eq!(until_closed(&mut silent).await.as_deref(), Some(""));
    assert_eq!(until_closed(&mut trickling).await.as_deref(), Some(""));
    let answered = until_closed(&mut kept_alive).await.expect("kept open");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let stalled = until_closed(&mut stalled_body).await.expect("kept open");
    let (status, body) = json_answer(&stalled);
    assert!(status.starts_with("HTTP/1.1 400"), "{stalled}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("header_read_timeout_secs"),
        "{body}"
    );

    // The server itself is fine.
    let health = cfgsync_test_support::get(format!("{}/healthz", server.url()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_get_503_json_and_the_server_recovers() {
    let server = Server::start(limits(30, 30).with_max_connections(Some(2)), empty_source()).await;
    let first = server.connect().await;
    let _second = server.connect().await;

    let mut third = server.connect().await;
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let refused = until_closed(&mut third).await.expect("kept open");
    let (status, body) = json_answer(&refused);
    assert!(status.starts_with("HTTP/1.1 503"), "{refused}");
    assert_eq!(body["code"], "unavailable");
    assert!(
        body["message"].as_str().unwrap().contains("maximum of 2"),
        "{body}"
    );

    // A slot frees when a connection closes.
    drop(first);
    let recovered = tokio::time::timeout(GENEROUS, async {
        loop {
            let mut probe = server.connect().await;
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let answer = until_closed(&mut probe).await.unwrap_or_default();
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(recovered.is_ok(), "no slot freed after a connection closed");
    let metrics = metric_line(&server.state);
    assert!(
        !metrics.contains("cfgsync_connections_refused_total 0\n"),
        "{metrics}"
    );
    server.shutdown().await;
}

#[tokio::test]
async fn a_trickling_client_does_not_hold_shutdown_and_long_polls_get_their_answer() {
    // Header and idle timeouts far beyond the bound: only shutdown closes these.
    let server = Server::start(limits(600, 600), empty_source()).await;
    let mut trickling = server.connect().await;
    trickling.write_all(b"POST /no").await.unwrap();
    let mut idle = server.connect().await;
    let client = CfgsyncClient::new(server.url()).unwrap();
    let long_poll = tokio::spawn(async move {
        client
            .fetch_node_config_with(
                &NodeRegistration::new("node-1", "10.0.0.1".parse().unwrap()),
                &FetchOptions {
                    if_none_match: None,
                    wait: Some(Duration::from_secs(60)),
                },
            )
            .await
    });
    let state = server.state.clone();
    tokio::time::timeout(GENEROUS, async {
        while !metric_line(&state).contains("cfgsync_long_polls_waiting 1") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    server.shutdown().await;
    let answer = long_poll.await.unwrap();
    assert!(matches!(answer, Err(Error::NotReady { .. })), "{answer:?}");
    assert_eq!(until_closed(&mut trickling).await.as_deref(), Some(""));
    assert_eq!(until_closed(&mut idle).await.as_deref(), Some(""));
}

fn metric_line(state: &CfgsyncServerState) -> String {
    state.metrics_text().unwrap()
}

/// A source whose `/node` answer never comes.
#[derive(Debug)]
struct Stuck;

#[async_trait]
impl ConfigSource for Stuck {
    async fn register(&self, _: NodeRegistration) -> cfgsync_core::Result<()> {
        Ok(())
    }

    async fn resolve(&self, _: &NodeRegistration) -> cfgsync_core::Result<ConfigResolveResponse> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn shutdown_drops_what_is_still_open_after_its_deadline() {
    let server = Server::start(
        limits(600, 600).with_shutdown_timeout(Duration::from_secs(1)),
        Arc::new(Stuck),
    )
    .await;
    let mut stuck = server.connect().await;
    let body = br#"{"identifier":"node-1","ip":"10.0.0.1"}"#;
    stuck
        .write_all(
            format!(
                "POST /node HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stuck.write_all(body).await.unwrap();
    // Let the request reach the handler.
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.shutdown().await;
    assert_eq!(until_closed(&mut stuck).await.as_deref(), Some(""));
}

#[tokio::test]
async fn answers_of_the_http_layer_carry_the_json_error_body() {
    let server = Server::start(ServerLimits::default(), empty_source()).await;

    let mut garbage = server.connect().await;
    garbage.write_all(b"GARBAGE\r\n\r\n").await.unwrap();
    let raw = until_closed(&mut garbage).await.expect("kept open");
    let (status, body) = json_answer(&raw);
    assert!(status.starts_with("HTTP/1.1 400"), "{raw}");
    assert_eq!(body["code"], "bad_request");

    let mut huge_head = server.connect().await;
    let header = format!("X-Big: {}\r\n", "a".repeat(1024));
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        header.repeat(512)
    );
    let _ = huge_head.write_all(request.as_bytes()).await;
    let raw = until_closed(&mut huge_head).await.expect("kept open");
    let (status, body) = json_answer(&raw);
    assert!(status.starts_with("HTTP/1.1 431"), "{raw}");
    assert_eq!(body["code"], "request_header_fields_too_large");

    let mut many_headers = server.connect().await;
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..200)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    many_headers.write_all(request.as_bytes()).await.unwrap();
    let raw = until_closed(&mut many_headers).await.expect("kept open");
    let (status, body) = json_answer(&raw);
    assert!(status.starts_with("HTTP/1.1 431"), "{raw}");
    assert_eq!(body["code"], "request_header_fields_too_large");

    server.shutdown().await;
}

#[tokio::test]
async fn a_listener_beyond_loopback_without_auth_is_flagged() {
    let open = Server::start_on(
        "0.0.0.0:0",
        ServerLimits::default(),
        AuthConfig::default(),
        empty_source(),
    )
    .await;
    let with_auth = Server::start_on(
        "0.0.0.0:0",
        ServerLimits::default(),
        AuthConfig::default().with_shared_token("t0ken"),
        empty_source(),
    )
    .await;
    let loopback = Server::start(ServerLimits::default(), empty_source()).await;

    for (server, insecure) in [(&open, true), (&with_auth, false), (&loopback, false)] {
        // The flag is set once the server is listening.
        tokio::time::timeout(GENEROUS, async {
            while cfgsync_test_support::get(format!("{}/healthz", server.url()))
                .await
                .is_err()
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(
            server.state.insecure_listener(),
            insecure,
            "{}",
            server.url()
        );
        let expected = format!("cfgsync_insecure_listener {}\n", u8::from(insecure));
        assert!(
            metric_line(&server.state).contains(&expected),
            "{expected:?} missing"
        );
        // The status page and its JSON twin say so too (open without auth).
        if !server.state.auth_enabled() {
            let status: serde_json::Value =
                cfgsync_test_support::get(format!("{}/api/v1/status", server.url()))
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            assert_eq!(status["insecure_listener"], insecure, "{status}");
            let page = cfgsync_test_support::get(format!("{}/", server.url()))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            assert_eq!(
                page.contains("id=\"insecure-listener\""),
                insecure,
                "{page}"
            );
        }
    }
    open.shutdown().await;
    with_auth.shutdown().await;
    loopback.shutdown().await;
}

#[tokio::test]
async fn a_held_long_poll_is_not_idle() {
    // Timeouts of 1 s; the long-poll is held for longer and must survive them.
    let source = StaticConfigSource::default()
        .with_node(
            "node-1",
            cfgsync_core::ArtifactSet::from_files([cfgsync_core::ArtifactFile::new(
                "/config.yaml",
                "id: 1\n",
            )])
            .unwrap(),
        )
        .unwrap();
    let server = Server::start(limits(1, 1), Arc::new(source)).await;
    let client = CfgsyncClient::new(server.url()).unwrap();
    let node = NodeRegistration::new("node-1", "10.0.0.1".parse().unwrap());
    let waiting = {
        let (client, node) = (client.clone(), node.clone());
        tokio::spawn(async move {
            client
                .fetch_node_config_with(
                    &node,
                    &FetchOptions {
                        if_none_match: None,
                        wait: Some(Duration::from_secs(30)),
                    },
                )
                .await
        })
    };
    // Registered only after both timeouts have passed several times over.
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.register_node(&node).await.unwrap();
    let answer = tokio::time::timeout(GENEROUS, waiting)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(answer, Ok(cfgsync_core::FetchOutcome::Updated { .. })),
        "{answer:?}"
    );
    server.shutdown().await;
}
