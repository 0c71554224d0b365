//! The object-store registration log: one stream per writer, the order rule
//! for re-registrations, snapshots and compaction (readers racing it), writer
//! restarts, and the previous shared-log layout.
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cfgsync_adapter::{Compaction, ObjectRegistrationStore, ObjectStoreOptions, RegistrationStore};
use cfgsync_core::NodeRegistration;
use cfgsync_test_support::S3Harness;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt as _, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

fn reg(id: &str, ip: &str) -> NodeRegistration {
    NodeRegistration::new(id, ip.parse().unwrap())
}

/// Polling that never happens within a test: only what a test triggers reads.
const NO_POLL: Duration = Duration::from_secs(3600);

fn manual() -> ObjectStoreOptions {
    ObjectStoreOptions::default()
        .with_poll_interval(NO_POLL)
        .with_compaction(0, 0)
}

async fn open(
    store: &Arc<dyn ObjectStore>,
    prefix: &str,
    options: &ObjectStoreOptions,
) -> Arc<ObjectRegistrationStore> {
    Arc::new(
        ObjectRegistrationStore::open(store.clone(), prefix, options.clone())
            .await
            .unwrap(),
    )
}

/// Every object under `prefix`.
async fn keys(store: &Arc<dyn ObjectStore>, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = store
        .list(Some(&Path::from(prefix)))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap();
    keys.sort();
    keys
}

fn count(keys: &[String], part: &str) -> usize {
    keys.iter().filter(|k| k.contains(part)).count()
}

#[tokio::test]
async fn three_replicas_writing_concurrently_while_compacting_lose_nothing_and_agree() {
    let s3 = S3Harness::start().await.unwrap();
    let prefix = format!("{}/three", s3.prefix);
    // Polls and compactions (every 10 entries) run while the replicas write.
    let options = ObjectStoreOptions::default()
        .with_poll_interval(Duration::from_millis(20))
        .with_compaction(10, 0);
    let replicas = [
        open(&s3.store, &prefix, &options).await,
        open(&s3.store, &prefix, &options).await,
        open(&s3.store, &prefix, &options).await,
    ];
    let ids: Vec<String> = (0..900).map(|i| format!("node-{i:03}")).collect();
    let results: Vec<_> = futures::stream::iter(ids.iter().enumerate().map(|(i, id)| {
        let store = replicas[i % 3].clone();
        let id = id.clone();
        async move { store.put(reg(&id, "10.4.0.1")).await }
    }))
    .buffer_unordered(48)
    .collect()
    .await;
    assert!(results.iter().all(|r| matches!(r, Ok(true))), "{results:?}");

    for replica in &replicas {
        replica.refresh().await.unwrap();
    }
    let first = replicas[0].snapshot().await.unwrap();
    assert_eq!(first.len(), 900, "no registration lost");
    for (i, replica) in replicas.iter().enumerate() {
        assert_eq!(
            *replica.snapshot().await.unwrap(),
            *first,
            "replica {i} holds the same set at the same generation"
        );
    }
    // Compaction ran meanwhile and a replica started now reads a snapshot.
    let late = open(&s3.store, &prefix, &manual()).await;
    let seen = late.snapshot().await.unwrap();
    assert_eq!(seen.len(), 900);
    assert_eq!(seen.generation(), first.generation());
    let listed = keys(&s3.store, &format!("{prefix}/v2")).await;
    assert!(count(&listed, "/snapshots/") >= 1, "{listed:?}");
}

