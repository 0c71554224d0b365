//! The node client against a hostile server (raw TCP, speaking just enough
//! HTTP): a payload streamed past any sane size, modes asking for setuid and
//! world write, and the causes of failures named with the setting to check.
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cfgsync_core::NodeRegistration;
use cfgsync_runtime::{
    ArtifactOutputMap, ClientEnv, ClientOptions, Error, Step, fetch_and_write_artifacts_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn node(identifier: &str) -> NodeRegistration {
    NodeRegistration::new(identifier, "10.0.0.5".parse().unwrap())
}

const GIB: u64 = 1024 * 1024 * 1024;
const MIB: u64 = 1024 * 1024;

/// Reads one request (head and `Content-Length` body) off `socket`.
async fn read_request(socket: &mut TcpStream) -> Option<String> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = socket.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= length {
                return Some(text);
            }
        }
    }
}

/// A server that answers every request with `answer(request)`, then closes.
async fn raw_server(answer: impl Fn() -> Vec<u8> + Send + Sync + 'static) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                if read_request(&mut socket).await.is_some() {
                    let _ = socket.write_all(&answer()).await;
                    let _ = socket.shutdown().await;
                }
            });
        }
    });
    url
}

/// A server that answers `/node` with a 2 GiB body, as `Content-Length` or
/// chunked, counting what it managed to send before the client hung up.
async fn streaming_server(chunked: bool, sent: Arc<AtomicU64>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                if read_request(&mut socket).await.is_none() {
                    return;
                }
                let head = if chunked {
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n".to_owned()
                } else {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        2 * GIB
                    )
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![b' '; 256 * 1024];
                let chunk = if chunked {
                    let mut chunk = format!("{:x}\r\n", block.len()).into_bytes();
                    chunk.extend_from_slice(&block);
                    chunk.extend_from_slice(b"\r\n");
                    chunk
                } else {
                    block
                };
                let mut total = 0u64;
                while total < 2 * GIB {
                    if socket.write_all(&chunk).await.is_err() {
                        break;
                    }
                    total += chunk.len() as u64;
                    sent.store(total, Ordering::SeqCst);
                }
            });
        }
    });
    url
}

