//! CPA over HTTP. The record call is the seed's contract (ADR-025) and the
//! only call CPA must answer; the reads are optional (documented in the README):
//!
//! - `POST {cpa_url}/api/internal/lablet-definitions/{id}/content-synced` with the
//!   [`ContentSyncResult`] as snake_case JSON; any 2xx means CPA holds the
//!   record, which is then never posted again. When the answer carries a
//!   `content_version` (CPA owns the auto-increment), that is the version;
//!   otherwise a read-back's (when CPA serves one for the same package), else
//!   the one that follows our last known record.
//! - `GET {cpa_url}/api/internal/lablet-definitions/{id}` → a definition. Only
//!   the fields we know are read, unknown ones are ignored, missing ones are
//!   filled from our last known record. `404`, `405` and `501` mean "no read
//!   back here", not an error.
//! - `GET {cpa_url}/api/internal/lablet-definitions?upstream_instance_name=X&status=Y`
//!   → a JSON array of definitions; optional as well.
//!
//! **Last known records.** Every record CPA accepted is kept in the embedded
//! catalog file of the data dir ([`KnownRecords`]): reads fall back to it
//! when CPA has no read-back, so nodes are served either way.
//!
//! **Change marker**: the known records' marker plus a digest of CPA's listing,
//! polled at most every `poll_interval` (`LABLET_CATALOG_POLL_SECS`), so a
//! record made elsewhere that CPA lists reaches `serve` within that interval. A
//! CPA without a listing gives a new marker every interval instead: `serve`
//! then re-reads the definitions its nodes hold that often (and wakes nodes
//! only when one changed).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::Digest;

use crate::http::{TransportError, setting_of};
use crate::retry::RetryPolicy;
use crate::template;
use cfgsync_core::Secret;

use super::{
    Catalog, CatalogConfig, CatalogError, CatalogFilter, ContentSyncResult, KnownRecords,
    LabletDefinition, next_content_version,
};

/// Statuses meaning "this CPA does not serve that read".
const NOT_AVAILABLE: [u16; 3] = [404, 405, 501];

/// Catalog backed by CPA's internal API.
#[derive(Debug, Clone)]
pub struct CpaCatalog {
    http: reqwest::Client,
    vars: BTreeMap<String, String>,
    record_url: String,
    definition_url: String,
    list_url: String,
    token: Option<Secret>,
    retry: RetryPolicy,
    /// The settings named when CPA cannot be reached: record, read, list.
    settings: [String; 3],
    /// Our last known records (what CPA accepted), when kept.
    known: Option<Arc<dyn KnownRecords>>,
    /// Least time between two listings made for the change marker.
    poll_interval: Duration,
    /// The last listing digest and when it was taken.
    listed: Arc<Mutex<Option<(Instant, String)>>>,
    /// Listings tried on a CPA without one.
    polls: Arc<AtomicU64>,
}

const RECORD: usize = 0;
const DEFINITION: usize = 1;
const LIST: usize = 2;

impl CpaCatalog {
    /// A CPA catalog at `cpa_url` with the default URL templates.
    pub fn new(http: reqwest::Client, cpa_url: impl Into<String>) -> Self {
        Self::build(http, &cpa_url.into(), &CatalogConfig::default())
    }

    /// From the catalog part's `cpa_*` settings (`cpa_url` must be set).
    pub fn from_config(config: &CatalogConfig, http: reqwest::Client) -> Option<Self> {
        let url = config.cpa_url.as_ref()?;
        Some(Self::build(http, url, config))
    }

    fn build(http: reqwest::Client, cpa_url: &str, config: &CatalogConfig) -> Self {
        Self {
            http,
            vars: BTreeMap::from([(
                "cpa_url".to_owned(),
                cpa_url.trim_end_matches('/').to_owned(),
            )]),
            record_url: config.cpa_record_url.clone(),
            definition_url: config.cpa_definition_url.clone(),
            list_url: config.cpa_list_url.clone(),
            token: config.cpa_token.clone(),
            retry: RetryPolicy::default(),
            settings: [
                (&config.cpa_record_url, "LABLET_CPA_RECORD_URL"),
                (&config.cpa_definition_url, "LABLET_CPA_DEFINITION_URL"),
                (&config.cpa_list_url, "LABLET_CPA_LIST_URL"),
            ]
            .map(|(template, own)| setting_of(template, "{cpa_url}", "LABLET_CPA_URL", own)),
            known: None,
            poll_interval: Duration::from_secs(config.poll_secs.max(1)),
            listed: Arc::new(Mutex::new(None)),
            polls: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Builder: keep the last known record of each definition in `known`.
    pub(crate) fn with_known(mut self, known: Arc<dyn KnownRecords>) -> Self {
        self.known = Some(known);
        self
    }

    /// Builder: least time between two listings of the change marker.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Builder: bearer token.
    pub fn with_token(mut self, token: Secret) -> Self {
        self.token = Some(token);
        self
    }

    /// Builder: retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn url(&self, template_str: &str, id: &str) -> Result<String, CatalogError> {
        let mut vars = self.vars.clone();
        vars.insert("id".to_owned(), id.to_owned());
        Ok(template::render(template_str, &vars)?)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => req.bearer_auth(t.expose()),
            None => req,
        }
    }

