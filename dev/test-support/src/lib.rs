#![doc = include_str!("../README.md")]

mod browser;
mod s3;
mod server;
mod store_suite;

pub use browser::Chromium;
pub use s3::{S3Faults, S3Harness};
pub use server::{TestServer, files, long_poll, woken};
pub use store_suite::registration_store_suite;
