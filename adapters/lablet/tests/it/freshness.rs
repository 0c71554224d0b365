//! Freshness from the catalog: whoever changes it — the operator API of
//! another replica, the CLI on another machine or on the same data dir —
//! nodes long-polling any `lablet-sync serve` get the new content, because
//! every replica polls the catalog's change marker (every 500 ms) and re-reads
//! the definitions its nodes hold when it moves. The bound is that interval
//! plus one re-read; the tests give a generous 10 s (`woken`) and never time
//! anything.
use std::time::Duration;

use crate::common::env::{Env, FakeCpa, ServeProcess, bin_vars, run_bin};
use crate::common::*;
use cfgsync_core::{
    CfgsyncClient, FetchOptions, FetchOutcome, NodeArtifactsPayload, NodeRegistration,
};
use cfgsync_test_support::{S3Harness, long_poll, woken};

const LAB: &str = "LAB-1.1.1";
const OTHER: &str = "LAB-2";

fn node(id: &str, lablet: &str) -> NodeRegistration {
    NodeRegistration::new(id, "10.1.0.1".parse().unwrap())
        .with_metadata(&serde_json::json!({"lablet": lablet}))
        .unwrap()
}

fn manifest(payload: &NodeArtifactsPayload) -> serde_json::Value {
    serde_json::from_str(&payload.files.get("content.json").unwrap().content).unwrap()
}

/// The node's payload and ETag now (it must be ready).
async fn fetch(client: &CfgsyncClient, node: &NodeRegistration) -> (NodeArtifactsPayload, String) {
    match client
        .fetch_node_config_with(node, &FetchOptions::default())
        .await
        .unwrap()
    {
        FetchOutcome::Updated {
            payload,
            etag: Some(etag),
        } => (payload, etag),
        other => panic!("a payload expected, got {other:?}"),
    }
}

/// A long-poll of `node` holding `etag` for `secs`: `true` when it ended
/// unchanged (304) at its deadline.
async fn unchanged_for(
    client: &CfgsyncClient,
    node: &NodeRegistration,
    etag: &str,
    secs: u64,
) -> bool {
    let options = FetchOptions {
        if_none_match: Some(etag.to_owned()),
        wait: Some(Duration::from_secs(secs)),
    };
    matches!(
        client.fetch_node_config_with(node, &options).await.unwrap(),
        FetchOutcome::NotModified
    )
}

