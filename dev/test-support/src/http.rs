//! Plain HTTP clients for tests, through `cfgsync_core::tls` so that building
//! one cannot panic for want of a TLS provider (the workspace's reqwest has
//! no provider feature; see `cfgsync_core::tls`).

/// A default `reqwest::Client`: what `reqwest::Client::new()` would be, with
/// the process's TLS provider ensured first.
///
/// # Panics
/// When the client cannot be built (no TLS provider or no system resolver
/// configuration), as `reqwest::Client::new()` does.
#[must_use]
#[allow(clippy::expect_used)]
pub fn http_client() -> reqwest::Client {
    http_client_builder()
        .build()
        .expect("a default reqwest client")
}

/// `reqwest::Client::builder()` with the process's TLS provider ensured.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    cfgsync_core::tls::http_client_builder()
}

/// `GET url` with a fresh default client: what `reqwest::get(url)` does.
///
/// # Errors
/// The request's error.
pub async fn get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}
