use cfgsync_core::StaticConfigSource;
pub use cfgsync_test_support::{TestServer, files};

/// node-1 and node-2 with their own config, plus a shared file that node-2 overrides.
pub fn two_node_static_source() -> StaticConfigSource {
    StaticConfigSource::new(files(&[
        ("/peers.txt", "shared peers\n"),
        ("/shared.yaml", "shared\n"),
    ]))
    .unwrap()
    .with_node("node-1", files(&[("/config.yaml", "id: node-1\n")]))
    .unwrap()
    .with_node(
        "node-2",
        files(&[
            ("/config.yaml", "id: node-2\n"),
            ("/shared.yaml", "node-2 wins\n"),
        ]),
    )
    .unwrap()
}

/// A raw POST with a JSON body, as a node would send it.
pub async fn post_json(url: &str, body: &str) -> reqwest::Response {
    cfgsync_test_support::http_client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

/// The error body's code, asserting the answer is our JSON error.
pub async fn error_code(response: reqwest::Response) -> (u16, String, String) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = response.text().await.unwrap();
    assert_eq!(
        content_type, "application/json",
        "status {status}, body {text:?}"
    );
    let body: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        status,
        body["code"].as_str().unwrap().to_owned(),
        body["message"].as_str().unwrap().to_owned(),
    )
}