#[tokio::test]
async fn a_sync_on_one_replica_or_by_the_cli_reaches_nodes_of_another_replica() {
    let env = Env::start().await;
    let s3 = S3Harness::start().await.unwrap();
    env.publish(LAB, sample_package("1.0", "")).await;
    let replica = |dir: &str| {
        let mut vars = bin_vars(&env, Some(&s3), &env.data.path().join(dir));
        vars.insert("LABLET_CATALOG".to_owned(), "object".to_owned());
        vars
    };
    let a = ServeProcess::start(&replica("a")).await;
    let b = ServeProcess::start(&replica("b")).await;
    let nodes_b = CfgsyncClient::new(&b.url).unwrap();
    let lab_node = node("node-1", LAB);
    let other_node = node("node-2", OTHER);
    nodes_b.register_node(&lab_node).await.unwrap();
    nodes_b.register_node(&other_node).await.unwrap();

    // never synced: the node on B waits; a sync on A wakes it
    let waiting = long_poll(&nodes_b, &lab_node, None);
    b_until_waiting(&b).await;
    let report = a.sync(LAB).await;
    assert_eq!(report["definition"]["content_version"], 1);
    let (payload, etag1) = woken(waiting).await;
    assert_eq!(manifest(&payload)["version"], 1);
    assert_eq!(payload.files.get("cml.yaml").unwrap().content, CML);

    // a new package synced on A: the node holding v1's ETag on B wakes with v2
    let waiting = long_poll(&nodes_b, &lab_node, Some(etag1.clone()));
    b_until_waiting(&b).await;
    env.mosaic_serves(LAB, sample_package("2.0", "v: 2\n"))
        .await;
    assert_eq!(a.sync(LAB).await["definition"]["content_version"], 2);
    let (payload, etag2) = woken(waiting).await;
    assert_ne!(etag2, etag1);
    assert_eq!(manifest(&payload)["version"], 2);
    assert!(
        payload
            .files
            .get("cml.yaml")
            .unwrap()
            .content
            .contains("v: 2")
    );

    // the CLI with a data dir of its own (another machine, a cron job): v3
    let waiting = long_poll(&nodes_b, &lab_node, Some(etag2.clone()));
    b_until_waiting(&b).await;
    env.mosaic_serves(LAB, sample_package("3.0", "v: 3\n"))
        .await;
    let out = run_bin(&replica("cli"), &["sync", LAB]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (payload, etag3) = woken(waiting).await;
    assert_ne!(etag3, etag2);
    assert_eq!(manifest(&payload)["version"], 3);
    assert!(
        payload
            .files
            .get("cml.yaml")
            .unwrap()
            .content
            .contains("v: 3")
    );

    // another lablet changes: the catalog marker moves, this node's ETag does not
    env.publish(OTHER, sample_package("1.0", "other: 1\n"))
        .await;
    let holding = tokio::spawn({
        let (client, node, etag) = (nodes_b.clone(), lab_node.clone(), etag3.clone());
        async move { unchanged_for(&client, &node, &etag, 3).await }
    });
    b_until_waiting(&b).await;
    assert_eq!(a.sync(OTHER).await["definition"]["content_version"], 1);
    // and the other lablet's node on B is served it
    let (payload, _) = fetch_when_ready(&nodes_b, &other_node).await;
    assert!(
        payload
            .files
            .get("cml.yaml")
            .unwrap()
            .content
            .contains("other: 1")
    );
    assert!(
        holding.await.unwrap(),
        "an unrelated change must not change the ETag"
    );
    assert_eq!(fetch(&nodes_b, &lab_node).await.1, etag3);
}

#[tokio::test]
async fn the_cli_on_the_serve_data_dir_wakes_nodes_of_the_embedded_catalog() {
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0", "")).await;
    // one data dir: the embedded catalog file, shared by serve and the CLI
    let vars = bin_vars(&env, None, &env.data.path().join("shared"));
    // its own drains wait: the CLI's `retry` below is what changes the record
    let mut serve_vars = vars.clone();
    serve_vars.insert("LABLET_RETRY_INTERVAL_SECS".to_owned(), "3600".to_owned());
    let served = ServeProcess::start(&serve_vars).await;
    let nodes = CfgsyncClient::new(&served.url).unwrap();
    let lab_node = node("node-1", LAB);
    nodes.register_node(&lab_node).await.unwrap();

    let waiting = long_poll(&nodes, &lab_node, None);
    b_until_waiting(&served).await;
    let out = run_bin(&vars, &["sync", LAB]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (payload, etag1) = woken(waiting).await;
    assert_eq!(manifest(&payload)["version"], 1);

    let waiting = long_poll(&nodes, &lab_node, Some(etag1.clone()));
    b_until_waiting(&served).await;
    env.mosaic_serves(LAB, sample_package("2.0", "v: 2\n"))
        .await;
    let out = run_bin(&vars, &["sync", LAB]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (payload, etag2) = woken(waiting).await;
    assert_ne!(etag2, etag1);
    assert_eq!(manifest(&payload)["version"], 2);
    assert!(
        payload
            .files
            .get("cml.yaml")
            .unwrap()
            .content
            .contains("v: 2")
    );

    // a drain by another process: LDS is down for v3 (stale, exit 3), then
    // `lablet-sync retry` delivers and re-records it `synced`
    let waiting = long_poll(&nodes, &lab_node, Some(etag2.clone()));
    b_until_waiting(&served).await;
    env.lds.reset().await;
    env.mosaic_serves(LAB, sample_package("3.0", "v: 3\n"))
        .await;
    let out = run_bin(&vars, &["sync", LAB]).await;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (payload, etag3) = woken(waiting).await;
    assert_eq!(manifest(&payload)["status"], "stale");
    assert_eq!(manifest(&payload)["version"], 3);
    let waiting = long_poll(&nodes, &lab_node, Some(etag3.clone()));
    b_until_waiting(&served).await;
    env.targets_ok().await;
    let out = run_bin(&vars, &["retry"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (payload, etag4) = woken(waiting).await;
    assert_ne!(etag4, etag3);
    assert_eq!(manifest(&payload)["status"], "synced");
    assert_eq!(manifest(&payload)["version"], 3);

    // the serve process still answers the operator API from the same file
    let shown: serde_json::Value =
        cfgsync_test_support::get(format!("{}/api/v1/lablets/{LAB}", served.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(shown["content_version"], 3);
}

#[tokio::test]
async fn a_record_cpa_lists_reaches_nodes_of_another_replica_at_the_poll_interval() {
    let env = Env::start().await;
    env.publish(LAB, sample_package("1.0", "")).await;
    let (_cpa, cpa_server) = FakeCpa::start().await;
    let replica = |dir: &str| {
        let mut vars = bin_vars(&env, None, &env.data.path().join(dir));
        vars.insert("LABLET_CATALOG".to_owned(), "cpa".to_owned());
        vars.insert("LABLET_CPA_URL".to_owned(), cpa_server.uri());
        vars.insert("LABLET_CATALOG_POLL_SECS".to_owned(), "1".to_owned());
        vars
    };
    // own data dirs: B learns of A's records only through CPA's listing
    let a = ServeProcess::start(&replica("a")).await;
    let b = ServeProcess::start(&replica("b")).await;
    let nodes_b = CfgsyncClient::new(&b.url).unwrap();
    let lab_node = node("node-1", LAB);
    nodes_b.register_node(&lab_node).await.unwrap();

    let waiting = long_poll(&nodes_b, &lab_node, None);
    b_until_waiting(&b).await;
    assert_eq!(a.sync(LAB).await["definition"]["content_version"], 1);
    let (payload, etag1) = woken(waiting).await;
    assert_eq!(manifest(&payload)["version"], 1);

    let waiting = long_poll(&nodes_b, &lab_node, Some(etag1.clone()));
    b_until_waiting(&b).await;
    env.mosaic_serves(LAB, sample_package("2.0", "v: 2\n"))
        .await;
    assert_eq!(a.sync(LAB).await["definition"]["content_version"], 2);
    let (payload, etag2) = woken(waiting).await;
    assert_ne!(etag2, etag1);
    assert_eq!(manifest(&payload)["version"], 2);
}

/// Waits until the server holds a long-poll (so the change comes after it).
async fn b_until_waiting(served: &ServeProcess) {
    for _ in 0..400 {
        let text = cfgsync_test_support::get(format!("{}/metrics", served.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text
            .lines()
            .any(|l| l.starts_with("cfgsync_long_polls_waiting ") && !l.ends_with(" 0"))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no long-poll held on {}", served.url);
}

/// The node's payload once its lablet is served (it may take a marker poll).
async fn fetch_when_ready(
    client: &CfgsyncClient,
    node: &NodeRegistration,
) -> (NodeArtifactsPayload, String) {
    let waiting = long_poll(client, node, None);
    woken(waiting).await
}
