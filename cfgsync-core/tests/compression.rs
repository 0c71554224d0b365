//! `/node` answers in identity and gzip: the bytes, the headers, the ETag, the
//! long-poll, and the client that asks for gzip — over a real server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use cfgsync_core::{
    ArtifactFile, ArtifactSet, CfgsyncClient, CfgsyncServerState, Error, FetchOptions,
    FetchOutcome, NodeArtifactsPayload, NodeFilesReplacement, NodeRegistration, ServedPayload,
    StaticConfigSource, build_cfgsync_router, serve_app_on,
};
use common::{TestServer, files};

fn node(id: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.0.0.5".parse().unwrap())
}

const BODY_1: &str = r#"{"identifier":"node-1","ip":"10.0.0.5"}"#;

/// Shared: a peer list large enough to compress, between two small files.
fn shared() -> ArtifactSet {
    let peers: String = (0..2000)
        .map(|i| {
            format!(
                "  - id: node-{i:05}\n    addr: 10.0.{}.{}:4400\n",
                i / 250,
                i % 250
            )
        })
        .collect();
    ArtifactSet::from_files([
        ArtifactFile::new("/a.txt", "shared a\n"),
        ArtifactFile::new("/peers.yaml", format!("peers:\n{peers}")),
        ArtifactFile::new("/z.txt", "shared z\n").with_mode(0o640),
    ])
    .unwrap()
}

/// node-1 takes every shared file; node-2 overrides the one in the middle.
fn own(id: &str) -> ArtifactSet {
    match id {
        "node-1" => files(&[("/config.yaml", "id: node-1\n")]),
        _ => files(&[("/config.yaml", "id: node-2\n"), ("/peers.yaml", "mine\n")]),
    }
}

fn source() -> StaticConfigSource {
    StaticConfigSource::new(shared())
        .unwrap()
        .with_node("node-1", own("node-1"))
        .unwrap()
        .with_node("node-2", own("node-2"))
        .unwrap()
}

/// The body today's server sends: the merged set, encoded whole.
fn expected_body(own: &ArtifactSet) -> Vec<u8> {
    serde_json::to_vec(&NodeArtifactsPayload::new(
        own.clone().merged_with_shared(&shared()),
    ))
    .unwrap()
}

fn expected_etag(own: &ArtifactSet) -> String {
    ServedPayload::new(own.clone().merged_with_shared(&shared()))
        .unwrap()
        .etag()
        .to_owned()
}

/// A client that sends exactly the headers given (no Accept-Encoding of its
/// own, no decoding), as the original's clients do.
fn raw_client() -> reqwest::Client {
    cfgsync_test_support::http_client_builder()
        .no_proxy()
        .build()
        .unwrap()
}

