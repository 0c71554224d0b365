//! Config sources over stores and materializers, served by a real cfgsync server.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cfgsync_adapter::{
    DeploymentAdapter, DeploymentMaterializer, Error, MaterializingConfigSource,
    MemoryRegistrationStore, NodeArtifacts, NodeArtifactsCatalog, NodeArtifactsMaterializer,
    NodeMaterialization, ObjectRegistrationStore, ObjectStoreOptions, RegistrationSnapshot,
    RegistrationSnapshotMaterializer, RegistrationStore, Result, SnapshotConfigSource,
    SnapshotMaterialization,
};
use cfgsync_core::{
    ArtifactFile, ArtifactSet, CfgsyncClient, ChangeNotifier, ConfigResolveResponse, ConfigSource,
    FetchOptions, FetchOutcome, NodeRegistration,
};
use cfgsync_test_support::{S3Harness, TestServer, long_poll, woken};
use tokio::sync::watch;

fn reg(id: &str, ip: &str) -> NodeRegistration {
    NodeRegistration::new(id, ip.parse().unwrap())
}

fn one_file(path: &str, content: impl Into<String>) -> ArtifactSet {
    ArtifactSet::from_files([ArtifactFile::new(path, content)]).unwrap()
}

/// Waits for `expected` nodes, then gives each its config plus the shared peer
/// list; counts its runs.
#[derive(Debug, Default)]
struct Peers {
    expected: usize,
    runs: AtomicUsize,
}

#[async_trait]
impl RegistrationSnapshotMaterializer for Peers {
    async fn materialize_snapshot(
        &self,
        nodes: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        // Slow enough that concurrent requests overlap with the run.
        tokio::time::sleep(Duration::from_millis(30)).await;
        if nodes.len() < self.expected {
            return Ok(SnapshotMaterialization::NotReady);
        }
        let peers: String = nodes.iter().map(|n| format!("{}\n", n.ip)).collect();
        let catalog = NodeArtifactsCatalog::new(nodes.iter().map(|n| {
            NodeArtifacts::new(
                n.identifier.clone(),
                one_file("/config.yaml", format!("id: {}\n", n.identifier)),
            )
        }))
        .with_shared(one_file("/peers.txt", peers));
        Ok(SnapshotMaterialization::Ready(catalog))
    }
}

#[tokio::test]
async fn cached_materializer_runs_once_per_generation_under_100_concurrent_requests() {
    let source = Arc::new(SnapshotConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        Peers {
            expected: 3,
            ..Peers::default()
        },
    ));
    for (id, ip) in [("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")] {
        source.register(reg(id, ip)).await.unwrap();
    }
    let requests = (0..100).map(|i| {
        let source = source.clone();
        let id = ["a", "b", "c"][i % 3];
        tokio::spawn(async move { source.resolve(&reg(id, "10.0.0.9")).await })
    });
    let mut etags = std::collections::HashMap::new();
    for answer in futures::future::join_all(requests).await {
        let ConfigResolveResponse::Ready(payload) = answer.unwrap().unwrap() else {
            panic!("all registered: ready");
        };
        assert_eq!(
            payload
                .payload()
                .unwrap()
                .files
                .get("/peers.txt")
                .unwrap()
                .content,
            "10.0.0.1\n10.0.0.2\n10.0.0.3\n"
        );
        etags
            .entry(
                payload
                    .payload()
                    .unwrap()
                    .files
                    .get("/config.yaml")
                    .unwrap()
                    .content
                    .clone(),
            )
            .or_insert_with(|| payload.etag().to_owned());
    }
    assert_eq!(
        source.cache().inner().runs.load(Ordering::SeqCst),
        1,
        "one run for one generation"
    );
    assert_eq!(etags.len(), 3);

    // A re-registration with the same data is no change: still cached.
    source.register(reg("a", "10.0.0.1")).await.unwrap();
    source.resolve(&reg("a", "10.0.0.1")).await.unwrap();
    assert_eq!(source.cache().inner().runs.load(Ordering::SeqCst), 1);
    // A new generation materializes again, once.
    source.register(reg("d", "10.0.0.4")).await.unwrap();
    let d = reg("d", "10.0.0.4");
    let answers = futures::future::join_all((0..20).map(|_| source.resolve(&d))).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Ok(ConfigResolveResponse::Ready(_))))
    );
    assert_eq!(source.cache().inner().runs.load(Ordering::SeqCst), 2);
    // A node that is not registered is not ready, whatever the catalog.
    assert!(matches!(
        source.resolve(&reg("zz", "10.0.0.9")).await.unwrap(),
        ConfigResolveResponse::NotReady
    ));
}

