//! `/node` answers in identity, gzip and zstd: the bytes, the headers, the
//! ETag, the long-poll, and the client that asks for compression — over a real
//! server.
use std::io::{Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{TestServer, files};
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use cfgsync_core::{
    ArtifactFile, ArtifactSet, CfgsyncClient, CfgsyncServerState, Error, FetchOptions,
    FetchOutcome, NodeArtifactsPayload, NodeFilesReplacement, NodeRegistration, ServedPayload,
    StaticConfigSource, build_cfgsync_router, serve_app_on,
};

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

/// zstd decoded by ruzstd's whole-buffer decoder (not the client's reader).
fn unzstd(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 << 20);
    ruzstd::decoding::FrameDecoder::new()
        .decode_all_to_vec(data, &mut out)
        .unwrap();
    out
}

/// `data` decoded from the `Content-Encoding` it came with.
fn decoded(coding: Option<&str>, data: &[u8]) -> Vec<u8> {
    match coding {
        None => data.to_vec(),
        Some("gzip") => gunzip(data),
        Some("zstd") => unzstd(data),
        Some(other) => panic!("unexpected Content-Encoding {other}"),
    }
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
async fn compressed_answers_decode_to_the_identity_bytes_under_the_same_etag() {
    let server = TestServer::with_source(Arc::new(source())).await;
    let url = server.url("/node");
    for id in ["node-1", "node-2"] {
        let body = format!(r#"{{"identifier":"{id}","ip":"10.0.0.5"}}"#);
        post_node(&server.url("/register"), &body, &[]).await;
        let (_, plain_headers, plain) = post_node(&url, &body, &[]).await;
        let etag = header(&plain_headers, "etag").unwrap().to_owned();
        for (accept, coding) in [
            ("gzip", "gzip"),
            ("br;q=1.0, gzip;q=0.8, identity;q=0.5", "gzip"),
            ("*", "gzip"),
            ("zstd, gzip", "gzip"), // equal weights: gzip, the smaller
            ("zstd", "zstd"),
            ("gzip;q=0.5, zstd", "zstd"),
            ("br, zstd;q=0.9, identity;q=0.1", "zstd"),
            ("*, gzip;q=0", "zstd"),
        ] {
            let (status, headers, compressed) =
                post_node(&url, &body, &[("accept-encoding", accept)]).await;
            assert_eq!(status, 200);
            assert_eq!(
                header(&headers, "content-encoding"),
                Some(coding),
                "{accept}"
            );
            assert_eq!(header(&headers, "vary"), Some("accept-encoding"));
            assert_eq!(
                header(&headers, "content-length"),
                Some(compressed.len().to_string().as_str())
            );
            // The ETag names the content, not the coding.
            assert_eq!(header(&headers, "etag"), Some(etag.as_str()));
            assert_eq!(decoded(Some(coding), &compressed), plain, "{id}, {accept}");
            if id == "node-1" {
                assert!(
                    compressed.len() * 4 < plain.len(),
                    "{} bytes {coding} vs {} identity",
                    compressed.len(),
                    plain.len()
                );
            }
        }
        // Asked not to compress, or only in codings we lack: identity.
        for accept in [
            "gzip;q=0",
            "br, deflate",
            "gzip;q=0.5, identity",
            "zstd;q=0.5, gzip;q=0.5, identity",
            "*, gzip;q=0, zstd;q=0",
            "",
        ] {
            let (_, headers, bytes) = post_node(&url, &body, &[("accept-encoding", accept)]).await;
            assert_eq!(header(&headers, "content-encoding"), None, "{accept:?}");
            assert_eq!(bytes, plain, "{accept:?}");
        }
        // If-None-Match with that ETag: 304 whatever the coding asked.
        for accept in [None, Some("gzip"), Some("zstd")] {
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
    for coding in ["gzip", "zstd"] {
        let (_, headers, compressed) =
            post_node(&url, BODY_1, &[("accept-encoding", coding)]).await;
        assert_eq!(header(&headers, "content-encoding"), Some(coding));
        assert_eq!(decoded(Some(coding), &compressed), expected_body(&new_own));
        assert_eq!(
            header(&headers, "etag"),
            Some(expected_etag(&new_own).as_str())
        );
    }
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_long_poll_is_answered_in_gzip_when_asked() {
    long_poll_in("gzip").await;
}

#[tokio::test]
async fn a_long_poll_is_answered_in_zstd_when_asked() {
    long_poll_in("zstd").await;
}

/// A long-poll asking for `coding`: held while not ready, then while
/// unchanged, answered in `coding` each time.
async fn long_poll_in(coding: &'static str) {
    let server = TestServer::with_source(Arc::new(source())).await;
    let url = server.url("/node?wait=30");
    // Not registered yet: held until node-1 registers, then answered compressed.
    let waiting = {
        let url = url.clone();
        tokio::spawn(async move { post_node(&url, BODY_1, &[("accept-encoding", coding)]).await })
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
    assert_eq!(header(&headers, "content-encoding"), Some(coding));
    assert_eq!(
        decoded(Some(coding), &compressed),
        expected_body(&own("node-1"))
    );

    // Holding the ETag: held until the payload changes, then the new one.
    let etag = header(&headers, "etag").unwrap().to_owned();
    let waiting = {
        let (url, etag) = (url.clone(), etag.clone());
        tokio::spawn(async move {
            post_node(
                &url,
                BODY_1,
                &[("accept-encoding", coding), ("if-none-match", &etag)],
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
    assert_eq!(header(&headers, "content-encoding"), Some(coding));
    assert_ne!(header(&headers, "etag"), Some(etag.as_str()));
    assert_eq!(decoded(Some(coding), &compressed), expected_body(&new_own));
    server.shutdown().await.unwrap();
}

/// What passed a [`record_coding`] layer: the request's `Accept-Encoding`
/// (as the client sent it) and the answer's `Content-Encoding`, per request.
type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

/// Records every request's `Accept-Encoding` and its answer's
/// `Content-Encoding`; with `forced`, hands the router that `Accept-Encoding`
/// instead of the client's (a server preferring another coding).
async fn record_coding(
    axum::extract::State((seen, forced)): axum::extract::State<(Seen, Option<&'static str>)>,
    mut request: Request,
    next: Next,
) -> Response {
    let text = |v: &axum::http::HeaderValue| v.to_str().unwrap().to_owned();
    let accept = request.headers().get("accept-encoding").map(text);
    if let Some(forced) = forced {
        request.headers_mut().insert(
            "accept-encoding",
            axum::http::HeaderValue::from_static(forced),
        );
    }
    let response = next.run(request).await;
    let coding = response.headers().get("content-encoding").map(text);
    seen.lock().unwrap().push((accept, coding));
    response
}

#[tokio::test]
async fn the_client_asks_for_both_codings_and_gets_gzip() {
    let seen = client_fetches_through(None).await;
    let both = Some("gzip, zstd".to_owned());
    assert_eq!(
        seen,
        [
            (None, None),
            (both.clone(), Some("gzip".to_owned())),
            (None, None),
            (both, Some("gzip".to_owned())),
        ],
        "register asks for no coding; /node asks for both at one weight and gets gzip"
    );
}

#[tokio::test]
async fn the_client_decodes_our_servers_zstd() {
    let seen = client_fetches_through(Some("zstd")).await;
    let codings: Vec<_> = seen.into_iter().map(|(_, coding)| coding).collect();
    let zstd = Some("zstd".to_owned());
    assert_eq!(codings, [None, zstd.clone(), None, zstd]);
}

/// `CfgsyncClient` registers node-1 and node-2 and fetches their payloads
/// from our server (answering as if asked for `forced`); both payloads must be
/// exactly the merged sets, with their ETags. Returns what the layer saw.
async fn client_fetches_through(
    forced: Option<&'static str>,
) -> Vec<(Option<String>, Option<String>)> {
    let state = CfgsyncServerState::new(Arc::new(source()));
    let seen: Seen = Arc::default();
    let app = build_cfgsync_router(state.clone()).layer(middleware::from_fn_with_state(
        (seen.clone(), forced),
        record_coding,
    ));
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
    drop(stop);
    served.await.unwrap().unwrap();
    seen.lock().unwrap().clone()
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
    // Four times the cap decoded; kept small, as every byte is compressed and
    // decoded by a debug build (4 MiB under a 1 MiB cap cost 3 CPU-s).
    const CAP: u64 = 128 << 10;
    let payload = serde_json::to_vec(&NodeArtifactsPayload::new(files(&[(
        "/big",
        &" ".repeat(4 * CAP as usize),
    )])))
    .unwrap();
    let zstd = ruzstd::encoding::compress_to_vec(
        payload.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    );
    for (coding, bomb) in [("gzip", gzip(&payload)), ("zstd", zstd.clone())] {
        assert!(
            (bomb.len() as u64) < CAP / 16,
            "{coding}: a small body on the wire"
        );
        let (url, server) = serving(coding, bomb).await;
        // Under the cap, four times it decoded is refused, whatever was sent.
        let capped = CfgsyncClient::builder(&url)
            .max_payload_bytes(CAP)
            .build()
            .unwrap();
        let err = capped.fetch_node_config(&node("node-1")).await.unwrap_err();
        assert!(
            matches!(
                &err,
                Error::PayloadTooLarge {
                    route: "/node",
                    limit: CAP,
                    ..
                }
            ),
            "{coding}: {err}"
        );
        // With room for it, the same answer decodes.
        let roomy = CfgsyncClient::new(&url).unwrap();
        let fetched = roomy.fetch_node_config(&node("node-1")).await.unwrap();
        assert_eq!(
            fetched.files.get("/big").unwrap().content.len() as u64,
            4 * CAP
        );
        server.abort();
    }

    // A body that is not what its Content-Encoding says, or is cut short.
    for (coding, body, says) in [
        (
            "zstd",
            gzip(&payload),
            "zstd body does not decode: not a zstd frame",
        ),
        (
            "zstd",
            zstd[..zstd.len() / 2].to_vec(),
            "zstd body does not decode",
        ),
        ("gzip", zstd.clone(), "gzip body does not decode"),
    ] {
        let (url, server) = serving(coding, body).await;
        let err = CfgsyncClient::new(&url)
            .unwrap()
            .fetch_node_config(&node("node-1"))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::InvalidResponse { route: "/node", reason } if reason.contains(says)),
            "{err}"
        );
        server.abort();
    }

    // Identity bodies meet the same cap.
    let (url, server) = serving("identity", payload.clone()).await;
    let capped = CfgsyncClient::builder(&url)
        .max_payload_bytes(CAP)
        .build()
        .unwrap();
    let err = capped.fetch_node_config(&node("node-1")).await.unwrap_err();
    assert!(
        matches!(
            &err,
            Error::PayloadTooLarge {
                route: "/node",
                limit: CAP,
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