#[tokio::test]
async fn one_identifier_registered_on_two_replicas_converges_everywhere_and_through_snapshots() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let a = open(&store, "conv", &manual()).await;
    let b = open(&store, "conv", &manual()).await;

    // Neither replica has seen the other's registration of the same names.
    let ids: Vec<String> = (0..40).map(|i| format!("twice-{i:02}")).collect();
    let (ra, rb) = tokio::join!(
        futures::future::join_all(ids.iter().map(|id| a.put(reg(id, "10.5.0.1")))),
        futures::future::join_all(ids.iter().map(|id| b.put(reg(id, "10.5.0.2")))),
    );
    assert!(ra.into_iter().chain(rb).all(|r| r.unwrap()));
    a.refresh().await.unwrap();
    b.refresh().await.unwrap();
    let (sa, sb) = (a.snapshot().await.unwrap(), b.snapshot().await.unwrap());
    assert_eq!(*sa, *sb, "both replicas pick the same registration of each");
    assert_eq!(sa.len(), 40);

    // A re-registration made after the replica saw the other one wins, on
    // every replica, even in the same millisecond.
    let id = &ids[0];
    let before = sa.get(id).unwrap().ip.to_string();
    let (winner, other) = if before == "10.5.0.1" {
        (&b, &a)
    } else {
        (&a, &b)
    };
    assert!(winner.put(reg(id, "10.5.0.9")).await.unwrap());
    other.refresh().await.unwrap();
    assert_eq!(
        other
            .snapshot()
            .await
            .unwrap()
            .get(id)
            .unwrap()
            .ip
            .to_string(),
        "10.5.0.9"
    );

    // The order survives a snapshot: a replica opened after compaction, then
    // reading the other replica's later entries, agrees too.
    assert!(matches!(
        a.compact().await.unwrap(),
        Compaction::Written { .. }
    ));
    let c = open(&store, "conv", &manual()).await;
    b.refresh().await.unwrap();
    a.refresh().await.unwrap();
    let sc = c.snapshot().await.unwrap();
    assert_eq!(*sc, *b.snapshot().await.unwrap());
    assert_eq!(*sc, *a.snapshot().await.unwrap());
    assert_eq!(sc.get(id).unwrap().ip.to_string(), "10.5.0.9");
}

#[tokio::test]
async fn after_compaction_a_new_replica_reads_one_snapshot_and_the_listing_stays_bounded() {
    let s3 = S3Harness::start().await.unwrap();
    let prefix = format!("{}/compact", s3.prefix);
    let a = open(&s3.store, &prefix, &manual()).await;
    // 300 entries (one put at a time: one entry each).
    for i in 0..300 {
        a.put(reg(&format!("node-{i:03}"), "10.6.0.1"))
            .await
            .unwrap();
    }
    assert_eq!(count(&keys(&s3.store, &prefix).await, "/writers/"), 300);

    let Compaction::Written { number, deleted } = a.compact().await.unwrap() else {
        panic!("a snapshot was due");
    };
    assert_eq!((number, deleted), (1, 300));
    assert_eq!(a.compact().await.unwrap(), Compaction::NothingToDo);
    let after = keys(&s3.store, &prefix).await;
    assert_eq!(after.len(), 1, "one snapshot and nothing else: {after:?}");

    // Later writes, a second and a third compaction: at most two snapshots
    // and the entries past the newest stay.
    for round in 0..2 {
        for i in 0..20 {
            a.put(reg(&format!("more-{round}-{i:02}"), "10.6.0.2"))
                .await
                .unwrap();
        }
        assert!(matches!(
            a.compact().await.unwrap(),
            Compaction::Written { .. }
        ));
    }
    a.put(reg("last", "10.6.0.3")).await.unwrap();
    let listed = keys(&s3.store, &prefix).await;
    assert_eq!(count(&listed, "/snapshots/"), 2, "{listed:?}");
    assert_eq!(count(&listed, "/writers/"), 1, "{listed:?}");

    // A replica started now sees every node, reading the snapshot and the one
    // entry after it instead of the 341 entries ever written.
    if s3.is_in_process() {
        s3.reset_counters();
    }
    let late = open(&s3.store, &prefix, &manual()).await;
    let seen = late.snapshot().await.unwrap();
    assert_eq!(seen.len(), 341);
    assert_eq!(*seen, *a.snapshot().await.unwrap());
    if let Some(requests) = s3.requests() {
        assert!(
            requests <= 6,
            "{requests} requests to open after compaction"
        );
    }
}

