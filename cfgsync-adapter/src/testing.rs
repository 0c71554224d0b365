//! The shared behaviour suite of [`RegistrationStore`] (feature `testing`): run
//! it against every store implementation, yours included.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use cfgsync_core::NodeRegistration;

use crate::RegistrationStore;

fn reg(id: &str, ip: &str) -> NodeRegistration {
    NodeRegistration::new(id, ip.parse().unwrap())
}

/// The promises every [`RegistrationStore`] keeps, as one behaviour suite: run it
/// against your own store implementation (it panics on the first broken
/// promise, like a test). The store must start empty.
pub async fn registration_store_suite(store: Arc<dyn RegistrationStore>) {
    let start = store.snapshot().await.unwrap();
    assert!(start.is_empty());
    let mut changes = store.changes();
    changes.borrow_and_update();

    // A new registration changes the set and moves the generation forward.
    assert!(store.put(reg("node-b", "10.0.0.2")).await.unwrap());
    let after_b = store.snapshot().await.unwrap();
    assert!(after_b.generation() > start.generation());
    assert_eq!(after_b.get("node-b").unwrap().ip.to_string(), "10.0.0.2");
    assert!(changes.has_changed().unwrap(), "subscribers are told");
    assert_eq!(*changes.borrow_and_update(), after_b.generation());

    // The same registration again changes nothing.
    assert!(!store.put(reg("node-b", "10.0.0.2")).await.unwrap());
    let same = store.snapshot().await.unwrap();
    assert_eq!(same.generation(), after_b.generation());
    assert!(
        Arc::ptr_eq(&same, &after_b),
        "an unchanged snapshot is shared, not rebuilt"
    );
    assert!(!changes.has_changed().unwrap());

    // A changed registration (new IP, metadata) is a change.
    let with_meta = reg("node-b", "10.0.0.22")
        .with_metadata(&serde_json::json!({"role": "db"}))
        .unwrap();
    assert!(store.put(with_meta.clone()).await.unwrap());
    let changed = store.snapshot().await.unwrap();
    assert!(changed.generation() > after_b.generation());
    assert_eq!(changed.get("node-b").unwrap(), &with_meta);

    // Sorted by identifier, whatever the order of arrival.
    store.put(reg("node-c", "10.0.0.3")).await.unwrap();
    store.put(reg("node-a", "10.0.0.1")).await.unwrap();
    let ids: Vec<_> = store
        .snapshot()
        .await
        .unwrap()
        .iter()
        .map(|r| r.identifier.clone())
        .collect();
    assert_eq!(ids, ["node-a", "node-b", "node-c"]);

    // Concurrent registrations are all kept, and the generation only grows.
    let before = store.snapshot().await.unwrap().generation();
    let puts = (0..40).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.put(reg(&format!("burst-{i:02}"), "10.1.0.1")).await })
    });
    for put in futures::future::join_all(puts).await {
        assert!(put.unwrap().unwrap());
    }
    let after = store.snapshot().await.unwrap();
    assert_eq!(after.len(), 43);
    assert!(after.generation() > before);
    store.check().await.unwrap();
}