#[tokio::test]
async fn long_polling_node_wakes_when_the_last_peer_registers() {
    let source = Arc::new(SnapshotConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        Peers {
            expected: 3,
            ..Peers::default()
        },
    ));
    let server = TestServer::with_source(source).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    client.register_node(&reg("a", "10.0.0.1")).await.unwrap();
    let waiting = long_poll(&client, &reg("a", "10.0.0.1"), None);
    client.register_node(&reg("b", "10.0.0.2")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished(), "two of three: still not ready");
    client.register_node(&reg("c", "10.0.0.3")).await.unwrap();
    let (payload, _) = woken(waiting).await;
    assert_eq!(
        payload.files.get("/peers.txt").unwrap().content,
        "10.0.0.1\n10.0.0.2\n10.0.0.3\n"
    );
}

/// `POST /node` as a plain HTTP client: status, `Content-Encoding`, ETag, body.
async fn raw_node(
    server: &TestServer,
    node: &NodeRegistration,
    accept: Option<&str>,
) -> (u16, Option<String>, String, Vec<u8>) {
    let mut request = cfgsync_test_support::http_client()
        .post(server.url("/node"))
        .json(node);
    if let Some(accept) = accept {
        request = request.header("accept-encoding", accept);
    }
    let response = request.send().await.unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let (coding, etag) = (
        header("content-encoding"),
        header("etag").unwrap_or_default(),
    );
    let status = response.status().as_u16();
    (
        status,
        coding,
        etag,
        response.bytes().await.unwrap().to_vec(),
    )
}

#[tokio::test]
async fn compressed_answers_follow_every_generation_of_the_shared_files() {
    // Ready from the first node on: every registration is a new generation
    // with a new shared peer list, compressed anew.
    let source = Arc::new(SnapshotConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        Peers {
            expected: 1,
            ..Peers::default()
        },
    ));
    let server = TestServer::with_source(source).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let nodes: Vec<NodeRegistration> = (1..=4)
        .map(|i| reg(&format!("node-{i}"), &format!("10.0.0.{i}")))
        .collect();
    let mut etags = std::collections::HashSet::new();
    for (n, joining) in nodes.iter().enumerate() {
        client.register_node(joining).await.unwrap();
        let peers: String = nodes[..=n].iter().map(|r| format!("{}\n", r.ip)).collect();
        for node in &nodes[..=n] {
            let (status, coding, etag, plain) = raw_node(&server, node, None).await;
            assert_eq!((status, coding), (200, None));
            let payload: cfgsync_core::NodeArtifactsPayload =
                serde_json::from_slice(&plain).unwrap();
            assert_eq!(payload.files.get("/peers.txt").unwrap().content, peers);
            for asked in ["gzip", "zstd"] {
                let (status, coding, compressed_etag, compressed) =
                    raw_node(&server, node, Some(asked)).await;
                assert_eq!((status, coding.as_deref()), (200, Some(asked)));
                assert_eq!(compressed_etag, etag, "one ETag for every coding");
                let mut decoded = Vec::with_capacity(1 << 20);
                if asked == "gzip" {
                    std::io::Read::read_to_end(
                        &mut flate2::read::MultiGzDecoder::new(compressed.as_slice()),
                        &mut decoded,
                    )
                    .unwrap();
                } else {
                    ruzstd::decoding::FrameDecoder::new()
                        .decode_all_to_vec(&compressed, &mut decoded)
                        .unwrap();
                }
                assert_eq!(
                    decoded, plain,
                    "{asked}: {} at generation {n}",
                    node.identifier
                );
            }
            etags.insert(etag);
        }
    }
    // Each generation changed every node's payload: 1 + 2 + 3 + 4 distinct ETags.
    assert_eq!(etags.len(), 10);
}

#[tokio::test]
async fn two_servers_sharing_s3_serve_the_same_payload_and_etag() {
    let s3 = S3Harness::start().await.unwrap();
    let options = ObjectStoreOptions::default().with_poll_interval(Duration::from_millis(50));
    let mut servers = Vec::new();
    for _ in 0..2 {
        let store = Arc::new(
            ObjectRegistrationStore::open(
                s3.store.clone(),
                &format!("{}/replicas", s3.prefix),
                options.clone(),
            )
            .await
            .unwrap(),
        );
        let source = Arc::new(SnapshotConfigSource::new(
            store,
            Peers {
                expected: 2,
                ..Peers::default()
            },
        ));
        servers.push(TestServer::with_source(source).await);
    }
    let on_a = CfgsyncClient::new(&servers[0].url).unwrap();
    let on_b = CfgsyncClient::new(&servers[1].url).unwrap();
    on_a.register_node(&reg("node-1", "10.0.0.1"))
        .await
        .unwrap();
    on_b.register_node(&reg("node-2", "10.0.0.2"))
        .await
        .unwrap();

    // node-1 registered on A asks B (long-poll until B has seen both).
    let options = FetchOptions {
        if_none_match: None,
        wait: Some(Duration::from_secs(10)),
    };
    let mut answers = Vec::new();
    for client in [&on_b, &on_a] {
        let FetchOutcome::Updated { payload, etag } = client
            .fetch_node_config_with(&reg("node-1", "10.0.0.1"), &options)
            .await
            .unwrap()
        else {
            panic!("payload expected");
        };
        answers.push((payload, etag.unwrap()));
    }
    assert_eq!(
        answers[0], answers[1],
        "same payload and ETag from both replicas"
    );
    assert_eq!(
        answers[0].0.files.get("/peers.txt").unwrap().content,
        "10.0.0.1\n10.0.0.2\n"
    );
}

