//! Transport errors keep their cause: refused, timed out, reset, DNS — each
//! classified by the one public classifier, and named in the message with the
//! setting to check.

use std::time::Duration;

use cfgsync_core::{CfgsyncClient, Error, NodeRegistration, TransportFailure};
use tokio::io::AsyncReadExt;

fn node() -> NodeRegistration {
    NodeRegistration::new("node-1", "10.0.0.1".parse().unwrap())
}

async fn failure_of(url: &str) -> (TransportFailure, String) {
    let client = CfgsyncClient::builder(url)
        .timeout(Duration::from_millis(500))
        .address_setting("CFG_SERVER_ADDR")
        .build()
        .unwrap();
    let error = tokio::time::timeout(Duration::from_secs(30), client.register_node(&node()))
        .await
        .expect("the client's own timeout must end the request")
        .unwrap_err();
    let message = error.to_string();
    match error {
        Error::Transport { failure, .. } => (failure, message),
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_timed_out_reset_and_dns_failures_keep_their_cause() {
    // Nothing listens.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let (failure, message) = failure_of(&url).await;
    assert_eq!(failure, TransportFailure::ConnectionRefused, "{message}");
    assert!(
        message.contains(&format!(
            "connection refused to {url}/register (check CFG_SERVER_ADDR)"
        )),
        "{message}"
    );

    // Accepts, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let (failure, message) = failure_of(&url).await;
    assert_eq!(failure, TransportFailure::TimedOut, "{message}");
    assert!(message.contains("timed out to"), "{message}");
    held.abort();

    // Reads the request, closes without an answer.
    let rude = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", rude.local_addr().unwrap());
    let closer = tokio::spawn(async move {
        while let Ok((mut socket, _)) = rude.accept().await {
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            drop(socket);
        }
    });
    let (failure, message) = failure_of(&url).await;
    assert_eq!(failure, TransportFailure::ConnectionReset, "{message}");
    assert!(message.contains("connection reset to"), "{message}");
    closer.abort();

    // A name that never resolves (RFC 6761 reserves .invalid).
    let (failure, message) = failure_of("http://cfgsync-test.invalid:4400").await;
    assert_eq!(failure, TransportFailure::Dns, "{message}");
    assert!(
        message.contains(
            "DNS lookup failed to http://cfgsync-test.invalid:4400/register (check CFG_SERVER_ADDR)"
        ),
        "{message}"
    );
}
