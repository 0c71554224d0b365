//! Fan-out (stage `fan-out`): tell LDS and SE to refresh, with bounded retries,
//! and a durable retry queue for targets that keep failing.

mod client;
mod config;
mod error;
mod queue;

pub use client::FanOutBody;
pub(crate) use client::FanOutClient;
pub use config::{DEFAULT_LDS_SYNC_URL, DEFAULT_SE_SYNC_URL, FanOutConfig};
pub(crate) use error::FanOutError;
pub use error::QueueError;
pub use queue::QueuedDelivery;
pub(crate) use queue::{PENDING, RetryQueue};
