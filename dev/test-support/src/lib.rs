//! Shared test harnesses of the cfgsync workspace: a real cfgsync server and,
//! with feature `s3`, a real S3 server.
#![doc = include_str!("../README.md")]

mod browser;
mod http;
mod logs;
pub mod readme;
#[cfg(feature = "s3")]
mod s3;
mod server;
mod tls;

pub use browser::{Chromium, assert_inert};
pub use http::{get, http_client, http_client_builder};
pub use logs::CapturedLogs;
#[cfg(feature = "s3")]
pub use s3::{S3Faults, S3Harness};
pub use server::{TestServer, files, free_port, long_poll, woken};
pub use tls::{TEST_CA_PEM, TlsProxy, test_ca_file};
