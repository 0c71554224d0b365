//! `--store`: registration throughput of one or more server replicas over one
//! registration store (memory, durable, or the S3 one shared by replicas).
//!
//! The servers run in this process (real HTTP servers on `127.0.0.1:0`, as in
//! production); `--store s3` runs the in-process S3 server of
//! `cfgsync-test-support` (or targets `CFGSYNC_TEST_S3_ENDPOINT`, see its
//! README). Registrations go round-robin over the replicas; a run counts the
//! `202`s, then checks every replica sees every registration; with S3 it
//! then counts the objects left under the prefix and opens one more replica
//! (what a replica started later reads).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cfgsync_adapter::{
    DurableRegistrationStore, MemoryRegistrationStore, ObjectRegistrationStore, ObjectStoreOptions,
    RegistrationStore, SnapshotConfigSource,
};
use cfgsync_core::NodeRegistration;
use cfgsync_examples::peer_list::PeerListMaterializer;
use cfgsync_test_support::{S3Harness, TestServer};
use clap::ValueEnum;
use futures::StreamExt as _;
use serde::Serialize;

use crate::fleet::PEER_PORT;

/// The registration store the replicas share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In memory (one replica).
    Memory,
    /// The durable local store in a temporary directory (one replica).
    Durable,
    /// The object store on S3 (the in-process server unless
    /// `CFGSYNC_TEST_S3_ENDPOINT` is set), shared by the replicas.
    S3,
}

/// One run: registrations spread over `replicas` servers.
#[derive(Debug, Serialize)]
pub struct RegistrationRow {
    pub store: StoreKind,
    pub replicas: usize,
    pub registrations: usize,
    pub acknowledged: usize,
    pub errors: usize,
    /// From the first request to the last acknowledgement.
    pub seconds: f64,
    pub per_second: f64,
    /// Every replica holds every acknowledged registration (after one
    /// refresh), and so does one opened after the run (S3).
    pub visible_everywhere: bool,
    /// Requests the S3 server received during the run (in-process S3 only).
    pub s3_requests: Option<u64>,
    pub s3_writes: Option<u64>,
    pub s3_lists: Option<u64>,
    /// Objects under the store's prefix after the run (S3 only): the log
    /// entries and snapshots a replica lists.
    pub objects_after: Option<usize>,
    /// A replica opened after the run: time to load everything (ms) and the
    /// S3 requests that took (in-process S3 only).
    pub late_open_ms: Option<f64>,
    pub late_open_requests: Option<u64>,
}

