//! The crate's integration tests, one binary (`cargo test -p CRATE --test it`):
//! each module is one area; run one with a filter, e.g. `--test it MODULE::`.
//! One binary instead of one per file: each test executable links every
//! dependency (~37 MB), so a binary per file cost a link and its disk per file
//! on every first run (BENCHMARKS.md, "First run from a fresh clone").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod browser;
mod common;
mod compaction;
mod crash;
mod env_client;
mod fetch;
mod help_readme;
mod hostile_server;
mod output;
mod reload;
mod server;
mod tls;
