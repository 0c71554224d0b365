//! The demo binary as a user runs it: `--keep DIR` leaves the files it printed
//! in place, shows a delivered file and the by-hand commands; a used DIR is
//! refused before anything starts.
use std::process::Command;

#[test]
fn keep_leaves_what_the_demo_printed_and_refuses_a_used_directory() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("kept");

    let run = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--keep")
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );

    // Every path it printed is still there after exit.
    let dir = dir.canonicalize().unwrap();
    assert!(
        stdout.contains(&format!("kept {}", dir.display())),
        "{stdout}"
    );
    assert!(dir.join("lablet-sync/catalog.redb").is_file());
    assert!(
        dir.join("lablet-sync/store/lablets/LAB-1.1.1/package.zip")
            .is_file()
    );
    for pod in ["pod-1", "pod-2", "pod-3"] {
        for file in ["cml.yaml", "devices.json", "content.json"] {
            assert!(dir.join(pod).join(file).is_file(), "{pod}/{file} missing");
        }
    }

    // It showed the content of a delivered file (as first delivered: 2 routers).
    assert!(stdout.contains("   | lab:\n   |   title: Routing basics\n   |   version: 1.0.0\n"));
    // The kept file is the re-synced version.
    let cml = std::fs::read_to_string(dir.join("pod-1/cml.yaml")).unwrap();
    assert!(
        cml.contains("version: 1.1.0") && cml.contains("label: r3"),
        "{cml}"
    );

    // The by-hand commands name the real data dir, routes and node.
    let data_dir = dir.join("lablet-sync");
    for expected in [
        format!(
            "lablet-sync --data-dir {} serve --listen 127.0.0.1:",
            data_dir.display()
        ),
        format!(
            "lablet-sync --data-dir {} sync LAB-1.1.1",
            data_dir.display()
        ),
        format!(
            "lablet-sync --data-dir {} catalog show LAB-1.1.1",
            data_dir.display()
        ),
        "/api/v1/lablets/LAB-1.1.1/sync".to_owned(),
        "cfgsync-client --server http://127.0.0.1:".to_owned(),
        r#"-d '{"identifier":"pod-1","ip":"127.0.0.11","metadata":{"lablet":"LAB-1.1.1"}}'"#
            .to_owned(),
        "/node?wait=30".to_owned(),
    ] {
        assert!(
            stdout.contains(&expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // A second run into the same directory would mix catalogs: refused, exit 1,
    // and the kept files are untouched.
    let before = std::fs::read(dir.join("pod-1/content.json")).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_demo"))
        .arg("--keep")
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains(&format!("--keep {}", dir.display())) && stderr.contains("not empty"),
        "{stderr}"
    );
    assert!(again.stdout.is_empty());
    assert_eq!(
        std::fs::read(dir.join("pod-1/content.json")).unwrap(),
        before
    );
}
