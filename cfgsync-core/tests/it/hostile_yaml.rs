//! Hostile YAML against the bundle and artifacts parsers: deep nesting,
//! alias bombs ("billion laughs"), huge scalars, invalid UTF-8, tabs and random
//! mutations of a valid bundle. Every input ends in a value or a typed error
//! naming the file — never a panic, never an unbounded expansion.
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use cfgsync_core::{Error, NodeArtifactsBundle, RegistrationArtifacts};
use proptest::prelude::*;

const VALID: &str = "nodes:\n  - identifier: node-1\n    files:\n      - path: /config.yaml\n        content: \"id: 1\\n\"\n        mode: 420\nshared_files:\n  - {path: /peers.txt, content: \"a\\nb\\n\"}\n";

/// Parses `bytes` as both file shapes; asserts no panic and a typed outcome.
fn parse_both(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.yaml");
    std::fs::write(&path, bytes).unwrap();
    check(&path, || NodeArtifactsBundle::from_path(&path).map(|_| ()));
    check(&path, || {
        RegistrationArtifacts::from_path(&path).map(|_| ())
    });
}

fn check(path: &Path, parse: impl FnOnce() -> cfgsync_core::Result<()>) {
    let outcome = catch_unwind(AssertUnwindSafe(parse));
    match outcome {
        Err(_) => panic!("the parser panicked on {}", path.display()),
        Ok(Ok(())) => {}
        Ok(Err(Error::ParseFile { path: named, .. } | Error::ReadFile { path: named, .. })) => {
            assert_eq!(named, path);
        }
        Ok(Err(other)) => panic!("untyped outcome: {other:?}"),
    }
}

/// `levels` of anchors, each a list of `width` aliases of the previous one:
/// `width^levels` nodes if expanded.
fn alias_bomb(levels: usize, width: usize) -> String {
    let mut text = String::from("a0: &a0 [\"lol\"]\n");
    for level in 1..=levels {
        let items = vec![format!("*a{}", level - 1); width].join(", ");
        text.push_str(&format!("a{level}: &a{level} [{items}]\n"));
    }
    text.push_str(&format!("nodes: *a{levels}\n"));
    text
}

#[test]
fn known_hostile_documents_get_a_value_or_a_typed_error() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("billion laughs", alias_bomb(9, 10).into_bytes()),
        ("wide alias bomb", alias_bomb(3, 1000).into_bytes()),
        (
            "deep flow nesting",
            format!("nodes: {}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes(),
        ),
        (
            "deep block nesting",
            (0..2_000)
                .map(|i| format!("{}- \n", " ".repeat(i * 2)))
                .collect::<String>()
                .into_bytes(),
        ),
        (
            "8 MiB scalar",
            format!(
                "nodes:\n  - identifier: n\n    files: [{{path: /big, content: \"{}\"}}]\n",
                "x".repeat(8 * 1024 * 1024)
            )
            .into_bytes(),
        ),
        (
            "invalid UTF-8",
            b"nodes:\n  - identifier: \xff\xfe\n".to_vec(),
        ),
        ("tabs", b"nodes:\n\t- identifier: n\n".to_vec()),
        ("NUL bytes", b"nodes: [\0]\n".to_vec()),
        ("recursive alias", b"a: &a [*a]\nnodes: *a\n".to_vec()),
        ("merge keys", b"a: &a {x: 1}\nnodes:\n  - <<: *a\n".to_vec()),
        (
            "many documents",
            "---\nnodes: []\n".repeat(10_000).into_bytes(),
        ),
        ("tags", b"nodes: !!binary AAAA\n".to_vec()),
    ];
    for (name, bytes) in cases {
        eprintln!("{name}");
        parse_both(&bytes);
    }
}

fn hostile_yaml() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Random bytes, and random YAML-ish text.
        prop::collection::vec(any::<u8>(), 0..512),
        "[-:&*!|>'\"{}\\[\\],#%@` \t\na-z0-9.]{0,512}".prop_map(String::into_bytes),
        // A valid bundle with bytes flipped, inserted or cut.
        (
            prop::collection::vec((0..VALID.len(), any::<u8>()), 1..8),
            0..VALID.len()
        )
            .prop_map(|(edits, cut)| {
                let mut bytes = VALID.as_bytes().to_vec();
                for (at, byte) in edits {
                    bytes[at] = byte;
                }
                bytes.truncate(cut.max(1));
                bytes
            }),
        // Alias bombs and nesting of random shapes.
        (1usize..12, 1usize..40).prop_map(|(l, w)| alias_bomb(l, w).into_bytes()),
        (1usize..5_000).prop_map(|n| format!("nodes: {}", "[".repeat(n)).into_bytes()),
        (1usize..5_000).prop_map(|n| format!("nodes: {}", "{a: ".repeat(n)).into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("CFGSYNC_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64)
    ))]

    #[test]
    fn hostile_yaml_never_panics(bytes in hostile_yaml()) {
        parse_both(&bytes);
    }
}

#[test]
fn the_valid_bundle_parses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bundle.yaml");
    std::fs::write(&path, VALID).unwrap();
    let bundle = NodeArtifactsBundle::from_path(&path).unwrap();
    assert_eq!(bundle.nodes[0].identifier, "node-1");
    assert_eq!(
        bundle.nodes[0].files.get("/config.yaml").unwrap().mode,
        Some(0o644)
    );
    assert_eq!(bundle.shared_files.len(), 1);
}
