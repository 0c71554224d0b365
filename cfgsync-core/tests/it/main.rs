//! The crate's integration tests, one binary (`cargo test -p CRATE --test it`):
//! each module is one area; run one with a filter, e.g. `--test it MODULE::`.
//! One binary instead of one per file: each test executable links every
//! dependency (~37 MB), so a binary per file cost a link and its disk per file
//! on every first run (BENCHMARKS.md, "First run from a fresh clone").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod client_and_auth;
mod common;
mod compression;
mod hostile_peers;
mod hostile_yaml;
mod http_contract;
mod identities;
mod malformed_requests;
mod secrets_in_logs;
mod status;
mod transport_causes;
