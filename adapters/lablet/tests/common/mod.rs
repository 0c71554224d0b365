//! Helpers shared by the integration tests: zip builders and byte patches.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

pub const CML: &str = "lab:\n  title: Sample lab\nnodes:\n  - id: n0\n    label: r1\n";
pub const DEVICES: &str = r#"[{"name": "r1", "type": "iosv"}]"#;

/// A zip with `entries` (name, bytes), deflated.
pub fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, bytes) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// `mosaic_meta.json` text for `version`.
pub fn meta_json(version: &str) -> String {
    format!(
        r#"{{"Version": "{version}", "DatePublished": "2026-02-25T10:00:00Z", "InstanceName": "mosaic-prod", "FormId": "form-42"}}"#
    )
}

/// A complete package in a top-level folder, as `zip -r LAB.zip LAB/` makes it.
/// `cml_extra` changes the cml.yaml content (and so every hash).
pub fn sample_package(version: &str, cml_extra: &str) -> Vec<u8> {
    let cml = format!("{CML}{cml_extra}");
    let meta = meta_json(version);
    zip_bytes(&[
        ("LAB/cml.yaml", cml.as_bytes()),
        ("LAB/devices.json", DEVICES.as_bytes()),
        ("LAB/grading/grade.xml", b"<grade/>"),
        ("LAB/mosaic_meta.json", meta.as_bytes()),
        ("LAB/assets/readme.txt", b"hello"),
    ])
}

/// Replace every occurrence of `from` by `to` (same length) in `bytes`.
pub fn patch(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut count = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            count += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    count
}

/// Set the "encrypted" flag bit on every local and central header.
pub fn mark_encrypted(bytes: &mut [u8]) {
    let mut i = 0;
    while i + 10 <= bytes.len() {
        if &bytes[i..i + 4] == b"PK\x03\x04" {
            bytes[i + 6] |= 1;
        } else if &bytes[i..i + 4] == b"PK\x01\x02" {
            bytes[i + 8] |= 1;
        }
        i += 1;
    }
}

/// SHA-256 hex of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
