//! Fan-out: tell LDS and SE to refresh, with bounded retries, and a durable retry
//! queue for targets that keep failing.

mod client;
mod error;
mod queue;

pub use client::{FanOutBody, FanOutClient};
pub use error::{FanOutError, QueueError};
pub use queue::{PendingRecord, QueuedDelivery, RetryQueue};
