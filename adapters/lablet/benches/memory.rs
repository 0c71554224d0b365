//! Memory bench: sync packages of growing size through the whole pipeline and print
//! the growth of the process's peak RSS (`VmHWM`). A constant-memory pipeline shows
//! roughly the same growth whatever the package size.
//!
//! `cargo bench -p cfgsync-lablet --bench memory` (sizes via `BENCH_SIZES_MIB`,
//! default `16,64,256`). Linux only (reads `/proc/self/status`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cfgsync_lablet::config::S3Options;
use cfgsync_lablet::{LabletSync, LabletSyncConfig, Secret};
use cfgsync_test_support::S3Harness;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// A package with `mib` MiB of incompressible data next to the usual small files.
fn write_package(path: &Path, mib: usize) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = zip::ZipWriter::new(std::io::BufWriter::new(file));
    let stored = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    w.start_file("LAB/cml.yaml", stored).unwrap();
    w.write_all(b"lab:\n  title: bench\n").unwrap();
    w.start_file("LAB/mosaic_meta.json", stored).unwrap();
    w.write_all(br#"{"Version": "1", "InstanceName": "bench"}"#)
        .unwrap();
    w.start_file("LAB/assets/blob.bin", stored).unwrap();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1024 * 1024];
    for _ in 0..mib {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        w.write_all(&buf).unwrap();
    }
    w.finish().unwrap().flush().unwrap();
}

/// Resolver, Mosaic (streaming the file from disk), LDS and SE on one tiny HTTP/1.1
/// server (one request per connection).
async fn serve(package: Arc<PathBuf>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let base_for_task = base.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let package = Arc::clone(&package);
            let base = base_for_task.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut request_line = String::new();
                reader.read_line(&mut request_line).await.unwrap();
                let mut content_length = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        content_length = v.trim().parse().unwrap_or(0);
                    }
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                }
                let mut body = vec![0u8; content_length];
                tokio::io::AsyncReadExt::read_exact(&mut reader, &mut body)
                    .await
                    .unwrap();
                let mut stream = reader.into_inner();
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_owned();
                if path.starts_with("/resolve/") {
                    let json = format!(r#"{{"MOSAIC_BASE_URL": "{base}"}}"#);
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        json.len()
                    );
                    stream.write_all(head.as_bytes()).await.unwrap();
                    stream.write_all(json.as_bytes()).await.unwrap();
                } else if path == "/package.zip" {
                    let mut file = tokio::fs::File::open(&*package).await.unwrap();
                    let len = file.metadata().await.unwrap().len();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {len}\r\nconnection: close\r\n\r\n"
                    );
                    stream.write_all(head.as_bytes()).await.unwrap();
                    tokio::io::copy(&mut file, &mut stream).await.unwrap();
                } else {
                    stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await
                        .unwrap();
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    base
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES_MIB")
        .unwrap_or_else(|_| "16,64,256".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let s3 = S3Harness::start().await.unwrap();
    println!("| package | store | peak RSS before | peak RSS after | growth |");
    println!("|---|---|---|---|---|");
    for mib in sizes {
        let dir = tempfile::tempdir().unwrap();
        let package = dir.path().join("package.zip");
        write_package(&package, mib);
        let size = std::fs::metadata(&package).unwrap().len();
        let base = serve(Arc::new(package)).await;
        for store in ["file", "s3"] {
            let mut config = LabletSyncConfig::default()
                .with_resolver_url(&base)
                .with_lds_url(&base)
                .with_se_url(&base)
                .with_data_dir(dir.path().join(format!("work-{store}")));
            if store == "s3" {
                config = config
                    .with_store(format!("s3://{}", s3.bucket))
                    .with_s3(S3Options {
                        endpoint: Some(s3.endpoint.clone()),
                        region: Some(s3.region.clone()),
                        access_key_id: Some(s3.access_key.clone()),
                        secret_access_key: Some(Secret::new(s3.secret_key.clone())),
                        allow_http: Some(true),
                    });
            }
            let sync = LabletSync::from_config(config).unwrap();
            let before = peak_rss_kib();
            let name = format!("BENCH-{mib}");
            let report = sync.sync(&name).await.unwrap();
            assert!(report.uploaded);
            assert_eq!(report.definition.content.content_package_size, size);
            let after = peak_rss_kib();
            println!(
                "| {:.0} MiB | {store} | {} MiB | {} MiB | {} MiB |",
                size as f64 / 1048576.0,
                before / 1024,
                after / 1024,
                after.saturating_sub(before) / 1024
            );
        }
    }
}
