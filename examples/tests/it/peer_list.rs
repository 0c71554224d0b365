//! The peer-list adapter served by a real cfgsync server: 425 until the
//! quorum, then the exact files; bad metadata is a JSON 400.
use std::sync::Arc;

use cfgsync_adapter::{MemoryRegistrationStore, SnapshotConfigSource};
use cfgsync_core::{CfgsyncClient, Error, NodeRegistration};
use cfgsync_examples::peer_list::PeerListMaterializer;
use cfgsync_test_support::TestServer;

#[tokio::test]
async fn nodes_get_their_config_and_the_peer_list_once_all_registered() {
    let source = SnapshotConfigSource::new(
        Arc::new(MemoryRegistrationStore::new()),
        PeerListMaterializer::new(3, 3000),
    );
    let server = TestServer::with_source(Arc::new(source)).await;
    let client = CfgsyncClient::new(&server.url).unwrap();

    let nodes = [
        NodeRegistration::new("c", "10.0.0.3".parse().unwrap()),
        NodeRegistration::new("a", "10.0.0.1".parse().unwrap())
            .with_metadata(&serde_json::json!({"port": 9000}))
            .unwrap(),
        NodeRegistration::new("b", "::1".parse().unwrap()),
    ];
    for (i, node) in nodes.iter().enumerate() {
        client.register_node(node).await.unwrap();
        let answer = client.fetch_node_config(node).await;
        if i < 2 {
            assert!(
                matches!(answer, Err(Error::NotReady { .. })),
                "{i}: {answer:?}"
            );
        }
    }
    let peers = "peers:\n  - id: a\n    addr: 10.0.0.1:9000\n  - id: b\n    addr: [::1]:3000\n  - id: c\n    addr: 10.0.0.3:3000\n";
    for (node, index) in nodes.iter().zip([2, 0, 1]) {
        let payload = client.fetch_node_config(node).await.unwrap();
        assert_eq!(payload.files.get("/peers.yaml").unwrap().content, peers);
        let config = &payload.files.get("/config.yaml").unwrap().content;
        assert!(
            config.starts_with(&format!("id: {}\nindex: {index}\n", node.identifier)),
            "{config}"
        );
    }

    // A node with metadata the adapter cannot read is refused at /register with
    // a JSON 400 naming it, and never joins the peer list.
    let bad = NodeRegistration::new("d", "10.0.0.4".parse().unwrap())
        .with_metadata(&serde_json::json!({"port": "x"}))
        .unwrap();
    let err = client.register_node(&bad).await.unwrap_err();
    assert!(
        matches!(&err, Error::Rejected { status: 400, code, message, .. } if code == "bad_request" && message.contains("\"d\"")),
        "{err:?}"
    );
    assert!(matches!(
        client.fetch_node_config(&bad).await,
        Err(Error::NotReady { .. })
    ));
    let payload = client.fetch_node_config(&nodes[0]).await.unwrap();
    assert_eq!(payload.files.get("/peers.yaml").unwrap().content, peers);
}
