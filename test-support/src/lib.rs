#![doc = include_str!("../README.md")]

mod s3;

pub use s3::S3Harness;