/// An object store whose first `GET` of a key containing `trigger` first runs
/// `hook` (another replica's compaction, say) and then reads; counts `GET`s.
struct RacingStore {
    inner: Arc<dyn ObjectStore>,
    hook: Mutex<Option<(String, BoxFuture<'static, ()>)>>,
    /// `GET`s so far.
    gets: AtomicUsize,
}

impl fmt::Debug for RacingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RacingStore")
    }
}

impl fmt::Display for RacingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "racing {}", self.inner)
    }
}

impl RacingStore {
    fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            hook: Mutex::new(None),
            gets: AtomicUsize::new(0),
        }
    }

    fn arm(&self, trigger: &str, hook: BoxFuture<'static, ()>) {
        *self.hook.lock().unwrap() = Some((trigger.to_owned(), hook));
    }
}

#[async_trait]
impl ObjectStore for RacingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let hook = {
            let mut armed = self.hook.lock().unwrap();
            match &*armed {
                Some((trigger, _)) if location.as_ref().contains(trigger.as_str()) => {
                    armed.take().map(|(_, hook)| hook)
                }
                _ => None,
            }
        };
        if let Some(hook) = hook {
            hook.await;
        }
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn a_reader_racing_a_compaction_lists_again_and_loses_nothing() {
    let backing: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let racing = Arc::new(RacingStore::new(backing.clone()));
    let writer = open(&backing, "race", &manual()).await;
    let reader = open(&(racing.clone() as Arc<dyn ObjectStore>), "race", &manual()).await;

    // 1. The reader lists 30 entries; before it reads the first, the writer
    // compacts and deletes them all.
    for i in 0..30 {
        writer
            .put(reg(&format!("first-{i:02}"), "10.7.0.1"))
            .await
            .unwrap();
    }
    let compacting = writer.clone();
    racing.arm(
        "/writers/",
        Box::pin(async move {
            let done = compacting.compact().await.unwrap();
            assert!(
                matches!(done, Compaction::Written { number: 1, .. }),
                "{done:?}"
            );
        }),
    );
    reader.refresh().await.unwrap();
    assert_eq!(reader.snapshot().await.unwrap().len(), 30);
    assert!(racing.hook.lock().unwrap().is_none(), "the race happened");

    // 2. The reader lists snapshot 2 (not read yet); before it reads it, two
    // more compactions replace it with snapshot 4 and delete it.
    for round in 0..3 {
        for i in 0..5 {
            writer
                .put(reg(&format!("r{round}-{i}"), "10.7.0.2"))
                .await
                .unwrap();
        }
        if round == 0 {
            writer.compact().await.unwrap();
        }
    }
    let compacting = writer.clone();
    let more = writer.clone();
    racing.arm(
        "/snapshots/",
        Box::pin(async move {
            for round in 0..2 {
                more.put(reg(&format!("late-{round}"), "10.7.0.3"))
                    .await
                    .unwrap();
                compacting.compact().await.unwrap();
            }
        }),
    );
    reader.refresh().await.unwrap();
    assert!(racing.hook.lock().unwrap().is_none(), "the race happened");
    let listed = keys(&backing, "race").await;
    assert!(
        !listed
            .iter()
            .any(|k| k.ends_with("00000000000000000002.json") && k.contains("/snapshots/")),
        "the snapshot the reader listed is gone: {listed:?}"
    );
    assert_eq!(
        *reader.snapshot().await.unwrap(),
        *writer.snapshot().await.unwrap()
    );
    assert_eq!(reader.snapshot().await.unwrap().len(), 30 + 15 + 2);
}