/// Serves each node the content of the "channel" its metadata names; the
/// channels can be re-published, which is an input change.
#[derive(Debug)]
struct Channels {
    content: std::sync::RwLock<std::collections::HashMap<String, String>>,
    changes: ChangeNotifier,
}

#[derive(serde::Deserialize)]
struct ChannelMeta {
    channel: String,
}

#[async_trait]
impl NodeArtifactsMaterializer for Channels {
    async fn materialize_node(&self, node: &NodeRegistration) -> Result<NodeMaterialization> {
        let meta: ChannelMeta = node
            .metadata()
            .map_err(|e| Error::InvalidMetadata {
                identifier: node.identifier.clone(),
                reason: e.to_string(),
            })?
            .ok_or_else(|| Error::InvalidMetadata {
                identifier: node.identifier.clone(),
                reason: "no metadata; expected {\"channel\": NAME}".into(),
            })?;
        Ok(match self.content.read().unwrap().get(&meta.channel) {
            Some(text) => NodeMaterialization::Ready(one_file("/channel.txt", text.clone())),
            None => NodeMaterialization::NotReady,
        })
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn not_ready_reason(&self, node: &NodeRegistration) -> Option<String> {
        let meta: ChannelMeta = node.metadata().ok()??;
        Some(format!("channel {} is not published yet", meta.channel))
    }
}

#[tokio::test]
async fn materializing_source_status_says_what_a_waiting_node_waits_for() {
    let channels = Arc::new(Channels {
        content: Default::default(),
        changes: ChangeNotifier::new(),
    });
    let source =
        MaterializingConfigSource::new(Arc::new(MemoryRegistrationStore::new()), channels.clone());
    let node = reg("n1", "10.0.0.1")
        .with_metadata(&serde_json::json!({"channel": "beta"}))
        .unwrap();
    source.register(node.clone()).await.unwrap();
    // The node's own answer names the reason too (its 425 message).
    let answer = source.resolve(&node).await.unwrap();
    assert!(
        matches!(&answer, ConfigResolveResponse::NotReadyBecause { reason } if reason == "channel beta is not published yet"),
        "{answer:?}"
    );
    let nodes = source.status().await.unwrap().nodes.unwrap();
    assert_eq!(
        nodes[0].answer,
        cfgsync_core::NodeAnswer::NotReady {
            reason: "channel beta is not published yet".into()
        }
    );
    // Once ready, the reason is gone.
    channels
        .content
        .write()
        .unwrap()
        .insert("beta".into(), "v1".into());
    channels.changes.notify();
    let nodes = source.status().await.unwrap().nodes.unwrap();
    assert!(nodes[0].answer.is_ready(), "{:?}", nodes[0].answer);
}

#[tokio::test]
async fn materializing_source_follows_its_inputs_and_rejects_bad_metadata() {
    let channels = Arc::new(Channels {
        content: Default::default(),
        changes: ChangeNotifier::new(),
    });
    let source = Arc::new(MaterializingConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        channels.clone(),
    ));
    let server = TestServer::with_source(source).await;
    let client = CfgsyncClient::new(&server.url).unwrap();
    let node = reg("n1", "10.0.0.1")
        .with_metadata(&serde_json::json!({"channel": "stable"}))
        .unwrap();
    client.register_node(&node).await.unwrap();
    assert!(matches!(
        client.fetch_node_config(&node).await,
        Err(cfgsync_core::Error::NotReady { .. })
    ));

    // Publishing wakes the long-poll with the content.
    let waiting = long_poll(&client, &node, None);
    tokio::time::sleep(Duration::from_millis(100)).await;
    channels
        .content
        .write()
        .unwrap()
        .insert("stable".into(), "v1".into());
    channels.changes.notify();
    let (_, v1) = woken(waiting).await;

