//! The benchmark package: the ADR-025 files plus stored (uncompressed) entries of
//! incompressible bytes, written to disk in a stream (never whole in memory).

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use anyhow::Context;
use sha2::{Digest, Sha256};

/// Largest single blob entry: keeps every entry far below the zip32 limits.
const BLOB_ENTRY_BYTES: u64 = 256 * 1024 * 1024;
const WRITE_BUF: usize = 1024 * 1024;

pub const CML_YAML: &str = "lab:\n  title: lablet-sync-bench\n  version: 0.1.0\nnodes:\n  - id: r1\n    node_definition: iosv\n";
pub const DEVICES_JSON: &str = r#"[{"name": "r1", "type": "iosv"}]"#;
pub const GRADE_XML_PATH: &str = "grading/grade.xml";
pub const META_VERSION: &str = "1.0";
pub const META_INSTANCE: &str = "bench";
const GRADE_XML: &str = "<grade/>\n";
const MOSAIC_META: &str = r#"{"Version": "1.0", "DatePublished": "2026-11-23", "InstanceName": "bench", "FormId": "F-BENCH"}"#;

/// A package on disk.
#[derive(Debug, Clone)]
pub struct Package {
    pub size: u64,
    pub sha256: String,
}

/// Write a package of about `size` bytes to `path` (the blobs fill what the small
/// files and the zip structure leave) and return its size and SHA-256.
pub fn write_package(path: &Path, size: u64, seed: u64) -> anyhow::Result<Package> {
    let file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(WRITE_BUF, file));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, text) in [
        ("cml.yaml", CML_YAML),
        ("devices.json", DEVICES_JSON),
        (GRADE_XML_PATH, GRADE_XML),
        ("mosaic_meta.json", MOSAIC_META),
    ] {
        zip.start_file(name, stored)?;
        zip.write_all(text.as_bytes())?;
    }
    // a little room for the blob headers and the central directory
    let mut remaining = size.saturating_sub(16 * 1024);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut buf = vec![0u8; WRITE_BUF];
    let mut index = 0;
    while remaining > 0 {
        let entry = remaining.min(BLOB_ENTRY_BYTES);
        zip.start_file(format!("assets/blob-{index:03}.bin"), stored)?;
        let mut left = entry;
        while left > 0 {
            let n = usize::try_from(left.min(WRITE_BUF as u64))?;
            rng.fill(&mut buf[..n]);
            zip.write_all(&buf[..n])?;
            left -= n as u64;
        }
        remaining -= entry;
        index += 1;
    }
    let mut out = zip.finish()?;
    out.flush()?;
    drop(out);
    let sha256 = sha256_file(path)?;
    let size = std::fs::metadata(path)?.len();
    Ok(Package { size, sha256 })
}

/// SHA-256 (lower-case hex) of a file, read in a stream.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; WRITE_BUF];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Parse `1GiB`, `100MiB`, `512KiB`, `8M`, `1G` (all binary) or plain bytes:
/// the parser of every size setting (`LABLET_MAX_PACKAGE_BYTES`, ...).
pub fn parse_size(text: &str) -> Result<u64, String> {
    cfgsync_runtime::settings::parse_bytes(text).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("lots").is_err());
    }
}
