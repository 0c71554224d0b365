//! `ArtifactOutputMap`: placement, modes, binary content, atomic rewrites, and
//! refusal of paths that escape the root (nothing of such a payload is written).
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{TestServer, entries, node};
use cfgsync_core::{ArtifactFile, ArtifactSet, BundleConfigSource, NodeArtifactsBundle};
use cfgsync_runtime::{ArtifactOutputMap, ClientOptions, Error, fetch_and_write_artifacts_with};

fn mode_of(path: &std::path::Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn files_land_under_root_or_at_their_route_with_mode_and_decoded_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let routed = dir.path().join("elsewhere/node-1/config.yaml");
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();

    // An existing file keeps its mode when the artifact sets none.
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(root.join("etc/kept.conf"), "old").unwrap();
    fs::set_permissions(
        root.join("etc/kept.conf"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // An explicit mode replaces the old file's mode.
    fs::write(root.join("etc/secret.key"), "old").unwrap();
    fs::set_permissions(
        root.join("etc/secret.key"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();

    let outputs = ArtifactOutputMap::new()
        .with_root(&root)
        .route("/config.yaml", &routed);
    let payload = ArtifactSet::from_files([
        ArtifactFile::new("/config.yaml", "id: node-1\n"),
        ArtifactFile::new("/etc/kept.conf", "new"),
        ArtifactFile::new("/etc/secret.key", "k").with_mode(0o600),
        ArtifactFile::new("bin/start.sh", "#!/bin/sh\n").with_mode(0o755),
        ArtifactFile::binary("/data/blob.bin", &binary).with_mode(0o644),
    ])
    .unwrap();

    let written = outputs.write_files(&payload).unwrap();

    let paths: Vec<_> = written.iter().map(|w| w.path.clone()).collect();
    assert_eq!(
        paths,
        [
            routed.clone(),
            root.join("etc/kept.conf"),
            root.join("etc/secret.key"),
            root.join("bin/start.sh"),
            root.join("data/blob.bin"),
        ]
    );
    assert_eq!(written[4].bytes, binary.len() as u64);
    assert_eq!(fs::read_to_string(&routed).unwrap(), "id: node-1\n");
    // The routed file is not also written under the root.
    assert!(!root.join("config.yaml").exists());
    assert_eq!(
        fs::read_to_string(root.join("etc/kept.conf")).unwrap(),
        "new"
    );
    assert_eq!(mode_of(&root.join("etc/kept.conf")), 0o640);
    assert_eq!(mode_of(&root.join("etc/secret.key")), 0o600);
    assert_eq!(mode_of(&root.join("bin/start.sh")), 0o755);
    assert_eq!(fs::read(root.join("data/blob.bin")).unwrap(), binary);
    // A relative route resolves from the working directory.
    let relative = ArtifactOutputMap::new().route("/config.yaml", "config.yaml");
    assert_eq!(
        relative.local_path("/config.yaml").unwrap(),
        std::env::current_dir().unwrap().join("config.yaml")
    );
    // No temp file is left behind.
    assert_eq!(entries(&root.join("etc")), ["kept.conf", "secret.key"]);
    assert_eq!(entries(&root.join("data")), ["blob.bin"]);
}

#[test]
fn a_concurrent_reader_sees_the_old_or_the_new_file_never_a_part() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = ArtifactOutputMap::new().with_root(dir.path());
    let target = dir.path().join("big.txt");
    // Different lengths and bytes: a partial or truncated read matches neither.
    let a = "a".repeat(768 * 1024);
    let b = "b".repeat(512 * 1024 + 7);
    let payload_a = ArtifactSet::from_files([ArtifactFile::new("/big.txt", a.as_str())]).unwrap();
    let payload_b = ArtifactSet::from_files([ArtifactFile::new("/big.txt", b.as_str())]).unwrap();
    outputs.write_files(&payload_a).unwrap();

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, target, a, b) = (done.clone(), target.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let (mut reads, mut seen_a, mut seen_b) = (0u64, false, false);
            while !done.load(Ordering::Acquire) || reads == 0 {
                let content = fs::read_to_string(&target).unwrap();
                assert!(
                    content == a || content == b,
                    "read a partial file: {} bytes",
                    content.len()
                );
                seen_a |= content == a;
                seen_b |= content == b;
                reads += 1;
            }
            (reads, seen_a, seen_b)
        })
    };
    for i in 0..120 {
        let payload = if i % 2 == 0 { &payload_b } else { &payload_a };
        outputs.write_files(payload).unwrap();
    }
    done.store(true, Ordering::Release);
    let (reads, seen_a, seen_b) = reader.join().unwrap();
    assert!(
        reads > 1,
        "the reader ran while the writer rewrote the file"
    );
    assert!(seen_a || seen_b);
    assert_eq!(entries(dir.path()), ["big.txt"], "no temp file left behind");
}

