//! Property test: whatever a caller sends to whatever route, the server answers
//! a documented status with our JSON error body, never panics, and stays healthy.
//!
//! Cases: 256 by default; `CFGSYNC_PROPTEST_CASES=100000` for the long run.
use std::sync::{Arc, OnceLock};

use crate::common::{TestServer, two_node_static_source};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

struct Harness {
    runtime: tokio::runtime::Runtime,
    server: TestServer,
    /// Keeps connections alive across probes, as nodes do: an error answer must
    /// leave the connection usable.
    http: reqwest::Client,
    /// For bodies over the limit, after which the server rightly closes the
    /// connection (draining, bounded, so the answer is not lost to a reset).
    fresh: reqwest::Client,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(TestServer::with_source(Arc::new(two_node_static_source())));
        Harness {
            runtime,
            server,
            http: cfgsync_test_support::http_client(),
            fresh: cfgsync_test_support::http_client_builder()
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
        }
    })
}

#[derive(Debug, Clone)]
struct Probe {
    method: &'static str,
    path: String,
    content_type: Option<String>,
    if_none_match: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
}

fn identifier() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.-]{1,12}",
        ".{0,20}",
        "[\\x00-\\x1f/\\\\.]{1,6}",
        "x{250,260}",
        Just("..".to_owned()),
        Just("node-1".to_owned()),
    ]
}

fn json_body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,10}".prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(".{0,6}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let ip = prop_oneof![
        Just("10.0.0.5".to_owned()),
        Just("::1".to_owned()),
        "[0-9.:a-f]{0,20}",
    ];
    let registration =
        (identifier(), ip, prop::option::of(value.clone())).prop_map(|(id, ip, meta)| {
            let mut object = serde_json::json!({"identifier": id, "ip": ip});
            if let Some(meta) = meta {
                object["metadata"] = meta;
            }
            serde_json::to_vec(&object).unwrap()
        });
    let replacement = (
        identifier(),
        prop::collection::vec(("[a-z/.]{0,8}", ".{0,8}"), 0..4),
    )
        .prop_map(|(id, files)| {
            let files: Vec<_> = files
                .into_iter()
                .map(|(p, c)| serde_json::json!({"path": p, "content": c}))
                .collect();
            serde_json::to_vec(&serde_json::json!({"identifier": id, "files": files})).unwrap()
        });
    prop_oneof![
        4 => registration,
        2 => replacement,
        2 => value.prop_map(|v| serde_json::to_vec(&v).unwrap()),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (1usize..5000).prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => Just(vec![b'a'; 2 * 1024 * 1024 + 1]),
    ]
}

fn probe() -> impl Strategy<Value = Probe> {
    let method = prop_oneof![
        6 => Just("POST"),
        1 => Just("GET"),
        1 => Just("PUT"),
        1 => Just("DELETE"),
        1 => Just("PATCH"),
    ];
    let path = prop_oneof![
        Just("/register".to_owned()),
        Just("/node".to_owned()),
        Just("/init-with-node".to_owned()),
        Just("/node/replace".to_owned()),
        "[a-z0-9=&%]{0,12}".prop_map(|q| format!("/node?wait={q}")),
        "[a-z0-9=&%]{0,12}".prop_map(|q| format!("/node?{q}")),
        Just("/healthz".to_owned()),
        Just("/readyz".to_owned()),
        Just("/metrics".to_owned()),
        "/[a-z0-9/._~-]{0,20}",
    ];
    let content_type = prop::option::of(prop_oneof![
        Just("application/json".to_owned()),
        Just("application/json; charset=utf-8".to_owned()),
        Just("application/vnd.cfgsync+json".to_owned()),
        Just("text/plain".to_owned()),
        "[ -~]{0,30}",
    ]);
    let header = prop::option::of("[ -~]{0,40}");
    (
        method,
        path,
        content_type,
        header.clone(),
        header,
        json_body(),
    )
        .prop_map(
            |(method, path, content_type, if_none_match, authorization, body)| Probe {
                method,
                path,
                content_type,
                if_none_match,
                authorization,
                body,
            },
        )
}

const DOCUMENTED: &[(u16, &str)] = &[
    (400, "bad_request"),
    (401, "unauthorized"),
    (403, "forbidden"),
    (404, "missing_config"),
    (404, "not_found"),
    (405, "method_not_allowed"),
    (413, "payload_too_large"),
    (415, "unsupported_media_type"),
    (425, "not_ready"),
];

fn send(h: &Harness, probe: &Probe) -> (u16, Option<String>, Vec<u8>) {
    h.runtime.block_on(async {
        let method = reqwest::Method::from_bytes(probe.method.as_bytes()).unwrap();
        let client = if probe.body.len() > 2 * 1024 * 1024 {
            &h.fresh
        } else {
            &h.http
        };
        let mut request = client
            .request(method, h.server.url(&probe.path))
            .body(probe.body.clone());
        for (name, value) in [
            ("content-type", &probe.content_type),
            ("if-none-match", &probe.if_none_match),
            ("authorization", &probe.authorization),
        ] {
            if let Some(value) = value {
                request = request.header(name, value.as_str());
            }
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            status,
            content_type,
            response.bytes().await.unwrap().to_vec(),
        )
    })
}

#[test]
fn every_answer_is_documented_and_the_server_stays_healthy() {
    let cases = std::env::var("CFGSYNC_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let h = harness();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&probe(), |probe| {
            let (status, content_type, body) = send(h, &probe);
            match status {
                200 | 202 | 304 => {}
                _ => {
                    prop_assert_eq!(
                        content_type.as_deref(),
                        Some("application/json"),
                        "{:?} -> {}",
                        probe.path,
                        status
                    );
                    let parsed: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                        TestCaseError::fail(format!("{status} body is not JSON: {e}"))
                    })?;
                    let code = parsed["code"].as_str().unwrap_or_default();
                    prop_assert!(
                        DOCUMENTED.contains(&(status, code)),
                        "{} {} answered undocumented {} {:?}",
                        probe.method,
                        probe.path,
                        status,
                        code
                    );
                    prop_assert!(parsed["message"].as_str().is_some_and(|m| !m.is_empty()));
                }
            }
            Ok(())
        })
        .unwrap();
    let health = h.runtime.block_on(async {
        cfgsync_test_support::get(h.server.url("/healthz"))
            .await
            .unwrap()
            .status()
    });
    assert_eq!(health, 200);
}
