//! Several server replicas sharing one object-store registration set (the
//! in-process S3): read-your-writes across replicas, bounded refreshes for
//! unknown nodes, group commit of registrations, the one-time import of the
//! previous layout.
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cfgsync_adapter::{
    MaterializingConfigSource, NodeArtifacts, NodeArtifactsCatalog, NodeArtifactsMaterializer,
    NodeMaterialization, ObjectRegistrationStore, ObjectStoreOptions, RegistrationSnapshot,
    RegistrationSnapshotMaterializer, RegistrationStore, Result, SnapshotConfigSource,
    SnapshotMaterialization,
};
use cfgsync_core::{ArtifactFile, ArtifactSet, ConfigSource, NodeRegistration};
use cfgsync_test_support::{S3Harness, TestServer};

fn reg(id: &str, ip: &str) -> NodeRegistration {
    NodeRegistration::new(id, ip.parse().unwrap())
}

fn own_config(identifier: &str) -> ArtifactSet {
    ArtifactSet::from_files([ArtifactFile::new(
        "/config.yaml",
        format!("id: {identifier}\n"),
    )])
    .unwrap()
}

/// Every registered node gets its own `/config.yaml` at once (whole snapshot).
#[derive(Debug)]
struct EachNodeAtOnce;

#[async_trait]
impl RegistrationSnapshotMaterializer for EachNodeAtOnce {
    async fn materialize_snapshot(
        &self,
        nodes: &RegistrationSnapshot,
    ) -> Result<SnapshotMaterialization> {
        Ok(SnapshotMaterialization::Ready(NodeArtifactsCatalog::new(
            nodes
                .iter()
                .map(|n| NodeArtifacts::new(n.identifier.clone(), own_config(&n.identifier))),
        )))
    }
}

/// Every registered node gets its own `/config.yaml` at once (one node).
#[derive(Debug)]
struct OneNodeAtOnce;

#[async_trait]
impl NodeArtifactsMaterializer for OneNodeAtOnce {
    async fn materialize_node(&self, node: &NodeRegistration) -> Result<NodeMaterialization> {
        Ok(NodeMaterialization::Ready(own_config(&node.identifier)))
    }
}

/// Polling that never happens within a test: only what a test triggers reads.
const NO_POLL: Duration = Duration::from_secs(3600);

async fn replica(s3: &S3Harness, options: &ObjectStoreOptions) -> Arc<ObjectRegistrationStore> {
    Arc::new(
        ObjectRegistrationStore::open(
            s3.store.clone(),
            &format!("{}/replicas", s3.prefix),
            options.clone(),
        )
        .await
        .unwrap(),
    )
}

