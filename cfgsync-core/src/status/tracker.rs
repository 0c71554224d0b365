//! What each node last did: registered, fetched, and which ETag it was served.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};

/// What a node last did on this server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeActivity {
    /// The address its last request named.
    pub ip: Option<IpAddr>,
    /// When its registration was last accepted here.
    pub registered_at: Option<DateTime<Utc>>,
    /// When it last asked for its files.
    pub last_fetch_at: Option<DateTime<Utc>>,
    /// The HTTP status of that answer.
    pub last_status: Option<u16>,
    /// The ETag it was last served (`200`) or confirmed (`304`).
    pub etag_served: Option<String>,
}

/// Per-node activity for the status page: one map entry per node, updated in
/// O(1) by each `/register` and `/node` answer.
///
/// It never grows past the nodes the server knows: an entry is created only by
/// an accepted registration or a payload answer (`200`/`304`, which a source
/// gives only to nodes it serves); answers to nodes without an entry (`425` for
/// an unregistered node, `404`) are not recorded. The status page trims it to
/// the source's nodes.
#[derive(Debug, Default)]
pub struct FetchTracker {
    nodes: Mutex<HashMap<String, NodeActivity>>,
}

impl FetchTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, NodeActivity>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records an accepted registration.
    pub fn registered(&self, identifier: &str, ip: IpAddr) {
        let now = Utc::now();
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(identifier) {
            entry.ip = Some(ip);
            entry.registered_at = Some(now);
            return;
        }
        nodes.insert(
            identifier.to_owned(),
            NodeActivity {
                ip: Some(ip),
                registered_at: Some(now),
                ..NodeActivity::default()
            },
        );
    }

    /// Records a `/node` answer of `status`, with the ETag of a `200`/`304`.
    pub fn fetched(&self, identifier: &str, ip: IpAddr, status: u16, etag: Option<&str>) {
        let now = Utc::now();
        let served = matches!(status, 200 | 304);
        let mut nodes = self.lock();
        let entry = match nodes.get_mut(identifier) {
            Some(entry) => entry,
            None if served => nodes.entry(identifier.to_owned()).or_default(),
            None => return,
        };
        entry.ip = Some(ip);
        entry.last_fetch_at = Some(now);
        entry.last_status = Some(status);
        if served
            && let Some(etag) = etag
            && entry.etag_served.as_deref() != Some(etag)
        {
            entry.etag_served = Some(etag.to_owned());
        }
    }

    /// What `identifier` last did.
    pub fn get(&self, identifier: &str) -> Option<NodeActivity> {
        self.lock().get(identifier).cloned()
    }

    /// Every node's activity.
    pub fn snapshot(&self) -> HashMap<String, NodeActivity> {
        self.lock().clone()
    }

    /// Keeps only the nodes `keep` names.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.lock().retain(|id, _| keep(id));
    }

    /// How many nodes it holds.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_known_nodes_get_an_entry() {
        let tracker = FetchTracker::new();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        // A stranger asking (425 unregistered, 404 unknown) leaves no trace.
        for i in 0..1000 {
            tracker.fetched(&format!("stranger-{i}"), ip, 425, None);
            tracker.fetched(&format!("unknown-{i}"), ip, 404, None);
        }
        assert!(tracker.is_empty());
        // A registered node is tracked from its registration on, 425s included.
        tracker.registered("a", ip);
        tracker.fetched("a", ip, 425, None);
        assert_eq!(tracker.get("a").unwrap().last_status, Some(425));
        // A served node is tracked with its ETag; a later 425 keeps the ETag.
        tracker.fetched("b", ip, 200, Some("\"e1\""));
        tracker.fetched("b", ip, 425, None);
        let b = tracker.get("b").unwrap();
        assert_eq!(
            (b.last_status, b.etag_served.as_deref()),
            (Some(425), Some("\"e1\""))
        );
        assert_eq!(tracker.len(), 2);
        tracker.retain(|id| id == "b");
        assert_eq!(tracker.len(), 1);
    }
}
