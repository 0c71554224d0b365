//! Example adapters for cfgsync, used by the runnable examples, the tests and
//! the benchmarks.

pub mod peer_list;
