//! `kill -9` of the client while it writes: the target is the old file or the
//! new one, never a mix or a prefix.
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cfgsync_core::{
    ArtifactFile, ArtifactSet, BundleConfigSource, ConfigSource, NodeArtifactsBundle,
    NodeArtifactsBundleEntry,
};
use cfgsync_test_support::TestServer;

/// Big enough that writing and fsyncing the temp file takes a few ms, so the
/// kill in the odd rounds lands while it is being staged (the test asserts
/// some did); every byte costs CPU in the debug build (JSON, gzip, SHA-256 on
/// the server, the client and here), so no bigger (was 16 MiB: 43 CPU-s).
const SIZE: usize = 2 * 1024 * 1024;

fn version(i: usize) -> ArtifactSet {
    let fill = char::from(b'a' + (i % 26) as u8);
    ArtifactSet::from_files([ArtifactFile::new(
        "/state.bin",
        fill.to_string().repeat(SIZE),
    )])
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_the_old_file_or_the_new_one() {
    let bundle = NodeArtifactsBundle {
        nodes: vec![NodeArtifactsBundleEntry {
            identifier: "node-1".into(),
            files: version(0),
        }],
        shared_files: ArtifactSet::new(),
    };
    let source = Arc::new(BundleConfigSource::from_bundle(bundle).unwrap());
    let server = TestServer::with_source(source.clone()).await;
    let url = &server.url;

    let out = tempfile::tempdir().unwrap();
    let target = out.path().join("state.bin");
    std::fs::write(&target, "z".repeat(SIZE)).unwrap();
    let mut completed = 0;
    for i in 1..=8 {
        source.replace("node-1", version(i)).await.unwrap();
        // Temp files earlier kills left behind, to tell this client's apart.
        let before: Vec<String> = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut client = Command::new(env!("CARGO_BIN_EXE_cfgsync-client"))
            .env_clear()
            .env("CFG_SERVER_ADDR", url)
            .env("CFG_HOST_IDENTIFIER", "node-1")
            .env("CFG_OUTPUT_ROOT", out.path())
            .env("CFG_TIMEOUT_SECS", "20")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if i % 2 == 1 {
            // Kill while the new version is being staged next to the target.
            // The wait is bounded by a generous deadline, not a loop count: on a
            // loaded machine a cold client start can take many seconds.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            let mut staged = false;
            while !staged && std::time::Instant::now() < deadline {
                if client.try_wait().unwrap().is_some() {
                    break; // finished before we saw it write: checked below all the same
                }
                // A temp file this client made (earlier kills left theirs).
                staged = std::fs::read_dir(out.path()).unwrap().any(|e| {
                    let name = e.unwrap().file_name().to_string_lossy().into_owned();
                    name.starts_with(".cfgsync-") && !before.contains(&name)
                });
                if !staged {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            assert!(
                staged || client.try_wait().unwrap().is_some(),
                "round {i}: the client neither wrote nor finished within 120 s"
            );
        } else {
            // Kill at another moment each round: before, during or after the write.
            tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
        }
        client.kill().unwrap();
        if client.wait().unwrap().success() {
            completed += 1;
        }
        let bytes = std::fs::read(&target).unwrap();
        assert_eq!(bytes.len(), SIZE, "round {i}: a partial file");
        assert!(
            bytes.iter().all(|b| *b == bytes[0]),
            "round {i}: a mix of two versions"
        );
    }
    // The killed writers' temp files are still there; age them past the
    // threshold, and add one a live writer could own right now.
    let temps = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".cfgsync-"))
            .collect();
        names.sort();
        names
    };
    let leftovers = temps(out.path());
    assert!(
        !leftovers.is_empty(),
        "the kills during staging left nothing"
    );
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    for name in &leftovers {
        std::fs::File::options()
            .write(true)
            .open(out.path().join(name))
            .unwrap()
            .set_modified(an_hour_ago)
            .unwrap();
    }
    std::fs::write(out.path().join(".cfgsync-live.tmp"), "in use").unwrap();
    std::fs::write(out.path().join("notes.tmp"), "not ours").unwrap();

    // Let one run finish, so the test also shows the new version does land.
    let status = Command::new(env!("CARGO_BIN_EXE_cfgsync-client"))
        .env_clear()
        .env("CFG_SERVER_ADDR", url)
        .env("CFG_HOST_IDENTIFIER", "node-1")
        .env("CFG_OUTPUT_ROOT", out.path())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::read(&target).unwrap()[0], b'a' + 8);
    // The abandoned temp files are gone; the fresh one and other files stay.
    assert_eq!(temps(out.path()), [".cfgsync-live.tmp"]);
    assert!(out.path().join("notes.tmp").exists());
    eprintln!(
        "{completed} of 8 killed clients had finished before the kill; kills left {} temp files",
        leftovers.len()
    );
}
