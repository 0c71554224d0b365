//! [`ResolverClient`]: `GET` the resolve URL, answer the variables.

use std::collections::BTreeMap;

use crate::http::TransportError;
use crate::retry::RetryPolicy;
use crate::template;

use super::{ResolveError, ResolverConfig};

/// Variables returned by the resolver (e.g. `MOSAIC_BASE_URL`).
pub(crate) type ResolvedVars = BTreeMap<String, String>;

/// Client of the form-environment-resolver.
#[derive(Debug, Clone)]
pub(crate) struct ResolverClient {
    http: reqwest::Client,
    url_template: String,
    /// The setting named when the resolver cannot be reached.
    setting: String,
    retry: RetryPolicy,
}

impl ResolverClient {
    /// A client rendering the part's resolve URL template (placeholders from
    /// `vars` given to [`ResolverClient::resolve`]).
    pub(crate) fn new(http: reqwest::Client, config: &ResolverConfig, retry: RetryPolicy) -> Self {
        Self {
            http,
            url_template: config.resolve_url.clone(),
            setting: crate::http::setting_of(
                &config.resolve_url,
                "{resolver_url}",
                "LABLET_RESOLVER_URL",
                "LABLET_RESOLVE_URL",
            ),
            retry,
        }
    }

    /// `GET` the resolve URL and return the variables; `MOSAIC_BASE_URL` must be
    /// among them. Non-string scalar values are kept as their JSON text.
    pub(crate) async fn resolve(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> Result<ResolvedVars, ResolveError> {
        let url = template::render(&self.url_template, vars)?;
        let mut resolved = self
            .retry
            .run("resolve", || self.fetch(&url), ResolveError::is_retryable)
            .await?;
        match resolved.get_mut("MOSAIC_BASE_URL") {
            // templates add the `/`; a trailing one would double it
            Some(base) if !base.trim().is_empty() => {
                *base = base.trim().trim_end_matches('/').to_owned();
            }
            _ => {
                return Err(ResolveError::MissingVar {
                    var: "MOSAIC_BASE_URL",
                });
            }
        }
        Ok(resolved)
    }

    async fn fetch(&self, url: &str) -> Result<ResolvedVars, ResolveError> {
        let response = self.http.get(url).send().await.map_err(|source| {
            ResolveError::Request(TransportError::new(url, &self.setting, source))
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(ResolveError::Status {
                url: url.to_owned(),
                status: status.as_u16(),
            });
        }
        let bytes = response.bytes().await.map_err(|source| {
            ResolveError::Request(TransportError::new(url, &self.setting, source))
        })?;
        let body_err = |reason: String| ResolveError::Body {
            url: url.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| body_err(e.to_string()))?;
        let serde_json::Value::Object(map) = value else {
            return Err(body_err("not an object".to_owned()));
        };
        let mut out = ResolvedVars::new();
        for (key, value) in map {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Null => continue,
                serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                    return Err(body_err(format!("{key} is not a scalar")));
                }
                other => other.to_string(),
            };
            out.insert(key, text);
        }
        Ok(out)
    }
}
