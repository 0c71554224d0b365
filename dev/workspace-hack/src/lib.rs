//! Feature unification only; see `README.md`. This crate has no code.
#![doc = include_str!("../README.md")]
