//! CPA over HTTP. The record call is DESIGN's contract; the reads are **our assumed
//! contract** (documented in the README):
//!
//! - `POST {cpa_url}/api/internal/lablet-definitions/{id}/content-synced` with the
//!   [`ContentSyncResult`] as snake_case JSON; any 2xx. A body that decodes as a
//!   [`LabletDefinition`] is taken as the stored state, otherwise the definition is
//!   read back.
//! - `GET {cpa_url}/api/internal/lablet-definitions/{id}` → 200 [`LabletDefinition`]
//!   JSON (`id` plus the flattened fields), 404 when unknown.
//! - `GET {cpa_url}/api/internal/lablet-definitions?upstream_instance_name=X&status=Y`
//!   → 200 JSON array of [`LabletDefinition`].

use std::collections::BTreeMap;

use async_trait::async_trait;

use crate::http::{TransportError, setting_of};
use crate::retry::RetryPolicy;
use crate::template;
use cfgsync_core::Secret;

use super::{
    Catalog, CatalogConfig, CatalogError, CatalogFilter, ContentSyncResult, LabletDefinition,
};

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
        }
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
            if !resp.status().is_success() && status != 404 {
                return Err(CatalogError::Status {
                    method,
                    url: url.to_owned(),
                    status,
                });
            }
            let bytes = resp.bytes().await.map_err(req_err)?;
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

#[async_trait]
impl Catalog for CpaCatalog {
    async fn record(
        &self,
        id: &str,
        result: &ContentSyncResult,
    ) -> Result<LabletDefinition, CatalogError> {
        let url = self.url(&self.record_url, id)?;
        let (status, body) = self.send("POST", (&url, RECORD), Some(result), &[]).await?;
        if status == 404 {
            return Err(CatalogError::Status {
                method: "POST",
                url,
                status,
            });
        }
        if let Ok(def) = serde_json::from_slice::<LabletDefinition>(&body) {
            return Ok(def);
        }
        match self.get(id).await? {
            Some(def) => Ok(def),
            None => Err(CatalogError::Status {
                method: "GET",
                url: self.url(&self.definition_url, id)?,
                status: 404,
            }),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<LabletDefinition>, CatalogError> {
        let url = self.url(&self.definition_url, id)?;
        let (status, body) = self.send("GET", (&url, DEFINITION), None, &[]).await?;
        if status == 404 {
            return Ok(None);
        }
        decode(&format!("GET {url}"), &body).map(Some)
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
        if status == 404 {
            return Ok(Vec::new());
        }
        let mut defs: Vec<LabletDefinition> = decode(&format!("GET {url}"), &body)?;
        // be strict even if the server ignores a filter
        defs.retain(|d| filter.matches(d));
        defs.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(defs)
    }
}