async fn node_status(http: &reqwest::Client, server: &TestServer, id: &str) -> u16 {
    http.post(server.url("/node"))
        .json(&reg(id, "10.0.0.1"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_node_registered_on_one_replica_is_served_by_the_others_on_its_first_request() {
    let s3 = S3Harness::start().await.unwrap();
    // No polling: only the refresh for an unknown node can teach B and C.
    let options = ObjectStoreOptions::default()
        .with_poll_interval(NO_POLL)
        .with_unknown_refresh_interval(Duration::from_millis(100));
    let a = TestServer::with_source(Arc::new(MaterializingConfigSource::new(
        replica(&s3, &options).await,
        OneNodeAtOnce,
    )))
    .await;
    // Both kinds of source over the shared store.
    let b = TestServer::with_source(Arc::new(SnapshotConfigSource::new(
        replica(&s3, &options).await,
        EachNodeAtOnce,
    )))
    .await;
    let c = TestServer::with_source(Arc::new(MaterializingConfigSource::new(
        replica(&s3, &options).await,
        OneNodeAtOnce,
    )))
    .await;
    if s3.is_in_process() {
        // Every S3 request takes a while, as across a network.
        s3.faults().delay(Duration::from_millis(25));
    } else {
        eprintln!("!!! outside S3: no added latency !!!");
    }

    let http = cfgsync_test_support::http_client();
    for i in 0..8 {
        let id = format!("node-{i}");
        let registered = http
            .post(a.url("/register"))
            .json(&reg(&id, "10.0.0.1"))
            .send()
            .await
            .unwrap();
        assert_eq!(registered.status(), 202);
        for (name, replica) in [("b", &b), ("c", &c)] {
            assert_eq!(
                node_status(&http, replica, &id).await,
                200,
                "{id}, registered on a, asks replica {name} for the first time"
            );
        }
    }
    // A node registered nowhere is still not ready.
    assert_eq!(node_status(&http, &b, "nowhere").await, 425);
    assert_eq!(node_status(&http, &c, "nowhere").await, 425);
}

#[tokio::test]
async fn a_storm_of_unknown_nodes_costs_one_listing_per_interval_not_one_per_request() {
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("!!! counting listings needs the in-process S3: skipped !!!");
        return;
    }
    let options = ObjectStoreOptions::default()
        .with_poll_interval(NO_POLL)
        .with_unknown_refresh_interval(Duration::from_millis(500));
    let store = replica(&s3, &options).await;
    let source: Arc<dyn ConfigSource> =
        Arc::new(SnapshotConfigSource::new(store.clone(), EachNodeAtOnce));
    let server = TestServer::with_source(source).await;
    s3.faults().delay(Duration::from_millis(10));
    s3.reset_counters();

    let http = cfgsync_test_support::http_client();
    let requests: u64 = 400;
    let answers = futures::future::join_all((0..requests).map(|i| {
        let (http, server) = (&http, &server);
        async move { node_status(http, server, &format!("stranger-{i}")).await }
    }))
    .await;
    assert!(answers.iter().all(|&status| status == 425), "{answers:?}");
    let listings = s3.list_requests().unwrap();
    assert!(listings >= 1, "unknown nodes made the replica look");
    assert!(
        listings * 20 <= requests,
        "{listings} listings for {requests} requests about unknown nodes"
    );
}

#[tokio::test]
async fn concurrent_registrations_share_commits_and_reach_every_replica() {
    let s3 = S3Harness::start().await.unwrap();
    if !s3.is_in_process() {
        eprintln!("!!! counting writes needs the in-process S3: skipped !!!");
        return;
    }
    let options = ObjectStoreOptions::default().with_poll_interval(NO_POLL);
    let a = replica(&s3, &options).await;
    let b = replica(&s3, &options).await;
    let server_a =
        TestServer::with_source(Arc::new(SnapshotConfigSource::new(a, EachNodeAtOnce))).await;
    let server_b = TestServer::with_source(Arc::new(SnapshotConfigSource::new(
        b.clone(),
        EachNodeAtOnce,
    )))
    .await;
    // Each write takes a while, as across a network: registrations pile up
    // behind the commit in flight.
    s3.faults().delay(Duration::from_millis(20));
    s3.reset_counters();

    let http = cfgsync_test_support::http_client();
    let registrations: u64 = 400;
    let acks = futures::future::join_all((0..registrations).map(|i| {
        let http = http.clone();
        let url = server_a.url("/register");
        async move {
            http.post(url)
                .json(&reg(&format!("node-{i:03}"), "10.1.0.1"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    assert!(acks.iter().all(|&status| status == 202), "{acks:?}");
    let writes = s3.put_requests().unwrap();
    assert!(
        writes * 10 <= registrations,
        "{writes} S3 writes for {registrations} registrations"
    );

    // Every registration reached the other replica, in one generation order.
    b.refresh().await.unwrap();
    let seen = b.snapshot().await.unwrap();
    assert_eq!(seen.len(), 400);
    assert!(seen.generation() <= writes, "one generation per commit");
    for i in [0, 199, 399] {
        assert_eq!(
            node_status(&http, &server_b, &format!("node-{i:03}")).await,
            200
        );
    }
}

#[tokio::test]
async fn replicas_opening_a_prefix_of_the_previous_layout_import_it_once_and_agree() {
    use object_store::{ObjectStoreExt as _, PutPayload, path::Path};

    let s3 = S3Harness::start().await.unwrap();
    let prefix = format!("{}/replicas", s3.prefix);
    // The previous layout, as it wrote it: a generation counter and one
    // `nodes/<identifier>.json` per node holding the registration.
    let legacy: Vec<NodeRegistration> = (0..5)
        .map(|i| reg(&format!("old-{i}"), &format!("10.0.1.{i}")))
        .collect();
    for registration in &legacy {
        s3.store
            .put(
                &Path::from(format!("{prefix}/nodes/{}.json", registration.identifier)),
                PutPayload::from(serde_json::to_vec(registration).unwrap()),
            )
            .await
            .unwrap();
    }
    s3.store
        .put(
            &Path::from(format!("{prefix}/generation")),
            PutPayload::from("5"),
        )
        .await
        .unwrap();
    // A broken legacy object is skipped, not fatal.
    s3.store
        .put(
            &Path::from(format!("{prefix}/nodes/broken.json")),
            PutPayload::from("{not json"),
        )
        .await
        .unwrap();

    let options = ObjectStoreOptions::default().with_poll_interval(NO_POLL);
    let (a, b) = tokio::join!(replica(&s3, &options), replica(&s3, &options));
    let (sa, sb) = (a.snapshot().await.unwrap(), b.snapshot().await.unwrap());
    assert_eq!(sa.generation(), 1, "the import is the log's first entry");
    assert_eq!(sb.generation(), 1, "one import, seen by both");
    for (name, snapshot) in [("a", &sa), ("b", &sb)] {
        assert_eq!(snapshot.len(), legacy.len(), "replica {name}");
        for registration in &legacy {
            assert_eq!(
                snapshot.get(&registration.identifier),
                Some(registration),
                "replica {name} has {}",
                registration.identifier
            );
        }
    }
    // The legacy objects stay where they were.
    assert!(
        s3.store
            .head(&Path::from(format!("{prefix}/nodes/old-0.json")))
            .await
            .is_ok()
    );

    // New registrations go to the log after the import, seen by every replica.
    assert!(a.put(reg("new-0", "10.0.2.1")).await.unwrap());
    b.refresh().await.unwrap();
    let sb = b.snapshot().await.unwrap();
    assert_eq!(sb.generation(), sa.generation() + 1);
    assert!(sb.contains("new-0") && sb.contains("old-4"));

    // A replica opened later reads the log, not the legacy objects again.
    let c = replica(&s3, &options).await;
    let sc = c.snapshot().await.unwrap();
    assert_eq!(sc.generation(), sb.generation());
    assert_eq!(sc.len(), legacy.len() + 1);
}