fn options() -> ClientOptions {
    ClientOptions::default()
        .with_timeout(Duration::from_secs(60))
        .with_long_poll(None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_gib_payload_fails_at_the_limit_while_it_streams() {
    for (chunked, limit) in [(true, 64 * MIB), (false, 64 * MIB), (true, MIB)] {
        let sent = Arc::new(AtomicU64::new(0));
        let url = streaming_server(chunked, Arc::clone(&sent)).await;
        let dir = tempfile::tempdir().unwrap();
        let outputs = ArtifactOutputMap::new().with_root(dir.path());
        let options = if limit == 64 * MIB {
            options() // the default limit
        } else {
            options().with_max_payload_bytes(limit)
        };
        let error = tokio::time::timeout(
            Duration::from_secs(120),
            fetch_and_write_artifacts_with(&node("node-1"), &url, &outputs, &options),
        )
        .await
        .expect("the client must stop at its limit, not read 2 GiB")
        .unwrap_err();
        match &error {
            Error::Server {
                step: Step::Fetch,
                source: cfgsync_core::Error::PayloadTooLarge { limit: got, .. },
            } => assert_eq!(*got, limit),
            other => panic!("chunked={chunked}: expected PayloadTooLarge, got {other:?}"),
        }
        assert!(!error.is_retryable());
        assert!(
            error
                .to_string()
                .contains(&format!("limit of {limit} bytes")),
            "{error}"
        );
        // The client hung up at its limit: the server got nowhere near 2 GiB
        // out (the slack is what socket buffers hold).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let out = sent.load(Ordering::SeqCst);
        assert!(out < limit + 64 * MIB, "server sent {out} bytes");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "nothing is written"
        );
    }
}

fn payload_answer(files: serde_json::Value) -> Vec<u8> {
    let body =
        serde_json::to_vec(&serde_json::json!({"schema_version": 1, "files": files})).unwrap();
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    answer
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[cfg(unix)]
#[tokio::test]
async fn served_modes_never_set_setuid_setgid_sticky_or_group_world_write() {
    let url = raw_server(|| {
        payload_answer(serde_json::json!([
            {"path": "/all-bits", "content": "a", "mode": 0o7777},
            {"path": "/setuid", "content": "b", "mode": 0o4755},
            {"path": "/group-writable", "content": "c", "mode": 0o664},
            {"path": "/private", "content": "d", "mode": 0o600},
            {"path": "/kept", "content": "e"},
        ]))
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    // A file the payload replaces without a mode: it was setuid.
    std::fs::write(dir.path().join("kept"), "old").unwrap();
    std::fs::set_permissions(
        dir.path().join("kept"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4750),
    )
    .unwrap();

    let outputs = ArtifactOutputMap::new().with_root(dir.path());
    fetch_and_write_artifacts_with(&node("node-1"), &url, &outputs, &options())
        .await
        .unwrap();
    let modes: HashMap<&str, u32> = ["all-bits", "setuid", "group-writable", "private", "kept"]
        .into_iter()
        .map(|name| (name, mode_of(&dir.path().join(name))))
        .collect();
    assert_eq!(modes["all-bits"], 0o755);
    assert_eq!(modes["setuid"], 0o755);
    assert_eq!(modes["group-writable"], 0o644);
    assert_eq!(modes["private"], 0o600);
    assert_eq!(modes["kept"], 0o750);

    // The operator may allow group/world write; special bits stay off.
    let allowed = ArtifactOutputMap::new()
        .with_root(dir.path())
        .allow_group_world_write(true);
    fetch_and_write_artifacts_with(&node("node-1"), &url, &allowed, &options())
        .await
        .unwrap();
    assert_eq!(mode_of(&dir.path().join("all-bits")), 0o777);
    assert_eq!(mode_of(&dir.path().join("group-writable")), 0o664);
}

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    move |name| map.get(name).cloned()
}

#[test]
fn the_payload_limit_and_the_mode_option_come_from_the_environment() {
    let env = ClientEnv::from_vars(vars(&[("CFG_HOST_IDENTIFIER", "node-1")])).unwrap();
    assert_eq!(env.max_payload_bytes, 64 * MIB);
    assert!(!env.allow_group_world_write);
    assert_eq!(env.outputs().masked_mode(0o7777), 0o755);
    assert_eq!(env.client_options().max_payload_bytes, 64 * MIB);
    assert_eq!(
        env.client_options().progress_interval,
        Some(Duration::from_secs(10))
    );

    let env = ClientEnv::from_vars(vars(&[
        ("CFG_HOST_IDENTIFIER", "node-1"),
        ("CFG_MAX_PAYLOAD_BYTES", "1024"),
        ("CFG_ALLOW_GROUP_WORLD_WRITE", "true"),
        ("CFG_PROGRESS_INTERVAL", "1m"),
    ]))
    .unwrap();
    assert_eq!(env.client_options().max_payload_bytes, 1024);
    assert_eq!(env.outputs().masked_mode(0o7777), 0o777);
    assert_eq!(
        env.client_options().progress_interval,
        Some(Duration::from_secs(60))
    );
    let quiet = [
        ("CFG_HOST_IDENTIFIER", "node-1"),
        ("CFG_PROGRESS_INTERVAL", "0"),
    ];
    let env = ClientEnv::from_vars(vars(&quiet)).unwrap();
    assert_eq!(env.client_options().progress_interval, None);

    for (var, value) in [
        ("CFG_MAX_PAYLOAD_BYTES", "0"),
        ("CFG_MAX_PAYLOAD_BYTES", "64 parsecs"),
        ("CFG_ALLOW_GROUP_WORLD_WRITE", "maybe"),
        ("CFG_PROGRESS_INTERVAL", "soon"),
        ("CFG_HOST_IDENTIFIER", "ñodo"),
    ] {
        let pairs = [("CFG_HOST_IDENTIFIER", "node-1"), (var, value)];
        match ClientEnv::from_vars(vars(&pairs)) {
            Err(Error::InvalidVar { var: got, .. }) => assert_eq!(got, var),
            other => panic!("{var}={value}: expected InvalidVar, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unreachable_server_is_named_with_its_cause_and_setting() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let env = ClientEnv::from_vars(vars(&[
        ("CFG_HOST_IDENTIFIER", "node-1"),
        ("CFG_SERVER_ADDR", &format!("http://127.0.0.1:{port}")),
        ("CFG_OUTPUT_ROOT", dir.path().to_str().unwrap()),
        ("CFG_TIMEOUT_SECS", "1"),
    ]))
    .unwrap();
    let error = env.run().await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(&format!(
            "connection refused to http://127.0.0.1:{port}/register (check CFG_SERVER_ADDR)"
        )),
        "{message}"
    );
}