/// Runs `registrations` registrations over `replicas` servers of `kind`.
pub async fn run(
    kind: StoreKind,
    replicas: usize,
    registrations: usize,
    concurrency: usize,
    limit: Duration,
) -> anyhow::Result<RegistrationRow> {
    anyhow::ensure!(replicas >= 1, "--replicas needs at least 1");
    anyhow::ensure!(
        kind == StoreKind::S3 || replicas == 1,
        "--replicas {replicas} needs --store s3: a memory or durable store belongs to one process"
    );
    let mut s3 = None;
    let mut _dir = None;
    let mut shared = Vec::new();
    let stores: Vec<Arc<dyn RegistrationStore>> = match kind {
        StoreKind::Memory => vec![Arc::new(MemoryRegistrationStore::new())],
        StoreKind::Durable => {
            let dir = tempfile::tempdir().context("temporary directory")?;
            let store = DurableRegistrationStore::open(dir.path()).await?;
            _dir = Some(dir);
            vec![Arc::new(store)]
        }
        StoreKind::S3 => {
            let harness = S3Harness::start().await.context("start the S3 server")?;
            let prefix = format!("{}/bench-registrations", harness.prefix);
            for _ in 0..replicas {
                shared.push(Arc::new(
                    ObjectRegistrationStore::open(
                        harness.store.clone(),
                        &prefix,
                        ObjectStoreOptions::default(),
                    )
                    .await?,
                ));
            }
            s3 = Some(harness);
            shared
                .iter()
                .map(|s| s.clone() as Arc<dyn RegistrationStore>)
                .collect()
        }
    };
    let mut servers = Vec::with_capacity(stores.len());
    for store in &stores {
        let source = SnapshotConfigSource::new(
            store.clone(),
            PeerListMaterializer::new(registrations, PEER_PORT),
        );
        servers.push(TestServer::with_source(Arc::new(source)).await);
    }
    if let Some(s3) = &s3 {
        s3.reset_counters();
    }
    let http = cfgsync_core::tls::http_client_builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let urls: Vec<String> = servers.iter().map(|s| s.url("/register")).collect();
    // Counted as they come, so a run cut short by --phase-timeout still says
    // how far it got.
    let acked = std::sync::atomic::AtomicUsize::new(0);
    let started = Instant::now();
    let sent = futures::stream::iter((0..registrations).map(|i| {
        let http = http.clone();
        let url = urls[i % urls.len()].clone();
        let acked = &acked;
        async move {
            let ip = IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000_u32 + u32::try_from(i).unwrap_or(0),
            ));
            let registration = NodeRegistration::new(format!("node-{i:05}"), ip);
            if matches!(
                http.post(url).json(&registration).send().await,
                Ok(response) if response.status() == 202
            ) {
                acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }))
    .buffer_unordered(concurrency.max(1))
    .collect::<Vec<()>>();
    let _ = tokio::time::timeout(limit, sent).await;
    let elapsed = started.elapsed();
    let acknowledged = acked.load(std::sync::atomic::Ordering::Relaxed);
    let (s3_requests, s3_writes, s3_lists) = match &s3 {
        Some(s3) => (s3.requests(), s3.put_requests(), s3.list_requests()),
        None => (None, None, None),
    };
    for store in &shared {
        store.refresh().await?;
    }
    let mut visible_everywhere = true;
    for store in &stores {
        visible_everywhere &= store.snapshot().await?.len() == acknowledged;
    }
    for server in servers {
        server.shutdown().await?;
    }
    let (mut objects_after, mut late_open_ms, mut late_open_requests) = (None, None, None);
    if let Some(s3) = &s3 {
        let prefix = object_store::path::Path::from(format!("{}/bench-registrations", s3.prefix));
        objects_after = Some(s3.store.list(Some(&prefix)).count().await);
        s3.reset_counters();
        let opened = Instant::now();
        let late = ObjectRegistrationStore::open(
            s3.store.clone(),
            prefix.as_ref(),
            ObjectStoreOptions::default(),
        )
        .await?;
        late_open_ms = Some(opened.elapsed().as_secs_f64() * 1000.0);
        late_open_requests = s3.requests();
        visible_everywhere &= late.snapshot().await?.len() == acknowledged;
    }
    let seconds = elapsed.as_secs_f64();
    Ok(RegistrationRow {
        store: kind,
        replicas,
        registrations,
        acknowledged,
        errors: registrations - acknowledged + usize::from(!visible_everywhere),
        seconds,
        per_second: if seconds > 0.0 {
            acknowledged as f64 / seconds
        } else {
            0.0
        },
        visible_everywhere,
        s3_requests,
        s3_writes,
        s3_lists,
        objects_after,
        late_open_ms,
        late_open_requests,
    })
}

/// The rows as a table.
pub fn render(rows: &[RegistrationRow]) -> String {
    let mut out = String::from(
        "\nregistration throughput (servers in this process, registrations round-robin)\n\
         store    replicas  registrations  acked   errors  seconds  reg/s     visible  S3 req  S3 PUT  S3 LIST  objects  late open ms  late open req\n",
    );
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for row in rows {
        out.push_str(&format!(
            "{:<8} {:>8}  {:>13}  {:>6}  {:>6}  {:>7.2}  {:>8.0}  {:>7}  {:>6}  {:>6}  {:>7}  {:>7}  {:>12}  {:>13}\n",
            format!("{:?}", row.store).to_lowercase(),
            row.replicas,
            row.registrations,
            row.acknowledged,
            row.errors,
            row.seconds,
            row.per_second,
            if row.visible_everywhere { "yes" } else { "NO" },
            opt(row.s3_requests),
            opt(row.s3_writes),
            opt(row.s3_lists),
            row.objects_after.map_or_else(|| "-".to_owned(), |v| v.to_string()),
            row.late_open_ms.map_or_else(|| "-".to_owned(), |v| format!("{v:.0}")),
            opt(row.late_open_requests),
        ));
    }
    out
}
