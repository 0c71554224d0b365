//! Sync jobs of the operator API: a sync started with `Prefer: respond-async`
//! runs in the background and is polled at `GET /api/v1/jobs/{id}` — its state,
//! current stage, bytes of the download and upload, then the report or the
//! error. Progress comes from the pipeline's own callbacks (the ones the CLI's
//! terminal progress uses), so the job sees exactly the stages the sync runs.
//!
//! Jobs live in this process's memory: a replica knows only the jobs it
//! started, and a restart forgets them. The store keeps the last `capacity`
//! jobs; the oldest finished one makes room for a new one, and while
//! `capacity` jobs are still queued or running a new one is refused.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Stage, SyncReport};

/// How many jobs `serve` keeps by default (`LABLET_JOBS_KEPT`).
pub const DEFAULT_JOBS_KEPT: usize = 100;

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Accepted, no stage started yet.
    Queued,
    /// A stage is running (`stage` names it).
    Running,
    /// The sync ended well; `result` holds its report.
    Succeeded,
    /// The sync failed; `error` says where and why.
    Failed,
}

impl JobState {
    /// Whether the job has ended.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Bytes moved by a stage so far, and in all when known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ByteCount {
    /// Bytes done.
    pub done: u64,
    /// Bytes in all (`null` while unknown, e.g. a download without
    /// `Content-Length`).
    pub total: Option<u64>,
}

/// Byte progress of the stages that move the package.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobBytes {
    /// The download from Mosaic (stage `download`).
    pub download: Option<ByteCount>,
    /// The upload to the store (stage `store`; stays `null` when the store
    /// already had the package).
    pub upload: Option<ByteCount>,
}

/// Why a job failed: the operator API's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobError {
    /// The code the blocking route would answer, e.g. `package_not_available`.
    pub code: &'static str,
    /// What failed, naming the lablet.
    pub message: String,
    /// The stage that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<Stage>,
}

/// One sync job, as `GET /api/v1/jobs/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SyncJob {
    /// Unique within this process (`{process start}-{sequence}`).
    pub id: String,
    /// The lablet being synced.
    pub lablet: String,
    /// Queued, running, succeeded or failed.
    pub state: JobState,
    /// The stage running now, or the last one that ran.
    pub stage: Option<Stage>,
    /// 1-based position of `stage` among the six stages.
    pub step: Option<usize>,
    /// How many stages a sync has.
    pub steps: usize,
    /// When the job was accepted.
    pub created_at: DateTime<Utc>,
    /// When its first stage started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Bytes of the download and the upload.
    pub bytes: JobBytes,
    /// The sync report once succeeded (what the blocking route answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<SyncReport>,
    /// The error once failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<JobError>,
}

/// Refused: `capacity` jobs are still queued or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{running} sync jobs are still queued or running (at most {capacity} are kept); retry once one ended"
)]
pub struct JobsFull {
    /// Jobs queued or running.
    pub running: usize,
    /// The store's capacity.
    pub capacity: usize,
}

/// The jobs of one process, the last `capacity` kept.
#[derive(Debug)]
pub struct SyncJobs {
    capacity: usize,
    prefix: String,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Oldest first.
    jobs: VecDeque<SyncJob>,
}

impl SyncJobs {
    /// A store keeping the last `capacity` jobs (at least 1).
    pub fn new(capacity: usize) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            capacity: capacity.max(1),
            prefix: format!("{started:x}"),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How many jobs are kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_job(&self, id: &str, change: impl FnOnce(&mut SyncJob)) {
        if let Some(job) = self.lock().jobs.iter_mut().find(|j| j.id == id) {
            change(job);
        }
    }

    /// A new queued job for `lablet`; the oldest finished job makes room.
    pub fn create(&self, lablet: &str) -> Result<SyncJob, JobsFull> {
        let mut inner = self.lock();
        while inner.jobs.len() >= self.capacity {
            match inner.jobs.iter().position(|j| j.state.is_finished()) {
                Some(oldest) => {
                    inner.jobs.remove(oldest);
                }
                None => {
                    return Err(JobsFull {
                        running: inner.jobs.len(),
                        capacity: self.capacity,
                    });
                }
            }
        }
        inner.next += 1;
        let job = SyncJob {
            id: format!("{}-{}", self.prefix, inner.next),
            lablet: lablet.to_owned(),
            state: JobState::Queued,
            stage: None,
            step: None,
            steps: Stage::ALL.len(),
            created_at: Utc::now(),
            started_at: None,
            finished_at: None,
            bytes: JobBytes::default(),
            result: None,
            error: None,
        };
        inner.jobs.push_back(job.clone());
        Ok(job)
    }

    /// The job `id`, if this process still keeps it.
    pub fn get(&self, id: &str) -> Option<SyncJob> {
        self.lock().jobs.iter().find(|j| j.id == id).cloned()
    }

    /// Every kept job, newest first.
    pub fn list(&self) -> Vec<SyncJob> {
        self.lock().jobs.iter().rev().cloned().collect()
    }

    /// The pipeline started `stage` of job `id`.
    pub fn stage_started(&self, id: &str, stage: Stage) {
        self.with_job(id, |job| {
            if job.started_at.is_none() {
                job.started_at = Some(Utc::now());
            }
            job.state = JobState::Running;
            job.stage = Some(stage);
            job.step = Stage::ALL.iter().position(|s| *s == stage).map(|i| i + 1);
        });
    }

    /// The pipeline moved `done` of `total` bytes in `stage` of job `id`.
    pub fn bytes(&self, id: &str, stage: Stage, done: u64, total: Option<u64>) {
        self.with_job(id, |job| {
            let count = Some(ByteCount { done, total });
            match stage {
                Stage::Download => job.bytes.download = count,
                Stage::Store => job.bytes.upload = count,
                _ => {}
            }
        });
    }

    /// Job `id` ended with `outcome`.
    pub fn finish(&self, id: &str, outcome: Result<SyncReport, JobError>) {
        self.with_job(id, |job| {
            job.finished_at = Some(Utc::now());
            match outcome {
                Ok(report) => {
                    job.state = JobState::Succeeded;
                    job.result = Some(report);
                }
                Err(error) => {
                    job.state = JobState::Failed;
                    if error.stage.is_some() {
                        job.stage = error.stage;
                        job.step = error
                            .stage
                            .and_then(|s| Stage::ALL.iter().position(|x| *x == s))
                            .map(|i| i + 1);
                    }
                    job.error = Some(error);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn failed() -> JobError {
        JobError {
            code: "internal",
            message: "x".into(),
            stage: None,
        }
    }

    #[test]
    fn keeps_the_last_jobs_and_refuses_when_all_are_running() {
        let jobs = SyncJobs::new(2);
        let a = jobs.create("A").unwrap();
        let b = jobs.create("B").unwrap();
        assert_eq!(
            jobs.create("C").unwrap_err(),
            JobsFull {
                running: 2,
                capacity: 2
            }
        );
        jobs.finish(&b.id, Err(failed()));
        let c = jobs.create("C").unwrap();
        // B (the only finished one) made room; A still runs.
        assert!(jobs.get(&b.id).is_none());
        assert_eq!(
            jobs.list().iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
            [c.id, a.id]
        );
    }
}