    async fn send(
        &self,
        method: &'static str,
        (url, which): (&str, usize),
        body: Option<&ContentSyncResult>,
        query: &[(&str, String)],
    ) -> Result<(u16, bytes::Bytes), CatalogError> {
        let setting = self
            .settings
            .get(which)
            .map_or("LABLET_CPA_URL", String::as_str);
        let url = if query.is_empty() {
            url.to_owned()
        } else {
            url::Url::parse_with_params(url, query)
                .map(String::from)
                .unwrap_or_else(|_| url.to_owned())
        };
        let url = url.as_str();
        let attempt = || async {
            let mut req = match method {
                "POST" => self.http.post(url),
                _ => self.http.get(url),
            };
            if let Some(body) = body {
                req = req.json(body);
            }
            let req_err = |source| CatalogError::Request(TransportError::new(url, setting, source));
            let resp = self.auth(req).send().await.map_err(req_err)?;
            let status = resp.status().as_u16();
            if !resp.status().is_success() && !NOT_AVAILABLE.contains(&status) {
                return Err(CatalogError::Status {
                    method,
                    url: url.to_owned(),
                    status,
                });
            }
            let bytes = match resp.bytes().await {
                Ok(bytes) => bytes,
                // a record answered 2xx has landed, whatever became of the
                // body: posting it again would record it twice
                Err(error) if method == "POST" && (200..300).contains(&status) => {
                    tracing::warn!(url, %error, "CPA accepted the record; its answer was cut off");
                    bytes::Bytes::new()
                }
                Err(error) => return Err(req_err(error)),
            };
            Ok((status, bytes))
        };
        self.retry
            .run("cpa", attempt, CatalogError::is_retryable)
            .await
    }
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, CatalogError> {
    serde_json::from_slice(bytes).map_err(|source| CatalogError::Decode {
        what: what.to_owned(),
        source,
    })
}

/// The `content_version` CPA states in `answer` (a number, or a string of one).
fn stated_version(answer: &serde_json::Value) -> Option<u64> {
    match answer.get("content_version")? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The package hash CPA states in `answer`.
fn stated_hash(answer: &serde_json::Value) -> Option<&str> {
    answer.get("content_package_hash")?.as_str()
}

/// What CPA's definition `answer` for `id` tells us, beside our last known
/// record `known`: a complete definition of its own (unknown fields ignored;
/// a missing `id` is the one asked for), else our known record with CPA's
/// version when both describe the same package, else the known record.
fn merge(
    id: &str,
    answer: Option<serde_json::Value>,
    known: Option<LabletDefinition>,
) -> Option<LabletDefinition> {
    let Some(mut answer) = answer.filter(serde_json::Value::is_object) else {
        return known;
    };
    if let Some(obj) = answer.as_object_mut() {
        obj.entry("id").or_insert_with(|| id.into());
    }
    if let Ok(full) = serde_json::from_value::<LabletDefinition>(answer.clone()) {
        return Some(full);
    }
    let mut known = known?;
    let same_package = stated_hash(&answer).is_none_or(|h| h == known.content.content_package_hash);
    if same_package && let Some(version) = stated_version(&answer) {
        known.content.content_version = version;
    }
    Some(known)
}

impl CpaCatalog {
    /// CPA's definition `id` as JSON, `None` when CPA has none or serves no
    /// read-back (404/405/501).
    async fn read_back(&self, id: &str) -> Result<Option<serde_json::Value>, CatalogError> {
        let url = self.url(&self.definition_url, id)?;
        let (status, body) = self.send("GET", (&url, DEFINITION), None, &[]).await?;
        if NOT_AVAILABLE.contains(&status) {
            return Ok(None);
        }
        decode(&format!("GET {url}"), &body).map(Some)
    }

    async fn known(&self, id: &str) -> Result<Option<LabletDefinition>, CatalogError> {
        match &self.known {
            Some(known) => known.get(id).await,
            None => Ok(None),
        }
    }

    /// The version of a record CPA accepted: stated in its answer, else by a
    /// read-back of the same package, else the one after our last known record
    /// (else our proposal).
    async fn accepted_version(
        &self,
        id: &str,
        result: &ContentSyncResult,
        answer: Option<&serde_json::Value>,
    ) -> u64 {
        if let Some(v) = answer.and_then(stated_version) {
            return v;
        }
        // the record landed: a read-back that fails only costs us CPA's word
        match self.read_back(id).await {
            Ok(Some(def))
                if stated_hash(&def) == Some(result.content_package_hash.as_str())
                    && stated_version(&def).is_some() =>
            {
                return stated_version(&def).unwrap_or(result.content_version);
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(id, %error, "CPA accepted the record; reading it back failed")
            }
        }
        match self.known(id).await {
            Ok(Some(previous)) => {
                next_content_version(Some(&previous), &result.content_package_hash)
            }
            Ok(None) if self.known.is_some() => 1,
            Ok(None) => result.content_version,
            Err(error) => {
                tracing::warn!(id, %error, "cannot read the last known record");
                result.content_version
            }
        }
    }

    /// A digest of CPA's listing, taken at most every `poll_interval`; without
    /// a listing, a new value every `poll_interval`.
    async fn listing_digest(&self) -> Result<String, CatalogError> {
        {
            let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((at, digest)) = listed.as_ref()
                && at.elapsed() < self.poll_interval
            {
                return Ok(digest.clone());
            }
        }
        let url = self.url(&self.list_url, "")?;
        let digest = match self.send("GET", (&url, LIST), None, &[]).await {
            // no listing: a new marker every interval, so readers re-read the
            // definitions they hold (a read-back, or our known records) that often
            Ok((status, _)) if NOT_AVAILABLE.contains(&status) => {
                format!("unlisted-{}", self.polls.fetch_add(1, Ordering::Relaxed))
            }
            Ok((_, body)) => hex::encode(sha2::Sha256::digest(&body)),
            Err(error) => {
                // keep the last digest: a CPA outage is not a change
                tracing::warn!(%error, "CPA listing for the change marker failed");
                let listed = self.listed.lock().unwrap_or_else(PoisonError::into_inner);
                return match listed.as_ref() {
                    Some((_, digest)) => Ok(digest.clone()),
                    None => Err(error),
                };
            }
        };
        *self.listed.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), digest.clone()));
        Ok(digest)
    }
}