    // Re-publishing changes the ETag, and a node holding the old one wakes.
    let waiting = long_poll(&client, &node, Some(v1.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiting.is_finished());
    channels
        .content
        .write()
        .unwrap()
        .insert("stable".into(), "v2".into());
    channels.changes.notify();
    let (payload, v2) = woken(waiting).await;
    assert_ne!(v1, v2);
    assert_eq!(payload.files.get("/channel.txt").unwrap().content, "v2");

    // Bad metadata: a JSON 400 naming the node; replace: 405.
    for bad in [
        reg("n2", "10.0.0.2"),
        reg("n3", "10.0.0.3")
            .with_metadata(&serde_json::json!({"chan": 1}))
            .unwrap(),
    ] {
        client.register_node(&bad).await.unwrap();
        let err = client.fetch_node_config(&bad).await.unwrap_err();
        assert!(
            matches!(&err, cfgsync_core::Error::Rejected { status: 400, code, message, .. } if code == "bad_request" && message.contains(&bad.identifier)),
            "{err:?}"
        );
    }
}

/// A deployment model: the ordered member list; node i gets its index.
#[derive(Debug)]
struct Cluster;

impl DeploymentAdapter for Cluster {
    type Model = Vec<String>;

    fn build_model(&self, snapshot: &RegistrationSnapshot) -> Result<Option<Vec<String>>> {
        Ok((snapshot.len() >= 2).then(|| snapshot.iter().map(|n| n.identifier.clone()).collect()))
    }

    fn node_files(&self, model: &Vec<String>, node: &NodeRegistration) -> Result<ArtifactSet> {
        let index = model
            .iter()
            .position(|m| *m == node.identifier)
            .unwrap_or_default();
        let file = self.yaml_file("/node.yaml", &serde_json::json!({"index": index}))?;
        Ok(ArtifactSet::from_files([file]).unwrap())
    }

    fn shared_files(&self, model: &Vec<String>) -> Result<ArtifactSet> {
        Ok(ArtifactSet::from_files([self.json_file("/members.json", model)?]).unwrap())
    }
}

#[tokio::test]
async fn deployment_adapter_derives_node_and_shared_files_from_its_model() {
    let store: Arc<dyn RegistrationStore> = Arc::new(MemoryRegistrationStore::new());
    let source = SnapshotConfigSource::new(store, DeploymentMaterializer(Cluster));
    source.register(reg("y", "10.0.0.2")).await.unwrap();
    assert!(matches!(
        source.resolve(&reg("y", "10.0.0.2")).await.unwrap(),
        ConfigResolveResponse::NotReady
    ));
    source.register(reg("x", "10.0.0.1")).await.unwrap();
    let ConfigResolveResponse::Ready(payload) =
        source.resolve(&reg("y", "10.0.0.2")).await.unwrap()
    else {
        panic!("ready with two members");
    };
    assert_eq!(
        payload
            .payload()
            .unwrap()
            .files
            .get("/node.yaml")
            .unwrap()
            .content,
        "index: 1\n"
    );
    let members: Vec<String> = serde_json::from_str(
        &payload
            .payload()
            .unwrap()
            .files
            .get("/members.json")
            .unwrap()
            .content,
    )
    .unwrap();
    assert_eq!(members, ["x", "y"]);
}

#[tokio::test]
async fn snapshot_source_status_shows_waiting_nodes_until_the_policy_is_met() {
    let source = SnapshotConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        Peers {
            expected: 2,
            ..Peers::default()
        },
    );
    let first = reg("node-1", "10.0.0.1")
        .with_metadata(&serde_json::json!({"rack": "r1"}))
        .unwrap();
    source.register(first.clone()).await.unwrap();
    let status = source.status().await.unwrap();
    assert_eq!(status.kind, "registration");
    let nodes = status.nodes.unwrap();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].identifier, "node-1");
    assert_eq!(nodes[0].registration.as_ref(), Some(&first));
    assert!(
        matches!(&nodes[0].answer, cfgsync_core::NodeAnswer::NotReady { reason } if reason.contains("policy")),
        "{:?}",
        nodes[0].answer
    );

    source.register(reg("node-2", "10.0.0.2")).await.unwrap();
    let status = source.status().await.unwrap();
    let nodes = status.nodes.unwrap();
    let ConfigResolveResponse::Ready(payload) = source.resolve(&first).await.unwrap() else {
        panic!("node-1 is ready once two nodes registered");
    };
    assert_eq!(
        nodes[0].answer,
        cfgsync_core::NodeAnswer::Ready {
            etag: payload.etag().to_owned(),
            files: 2
        }
    );
    assert!(nodes[1].answer.is_ready());
}
