//! The crate's one retry mechanism (`backon`): bounded exponential backoff with
//! jitter, for HTTP calls ([`RetryPolicy::run`]) and for waiting on a local file
//! another process holds ([`wait_blocking`]).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::{Deserialize, Serialize};

/// How often and how patiently a transient failure is retried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (default 3). `1` disables retries.
    pub max_attempts: usize,
    /// First backoff in milliseconds (default 200).
    pub initial_backoff_ms: u64,
    /// Longest backoff in milliseconds (default 5000).
    pub max_backoff_ms: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5_000,
        }
    }
}

impl RetryPolicy {
    /// Builder: attempts in total.
    pub fn with_max_attempts(mut self, attempts: usize) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Builder: first and longest backoff.
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff_ms = u64::try_from(initial.as_millis()).unwrap_or(u64::MAX);
        self.max_backoff_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        self
    }

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(
                self.max_backoff_ms.max(self.initial_backoff_ms),
            ))
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter()
    }

    /// Run `op` until it succeeds, fails with an error `retryable` rejects, or the
    /// attempts are used up; `what` names the operation in logs.
    pub(crate) async fn run<T, E, F, Fut>(
        &self,
        what: &str,
        op: F,
        retryable: fn(&E) -> bool,
    ) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: std::fmt::Display,
    {
        op.retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(retryable)
            .notify(|err: &E, delay: Duration| {
                tracing::warn!(operation = what, error = %err, ?delay, "transient failure, retrying");
            })
            .await
    }
}

/// Waits (on a blocking thread) while `op` fails with an error `busy` accepts,
/// e.g. a `redb` file another process has open: jittered backoff from 2 ms to
/// 100 ms, at most `patience` of sleeping and a bounded number of attempts.
pub(crate) fn wait_blocking<T, E>(
    patience: Duration,
    op: impl FnMut() -> Result<T, E>,
    busy: impl FnMut(&E) -> bool,
) -> Result<T, E> {
    use backon::BlockingRetryable;
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(2))
        .with_max_delay(Duration::from_millis(100))
        .with_jitter()
        .with_total_delay(Some(patience))
        .with_max_times(10_000);
    op.retry(backoff)
        .sleep(std::thread::sleep)
        .when(busy)
        .call()
}
