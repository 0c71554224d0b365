//! Prometheus counters per stage and outcome, plus byte counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::error::Stage;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
    outcome: &'static str,
}

/// Metrics of one [`LabletSync`](crate::LabletSync).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    stages: Family<StageLabels, Counter>,
    downloaded: Counter,
    uploaded: Counter,
    upload_skipped: Counter,
    queued: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let mut metrics = Self::registered(&mut registry);
        metrics.registry = registry;
        metrics
    }
}

impl Metrics {
    /// Counters registered (under `lablet_sync_`) in `registry`, e.g. the one a
    /// server exposes on `/metrics`; [`encode`](Self::encode) then returns nothing.
    pub fn registered(registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_prefix("lablet_sync");
        let stages = Family::<StageLabels, Counter>::default();
        let downloaded = Counter::default();
        let uploaded = Counter::default();
        let upload_skipped = Counter::default();
        let queued = Counter::default();
        registry.register("stage", "Stage runs by stage and outcome", stages.clone());
        registry.register(
            "downloaded_bytes",
            "Package bytes downloaded",
            downloaded.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Package bytes uploaded to the store",
            uploaded.clone(),
        );
        registry.register(
            "upload_skipped",
            "Uploads skipped because the stored object had the same SHA-256",
            upload_skipped.clone(),
        );
        registry.register(
            "deliveries_queued",
            "Fan-out deliveries put on the retry queue",
            queued.clone(),
        );
        Self {
            registry: Registry::default(),
            stages,
            downloaded,
            uploaded,
            upload_skipped,
            queued,
        }
    }

    pub(crate) fn stage(&self, stage: Stage, ok: bool) {
        self.stages
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
                outcome: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    pub(crate) fn downloaded(&self, bytes: u64) {
        self.downloaded.inc_by(bytes);
    }

    pub(crate) fn uploaded(&self, bytes: u64, skipped: bool) {
        self.uploaded.inc_by(bytes);
        if skipped {
            self.upload_skipped.inc();
        }
    }

    pub(crate) fn queued(&self) {
        self.queued.inc();
    }

    /// Prometheus text exposition of all counters.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // encoding into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