#[async_trait]
impl Catalog for CpaCatalog {
    async fn record(
        &self,
        id: &str,
        result: &ContentSyncResult,
    ) -> Result<LabletDefinition, CatalogError> {
        let url = self.url(&self.record_url, id)?;
        let (status, body) = self.send("POST", (&url, RECORD), Some(result), &[]).await?;
        if NOT_AVAILABLE.contains(&status) {
            return Err(CatalogError::Status {
                method: "POST",
                url,
                status,
            });
        }
        // CPA holds the record now: whatever follows must not fail it
        let answer = serde_json::from_slice::<serde_json::Value>(&body).ok();
        let mut content = result.clone();
        content.content_version = self.accepted_version(id, result, answer.as_ref()).await;
        let def = LabletDefinition {
            id: id.to_owned(),
            content,
        };
        if let Some(known) = &self.known
            && let Err(error) = known.remember(&def).await
        {
            tracing::warn!(id, %error, "CPA holds the record; keeping our copy of it failed");
        }
        Ok(def)
    }

    async fn get(&self, id: &str) -> Result<Option<LabletDefinition>, CatalogError> {
        let answer = self.read_back(id).await?;
        Ok(merge(id, answer, self.known(id).await?))
    }

    async fn list(&self, filter: &CatalogFilter) -> Result<Vec<LabletDefinition>, CatalogError> {
        let url = self.url(&self.list_url, "")?;
        let mut query = Vec::new();
        if let Some(n) = &filter.upstream_instance_name {
            query.push(("upstream_instance_name", n.clone()));
        }
        if let Some(s) = filter.status {
            query.push(("status", s.as_str().to_owned()));
        }
        let (status, body) = self.send("GET", (&url, LIST), None, &query).await?;
        let mut defs = if NOT_AVAILABLE.contains(&status) {
            match &self.known {
                Some(known) => known.list(filter).await?,
                None => Vec::new(),
            }
        } else {
            let answers: Vec<serde_json::Value> = decode(&format!("GET {url}"), &body)?;
            let mut defs = Vec::with_capacity(answers.len());
            for answer in answers {
                let Some(id) = answer.get("id").and_then(|v| v.as_str()).map(str::to_owned) else {
                    continue;
                };
                let known = self.known(&id).await?;
                defs.extend(merge(&id, Some(answer), known));
            }
            defs
        };
        // be strict even if the server ignores a filter
        defs.retain(|d| filter.matches(d));
        defs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(defs)
    }

    async fn marker(&self) -> Result<Option<String>, CatalogError> {
        let known = match &self.known {
            Some(known) => known.marker().await?.unwrap_or_default(),
            None => String::new(),
        };
        Ok(Some(format!("{known}/{}", self.listing_digest().await?)))
    }
}