async fn post_node(
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = raw_client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test]
async fn original_format_clients_get_the_bytes_of_the_merged_set() {
    let server = TestServer::with_source(Arc::new(source())).await;
    for id in ["node-1", "node-2"] {
        let body = format!(r#"{{"identifier":"{id}","ip":"10.0.0.5"}}"#);
        let (status, _, _) = post_node(&server.url("/register"), &body, &[]).await;
        assert_eq!(status, 202);
        let (status, headers, bytes) = post_node(&server.url("/node"), &body, &[]).await;
        assert_eq!(status, 200);
        // Byte for byte the encoding of the merged set, with or without a
        // shared path overridden; no coding, the length announced up front.
        assert_eq!(bytes, expected_body(&own(id)), "{id}");
        assert_eq!(header(&headers, "content-encoding"), None, "{id}");
        assert_eq!(header(&headers, "transfer-encoding"), None, "{id}");
        assert_eq!(
            header(&headers, "content-length"),
            Some(bytes.len().to_string().as_str())
        );
        assert_eq!(header(&headers, "content-type"), Some("application/json"));
        assert_eq!(
            header(&headers, "etag"),
            Some(expected_etag(&own(id)).as_str())
        );
        // The legacy alias answers the same bytes.
        let (_, _, legacy) = post_node(&server.url("/init-with-node"), &body, &[]).await;
        assert_eq!(legacy, bytes);
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn gzip_answers_decode_to_the_identity_bytes_under_the_same_etag() {
    let server = TestServer::with_source(Arc::new(source())).await;
    let url = server.url("/node");
    for id in ["node-1", "node-2"] {
        let body = format!(r#"{{"identifier":"{id}","ip":"10.0.0.5"}}"#);
        post_node(&server.url("/register"), &body, &[]).await;
        let (_, plain_headers, plain) = post_node(&url, &body, &[]).await;
        let etag = header(&plain_headers, "etag").unwrap().to_owned();
        for accept in ["gzip", "br;q=1.0, gzip;q=0.8, identity;q=0.5", "*"] {
            let (status, headers, compressed) =
                post_node(&url, &body, &[("accept-encoding", accept)]).await;
            assert_eq!(status, 200);
            assert_eq!(
                header(&headers, "content-encoding"),
                Some("gzip"),
                "{accept}"
            );
            assert_eq!(header(&headers, "vary"), Some("accept-encoding"));
            assert_eq!(
                header(&headers, "content-length"),
                Some(compressed.len().to_string().as_str())
            );
            // The ETag names the content, not the coding.
            assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
            assert_eq!(gunzip(&compressed), plain, "{id}, {accept}");
            if id == "node-1" {
                assert!(
                    compressed.len() * 4 < plain.len(),
                    "{} bytes gzip vs {} identity",
                    compressed.len(),
                    plain.len()
                );
            }
        }
        // Asked not to compress, or only in codings we lack: identity.
        for accept in ["gzip;q=0", "br, zstd", "gzip;q=0.5, identity", ""] {
            let (_, headers, bytes) = post_node(&url, &body, &[("accept-encoding", accept)]).await;
            assert_eq!(header(&headers, "content-encoding"), None, "{accept:?}");
            assert_eq!(bytes, plain, "{accept:?}");
        }
        // If-None-Match with that ETag: 304 whatever the coding asked.
        for accept in [None, Some("gzip")] {
            let mut sent = vec![("if-none-match", etag.as_str())];
            sent.extend(accept.map(|a| ("accept-encoding", a)));
            let (status, headers, bytes) = post_node(&url, &body, &sent).await;
            assert_eq!(status, 304, "{accept:?}");
            assert!(bytes.is_empty());
            assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
            assert_eq!(header(&headers, "content-encoding"), None);
        }
    }

    // A new payload for node-1: its compressed answer follows it.
    let client = CfgsyncClient::new(&server.url).unwrap();
    let new_own = files(&[("/config.yaml", "id: node-1\nversion: 2\n")]);
    client
        .replace_node_files(&NodeFilesReplacement {
            identifier: "node-1".into(),
            files: new_own.clone(),
        })
        .await
        .unwrap();
    let (_, headers, compressed) = post_node(&url, BODY_1, &[("accept-encoding", "gzip")]).await;
    assert_eq!(gunzip(&compressed), expected_body(&new_own));
    assert_eq!(
        header(&headers, "etag"),
        Some(expected_etag(&new_own).as_str())
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_is_answered_compressed_when_asked() {
    let server = TestServer::with_source(Arc::new(source())).await;
    let url = server.url("/node?wait=30");
    // Not registered yet: held until node-1 registers, then answered in gzip.
    let waiting = {
        let url = url.clone();
        tokio::spawn(async move { post_node(&url, BODY_1, &[("accept-encoding", "gzip")]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll must hold while not ready"
    );
    post_node(&server.url("/register"), BODY_1, &[]).await;
    let (status, headers, compressed) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&compressed), expected_body(&own("node-1")));

    // Holding the ETag: held until the payload changes, then the new one in gzip.
    let etag = header(&headers, "etag").unwrap().to_owned();
    let waiting = {
        let (url, etag) = (url.clone(), etag.clone());
        tokio::spawn(async move {
            post_node(
                &url,
                BODY_1,
                &[("accept-encoding", "gzip"), ("if-none-match", &etag)],
            )
            .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !waiting.is_finished(),
        "the long-poll must hold while unchanged"
    );
    let new_own = files(&[("/config.yaml", "v2\n")]);
    CfgsyncClient::new(&server.url)
        .unwrap()
        .replace_node_files(&NodeFilesReplacement {
            identifier: "node-1".into(),
            files: new_own.clone(),
        })
        .await
        .unwrap();
    let (status, headers, compressed) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-encoding"), Some("gzip"));
    assert_ne!(header(&headers, "etag"), Some(etag.as_str()));
    assert_eq!(gunzip(&compressed), expected_body(&new_own));
    server.shutdown().await.unwrap();
}

/// Records the `Content-Encoding` of every `/node` answer.
async fn record_coding(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<Option<String>>>>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let coding = response
        .headers()
        .get("content-encoding")
        .map(|v| v.to_str().unwrap().to_owned());
    seen.lock().unwrap().push(coding);
    response
}

#[tokio::test]
async fn the_client_asks_for_gzip_and_decodes_it() {
    let state = CfgsyncServerState::new(Arc::new(source()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = build_cfgsync_router(state.clone())
        .layer(middleware::from_fn_with_state(seen.clone(), record_coding));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(serve_app_on(listener, app, state, async {
        let _ = stopped.await;
    }));

    let client = CfgsyncClient::new(&url).unwrap();
    for id in ["node-1", "node-2"] {
        client.register_node(&node(id)).await.unwrap();
        let FetchOutcome::Updated { payload, etag } = client
            .fetch_node_config_with(&node(id), &FetchOptions::default())
            .await
            .unwrap()
        else {
            panic!("expected a payload");
        };
        assert_eq!(payload.files, own(id).merged_with_shared(&shared()));
        assert_eq!(etag.unwrap(), expected_etag(&own(id)));
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [None, Some("gzip".to_owned()), None, Some("gzip".to_owned())],
        "register answers carry no body; /node answers came in gzip"
    );
    drop(stop);
    served.await.unwrap().unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

/// A server answering every `/node` with `body` in `coding`.
async fn serving(coding: &'static str, body: Vec<u8>) -> (String, tokio::task::JoinHandle<()>) {
    let app = axum::Router::new().route(
        "/node",
        axum::routing::post(move || {
            let body = body.clone();
            async move { ([("content-encoding", coding)], body).into_response() }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, task)
}

#[tokio::test]
async fn the_client_caps_the_decoded_payload_and_refuses_unknown_codings() {
    let payload = serde_json::to_vec(&NodeArtifactsPayload::new(files(&[(
        "/big",
        &" ".repeat(4 << 20),
    )])))
    .unwrap();
    let bomb = gzip(&payload);
    assert!(bomb.len() < 64 << 10, "a small body on the wire");
    let (url, server) = serving("gzip", bomb).await;
    // Under a 1 MiB cap, 4 MiB decoded is refused, whatever was sent.
    let capped = CfgsyncClient::builder(&url)
        .max_payload_bytes(1 << 20)
        .build()
        .unwrap();
    let err = capped.fetch_node_config(&node("node-1")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PayloadTooLarge {
                route: "/node",
                limit: 1_048_576,
                ..
            }
        ),
        "{err}"
    );
    // With room for it, the same answer decodes.
    let roomy = CfgsyncClient::new(&url).unwrap();
    let fetched = roomy.fetch_node_config(&node("node-1")).await.unwrap();
    assert_eq!(fetched.files.get("/big").unwrap().content.len(), 4 << 20);
    server.abort();

    // Identity bodies meet the same cap.
    let (url, server) = serving("identity", payload.clone()).await;
    let capped = CfgsyncClient::builder(&url)
        .max_payload_bytes(1 << 20)
        .build()
        .unwrap();
    let err = capped.fetch_node_config(&node("node-1")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PayloadTooLarge {
                route: "/node",
                limit: 1_048_576,
                ..
            }
        ),
        "{err}"
    );
    server.abort();

    let (url, server) = serving("br", payload).await;
    let err = CfgsyncClient::new(&url)
        .unwrap()
        .fetch_node_config(&node("node-1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidResponse { reason, .. } if reason.contains("unsupported Content-Encoding \"br\"")),
        "{err}"
    );
    server.abort();
}