/// Each bad path in a payload that also holds good files: the error names the
/// path and nothing at all is written.
#[test]
fn unsafe_paths_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&outside).unwrap();
    fs::write(root.join("keep.txt"), "old").unwrap();
    // A symlinked directory inside the root that points outside it.
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink("../../outside", root.join("sub/up")).unwrap();
    let outputs = ArtifactOutputMap::new().with_root(&root);

    let cases = [
        ("/../escape.txt", "`..` component"),
        ("a/../../escape.txt", "`..` component"),
        ("..", "`..` component"),
        ("", "empty"),
        ("/", "empty"),
        ("/nul\0.txt", "NUL"),
        ("/etc/", "directory"),
        ("/sub/.", "directory"),
        ("/sub", "is a directory"),
        ("/link/escape.txt", "outside the output root"),
        ("/link/deeper/escape.txt", "outside the output root"),
        ("/sub/up/escape.txt", "outside the output root"),
        ("/keep.txt/under-a-file", "not a directory"),
    ];
    for (bad, reason) in cases {
        let payload = ArtifactSet::from_files([
            ArtifactFile::new("/keep.txt", "new"),
            ArtifactFile::new("/fresh.txt", "fresh"),
            ArtifactFile::new(bad, "evil"),
            ArtifactFile::new("/later/after.txt", "after"),
        ])
        .unwrap();
        let error = outputs.write_files(&payload).unwrap_err();
        match &error {
            Error::UnsafePath { path, reason: why } => {
                assert_eq!(path, bad);
                assert!(why.contains(reason), "{bad:?}: {why}");
            }
            other => panic!("{bad:?}: expected UnsafePath, got {other:?}"),
        }
        assert!(
            error
                .to_string()
                .starts_with("write: refusing artifact path")
        );
        assert!(!error.is_retryable());
        assert_eq!(entries(&root), ["keep.txt", "link", "sub"], "{bad:?}");
        assert_eq!(fs::read_to_string(root.join("keep.txt")).unwrap(), "old");
        assert_eq!(entries(&root.join("sub")), ["up"]);
        assert!(
            entries(&outside).is_empty(),
            "{bad:?} wrote outside the root"
        );
    }
    // Bad base64 is refused the same way: before anything is written.
    let mut bad_base64 = ArtifactFile::binary("/blob.bin", b"x");
    bad_base64.content = "***not base64***".into();
    let payload =
        ArtifactSet::from_files([ArtifactFile::new("/fresh.txt", "fresh"), bad_base64]).unwrap();
    let error = outputs.write_files(&payload).unwrap_err();
    assert!(matches!(error, Error::Content { .. }), "{error:?}");
    assert!(error.to_string().contains("/blob.bin"), "{error}");
    assert_eq!(entries(&root), ["keep.txt", "link", "sub"]);

    // Absolute artifact paths land under the root, never at the absolute path.
    let escaped = outside.join("abs.txt");
    let payload =
        ArtifactSet::from_files([ArtifactFile::new(escaped.to_str().unwrap(), "inside")]).unwrap();
    let written = outputs.write_files(&payload).unwrap();
    assert!(written[0].path.starts_with(&root));
    assert!(!escaped.exists());
    // A target that is a symlink to a file outside: the link is replaced, the
    // file it pointed to is untouched.
    fs::write(outside.join("victim.txt"), "victim").unwrap();
    std::os::unix::fs::symlink(outside.join("victim.txt"), root.join("sub/ln.txt")).unwrap();
    let payload = ArtifactSet::from_files([ArtifactFile::new("/sub/ln.txt", "mine")]).unwrap();
    outputs.write_files(&payload).unwrap();
    assert_eq!(
        fs::read_to_string(outside.join("victim.txt")).unwrap(),
        "victim"
    );
    assert!(
        !fs::symlink_metadata(root.join("sub/ln.txt"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(root.join("sub/ln.txt")).unwrap(), "mine");
    // A symlink to a directory inside the root is fine.
    std::os::unix::fs::symlink(root.join("sub"), root.join("inner")).unwrap();
    let payload = ArtifactSet::from_files([ArtifactFile::new("/inner/ok.txt", "ok")]).unwrap();
    outputs.write_files(&payload).unwrap();
    assert_eq!(fs::read_to_string(root.join("sub/ok.txt")).unwrap(), "ok");
}

/// The same refusal through the whole client: a real server serves a payload
/// with a `..` path, the fetch succeeds, the write step refuses it all.
#[tokio::test]
async fn a_served_payload_with_an_escaping_path_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let bundle: NodeArtifactsBundle = serde_json::from_value(serde_json::json!({
        "nodes": [{"identifier": "node-1", "files": [
            {"path": "/config.yaml", "content": "id: node-1\n"},
            {"path": "/../../etc/cron.d/evil", "content": "* * * * * root sh"},
        ]}]
    }))
    .unwrap();
    let server =
        TestServer::with_source(Arc::new(BundleConfigSource::from_bundle(bundle).unwrap())).await;

    let error = fetch_and_write_artifacts_with(
        &node("node-1"),
        &server.url,
        &ArtifactOutputMap::new().with_root(&root),
        &ClientOptions::default(),
    )
    .await
    .unwrap_err();

    assert!(
        matches!(&error, Error::UnsafePath { path, .. } if path == "/../../etc/cron.d/evil"),
        "{error:?}"
    );
    assert_eq!(error.step(), Some(cfgsync_runtime::Step::Write));
    assert!(entries(&root).is_empty());
    assert!(entries(dir.path()).iter().all(|e| e == "root"));
    server.shutdown().await.unwrap();
}
