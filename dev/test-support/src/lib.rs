//! Shared test harnesses of the cfgsync workspace: a real cfgsync server and,
//! with feature `s3`, a real S3 server.
#![doc = include_str!("../README.md")]

#[cfg(feature = "s3")]
mod s3;
mod server;

#[cfg(feature = "s3")]
pub use s3::{S3Faults, S3Harness};
pub use server::{TestServer, files, long_poll, woken};
