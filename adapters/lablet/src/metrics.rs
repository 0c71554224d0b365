//! Every metric of the pipeline, in one place: syncs and stages (counts and
//! durations, recorded by the stage helper, so CLI, operator API and library
//! users all get them), plus bytes moved, skipped uploads and queued deliveries.
//! `serve` only exposes them on `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::catalog::SyncStatus;
use crate::error::{Result, Stage};
use crate::pipeline::SyncReport;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageResultLabels {
    stage: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 10 ms .. ~20 min
    Histogram::new(exponential_buckets(0.01, 2.0, 18))
}

/// Metrics of one [`LabletSync`](crate::LabletSync), all under `lablet_sync_`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    stages: Family<StageLabels, Counter>,
    stage_seconds: Histograms<StageResultLabels>,
    syncs: Family<ResultLabels, Counter>,
    sync_seconds: Histograms<ResultLabels>,
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
    /// Metrics registered (under `lablet_sync_`) in `registry`, e.g. the one a
    /// server exposes on `/metrics`; [`encode`](Self::encode) then returns nothing.
    pub fn registered(registry: &mut Registry) -> Self {
        let metrics = Self {
            registry: Registry::default(),
            stages: Family::default(),
            stage_seconds: Family::new_with_constructor(duration_histogram),
            syncs: Family::default(),
            sync_seconds: Family::new_with_constructor(duration_histogram),
            downloaded: Counter::default(),
            uploaded: Counter::default(),
            upload_skipped: Counter::default(),
            queued: Counter::default(),
        };
        let registry = registry.sub_registry_with_prefix("lablet_sync");
        let m = &metrics;
        registry.register("stage", "Stage runs by stage and outcome", m.stages.clone());
        registry.register(
            "downloaded_bytes",
            "Package bytes downloaded",
            m.downloaded.clone(),
        );
        registry.register(
            "uploaded_bytes",
            "Package bytes uploaded to the store",
            m.uploaded.clone(),
        );
        registry.register(
            "upload_skipped",
            "Uploads skipped because the stored object had the same SHA-256",
            m.upload_skipped.clone(),
        );
        registry.register(
            "deliveries_queued",
            "Fan-out deliveries put on the retry queue",
            m.queued.clone(),
        );
        registry.register(
            "syncs",
            "Syncs by result (synced, stale, error)",
            m.syncs.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Sync duration by result",
            m.sync_seconds.clone(),
        );
        registry.register(
            "stage_duration_seconds",
            "Stage duration by stage and result (ok, error)",
            m.stage_seconds.clone(),
        );
        metrics
    }

    /// One stage ended after `took`.
    pub(crate) fn stage(&self, stage: Stage, ok: bool, took: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        self.stages
            .get_or_create(&StageLabels {
                stage: stage.as_str(),
                outcome,
            })
            .inc();
        self.stage_seconds
            .get_or_create(&StageResultLabels {
                stage: stage.as_str(),
                result: outcome,
            })
            .observe(took.as_secs_f64());
    }

    /// One sync ended after `took`: `synced`, `stale` or `error`.
    pub(crate) fn sync(&self, result: &Result<SyncReport>, took: Duration) {
        let result = match result {
            Ok(report) if report.definition.content.status == SyncStatus::Stale => "stale",
            Ok(_) => "synced",
            Err(_) => "error",
        };
        let labels = ResultLabels { result };
        self.syncs.get_or_create(&labels).inc();
        self.sync_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
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

    /// Prometheus text exposition of all metrics.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // encoding into a String cannot fail
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