#[tokio::test]
async fn a_restarted_writer_with_a_fixed_id_continues_its_stream_and_never_overwrites() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let options = manual().with_writer_id("replica-a");
    let a = open(&store, "restart", &options).await;
    assert_eq!(a.writer_id(), "replica-a");
    for i in 0..3 {
        a.put(reg(&format!("before-{i}"), "10.8.0.1"))
            .await
            .unwrap();
    }
    // Its entries are compacted away: only the snapshot knows how far it got.
    a.compact().await.unwrap();
    a.put(reg("before-3", "10.8.0.1")).await.unwrap();
    drop(a);

    let again = open(&store, "restart", &options).await;
    again.put(reg("after", "10.8.0.2")).await.unwrap();
    let listed = keys(&store, "restart/v2/writers").await;
    assert_eq!(
        listed,
        [
            "restart/v2/writers/replica-a/00000000000000000004.json",
            "restart/v2/writers/replica-a/00000000000000000005.json"
        ]
    );
    let fresh = open(&store, "restart", &manual()).await;
    assert_eq!(fresh.snapshot().await.unwrap().len(), 5);
    assert_ne!(
        fresh.writer_id(),
        again.writer_id(),
        "default ids are per store"
    );

    // Two running stores given the same id do not overwrite each other: the
    // second finds its next number taken, reads that entry, and goes on.
    let twin = open(&store, "restart", &options).await;
    again.put(reg("from-again", "10.8.0.3")).await.unwrap();
    twin.put(reg("from-twin", "10.8.0.4")).await.unwrap();
    fresh.refresh().await.unwrap();
    let seen = fresh.snapshot().await.unwrap();
    assert!(seen.contains("from-again") && seen.contains("from-twin"));

    let err = ObjectRegistrationStore::open(
        store.clone(),
        "restart",
        manual().with_writer_id("no/slashes"),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("writer id \"no/slashes\""),
        "{err}"
    );
}

#[tokio::test]
async fn the_previous_shared_log_is_read_ordered_first_and_covered_by_snapshots() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let counting = Arc::new(RacingStore::new(store.clone()));
    // As the previous version wrote it: `log/<number>.json`, no stamps; the
    // same node in two entries (the later number wins).
    let entry = |regs: &[NodeRegistration]| {
        PutPayload::from(serde_json::to_vec(&serde_json::json!({ "registrations": regs })).unwrap())
    };
    let log = |n: u64| Path::from(format!("old/log/{n:020}.json"));
    store
        .put(
            &log(1),
            entry(&[reg("a", "10.9.0.1"), reg("b", "10.9.0.2")]),
        )
        .await
        .unwrap();
    store
        .put(&log(2), entry(&[reg("a", "10.9.0.11")]))
        .await
        .unwrap();

    let r = open(&store, "old", &manual()).await;
    let seen = r.snapshot().await.unwrap();
    assert_eq!(seen.generation(), 2, "the old log's numbers carry on");
    assert_eq!(seen.get("a").unwrap().ip.to_string(), "10.9.0.11");
    assert_eq!(seen.get("b").unwrap().ip.to_string(), "10.9.0.2");

    // A replica of the previous version appends meanwhile (rolling upgrade):
    // read at the next refresh.
    store
        .put(&log(3), entry(&[reg("c", "10.9.0.3")]))
        .await
        .unwrap();
    r.refresh().await.unwrap();
    assert!(r.snapshot().await.unwrap().contains("c"));

    // A new registration of a node from the old log wins over it.
    r.put(reg("b", "10.9.0.22")).await.unwrap();
    assert!(matches!(
        r.compact().await.unwrap(),
        Compaction::Written { .. }
    ));
    // The old log stays (old replicas number after it); a replica opened now
    // reads the snapshot and skips the log it covers.
    assert_eq!(count(&keys(&store, "old/log").await, "/log/"), 3);
    let late = open(
        &(counting.clone() as Arc<dyn ObjectStore>),
        "old",
        &manual(),
    )
    .await;
    assert_eq!(
        counting.gets.load(Ordering::SeqCst),
        1,
        "the snapshot only, not the old log it covers"
    );
    let seen = late.snapshot().await.unwrap();
    assert_eq!(*seen, *r.snapshot().await.unwrap());
    assert_eq!(seen.get("b").unwrap().ip.to_string(), "10.9.0.22");
    assert_eq!(seen.len(), 3);
}
