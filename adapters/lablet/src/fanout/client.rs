//! [`FanOutClient`]: POST the fan-out body to one target, with bounded retries.

use std::sync::atomic::{AtomicU32, Ordering};

use serde::{Deserialize, Serialize};

use crate::http::{TransportError, setting_of};
use crate::retry::RetryPolicy;

use super::{FanOutConfig, FanOutError};

/// Body of the LDS `sync` and SE `sync_content` calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOutBody {
    /// Lablet name.
    pub lablet: String,
    /// Bucket holding the package.
    pub bucket: String,
    /// Object key of the package.
    pub key: String,
    /// SHA-256 (hex) of the package.
    pub sha256: String,
    /// Content version of the definition.
    pub version: u64,
}

/// POSTs fan-out bodies with bounded retries.
#[derive(Debug, Clone)]
pub(crate) struct FanOutClient {
    http: reqwest::Client,
    retry: RetryPolicy,
    /// The settings named when LDS / SE cannot be reached.
    lds_setting: String,
    se_setting: String,
}

impl FanOutClient {
    /// A client for the targets of `config`, retrying per `retry`.
    pub(crate) fn new(http: reqwest::Client, config: &FanOutConfig, retry: RetryPolicy) -> Self {
        Self {
            http,
            retry,
            lds_setting: setting_of(
                &config.lds_sync_url,
                "{lds_url}",
                "LABLET_LDS_URL",
                "LABLET_LDS_SYNC_URL",
            ),
            se_setting: setting_of(
                &config.se_sync_url,
                "{se_url}",
                "LABLET_SE_URL",
                "LABLET_SE_SYNC_URL",
            ),
        }
    }

    /// The setting that holds the address of `target` (`lds` or `se`).
    fn setting(&self, target: &str) -> &str {
        if target == "se" {
            &self.se_setting
        } else {
            &self.lds_setting
        }
    }

    /// POST `body` to `url` of `target` until a 2xx or the retries are used
    /// up; returns the attempts made, with the last error on failure.
    pub(crate) async fn deliver(
        &self,
        target: &str,
        url: &str,
        body: &FanOutBody,
    ) -> (u32, Result<(), FanOutError>) {
        let attempts = AtomicU32::new(0);
        let result = self
            .retry
            .run(
                "fan-out",
                || {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    self.post(target, url, body)
                },
                FanOutError::is_retryable,
            )
            .await;
        (attempts.load(Ordering::SeqCst), result)
    }

    /// One POST, no retry.
    pub(crate) async fn post(
        &self,
        target: &str,
        url: &str,
        body: &FanOutBody,
    ) -> Result<(), FanOutError> {
        let resp = self
            .http
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|source| {
                FanOutError::Request(TransportError::new(url, self.setting(target), source))
            })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(FanOutError::Status {
                url: url.to_owned(),
                status: resp.status().as_u16(),
            })
        }
    }
}
