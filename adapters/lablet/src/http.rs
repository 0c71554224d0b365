//! The one HTTP client shared by the resolver, Mosaic, fan-out and CPA clients,
//! and [`TransportError`], what their requests fail with when no answer came.

use std::time::Duration;

use cfgsync_core::{TransportFailure, describe_transport_failure};

/// Build the shared client with connect and read timeouts.
pub(crate) fn client(connect: Duration, read: Duration) -> reqwest::Result<reqwest::Client> {
    cfgsync_core::tls::http_client_builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .user_agent(concat!("cfgsync-lablet/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// A request to a service that got no (complete) answer, with its cause kept:
/// `connection refused to http://10.0.0.9/resolve/LAB-1 (check
/// LABLET_RESOLVER_URL)`. The setting is named when the address is a likely
/// cause (refused, timed out, DNS, TLS, no route); a cause the classifier
/// cannot name adds the HTTP client's own words.
#[derive(Debug, thiserror::Error)]
#[error("{}", self.describe())]
pub struct TransportError {
    /// What kind of failure it is.
    pub failure: TransportFailure,
    /// The requested URL.
    pub url: String,
    /// The setting that holds the address (e.g. `LABLET_RESOLVER_URL`).
    pub setting: String,
    /// The HTTP client's error.
    #[source]
    pub source: reqwest::Error,
}

impl TransportError {
    /// Classifies `source`, a failed request to `url` whose address comes from
    /// `setting`.
    pub(crate) fn new(url: &str, setting: impl Into<String>, source: reqwest::Error) -> Self {
        Self {
            failure: TransportFailure::of(&source),
            url: url.to_owned(),
            setting: setting.into(),
            source,
        }
    }

    fn describe(&self) -> String {
        let text = describe_transport_failure(self.failure, &self.url, Some(&self.setting));
        match self.failure {
            TransportFailure::Connect | TransportFailure::Body | TransportFailure::Other => {
                format!(
                    "{text}: {}",
                    cfgsync_core::transport::error_chain(&self.source)
                )
            }
            _ => text,
        }
    }

    /// Whether another attempt may succeed (see [`transport_retryable`]).
    pub fn is_retryable(&self) -> bool {
        transport_retryable(&self.source)
    }
}

/// The setting to name for a URL rendered from `template`: the base URL
/// variable when the template uses its placeholder, the template's own
/// variable otherwise.
pub(crate) fn setting_of(template: &str, placeholder: &str, base: &str, own: &str) -> String {
    if template.contains(placeholder) {
        base.to_owned()
    } else {
        own.to_owned()
    }
}

/// Transport failures worth another attempt (connect, timeouts, broken bodies).
/// Our clients read bodies as bytes and parse them with `serde_json` themselves, so
/// a reqwest decode error is a body cut short (a connection reset mid-stream), not
/// a malformed answer.
pub(crate) fn transport_retryable(err: &reqwest::Error) -> bool {
    err.is_connect() || err.is_timeout() || err.is_body() || err.is_request() || err.is_decode()
}

/// Statuses worth another attempt.
pub(crate) fn status_retryable(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}
