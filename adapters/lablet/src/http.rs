//! The one HTTP client shared by the resolver, Mosaic, fan-out and CPA clients.

use std::time::Duration;

/// Build the shared client with connect and read timeouts.
pub(crate) fn client(connect: Duration, read: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .read_timeout(read)
        .user_agent(concat!("cfgsync-lablet/", env!("CARGO_PKG_VERSION")))
        .build()
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
