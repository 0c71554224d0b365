use crate::common::*;
use cfgsync_lablet::inspect::{InspectLimits, inspect_package};

fn inspect_bytes(
    bytes: &[u8],
    limits: &InspectLimits,
) -> Result<cfgsync_lablet::inspect::PackageInfo, cfgsync_lablet::inspect::InspectError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("package.zip");
    std::fs::write(&path, bytes).unwrap();
    inspect_package(&path, limits)
}

#[test]
fn inspect_extracts_adr025_fields_from_the_shallowest_entries() {
    let cml_deep = "deep: true\n";
    let bytes = zip_bytes(&[
        ("LAB/sub/cml.yaml", cml_deep.as_bytes()),
        ("LAB/cml.yaml", CML.as_bytes()),
        ("LAB/devices.json", DEVICES.as_bytes()),
        ("LAB/grading/grade.xml", b"<grade/>"),
        ("LAB/mosaic_meta.json", br#"{"Version": 3, "DatePublished": "2026-02-25", "InstanceName": "mosaic-prod", "FormId": "F-1"}"#),
    ]);
    let info = inspect_bytes(&bytes, &InspectLimits::default()).unwrap();
    assert_eq!(info.cml_yaml_path, "LAB/cml.yaml");
    assert_eq!(info.cml_yaml_content, CML);
    assert_eq!(info.cml_yaml_hash, sha256(CML.as_bytes()));
    assert_eq!(info.devices_json.as_deref(), Some(DEVICES));
    assert_eq!(
        info.grade_xml_path.as_deref(),
        Some("LAB/grading/grade.xml")
    );
    assert_eq!(
        info.mosaic_meta_path.as_deref(),
        Some("LAB/mosaic_meta.json")
    );
    assert_eq!(info.meta.version.as_deref(), Some("3"));
    assert_eq!(info.meta.date_published.as_deref(), Some("2026-02-25"));
    assert_eq!(info.meta.instance_name.as_deref(), Some("mosaic-prod"));
    assert_eq!(info.meta.form_id.as_deref(), Some("F-1"));
    assert_eq!(info.entries, 5);

    // cml.yml at the root, nothing optional
    let info = inspect_bytes(
        &zip_bytes(&[("cml.yml", b"a: 1\n")]),
        &InspectLimits::default(),
    )
    .unwrap();
    assert_eq!(info.cml_yaml_path, "cml.yml");
    assert_eq!(info.devices_json, None);
    assert_eq!(info.grade_xml_path, None);
    assert_eq!(info.meta, Default::default());
}

#[test]
fn hostile_packages_are_rejected_with_their_specific_reason() {
    let good = sample_package("1.0", "");
    let small = InspectLimits {
        max_entries: 3,
        ..InspectLimits::default()
    };
    let tiny_read = InspectLimits {
        max_read_entry_bytes: 16,
        ..InspectLimits::default()
    };
    let tiny_total = InspectLimits {
        max_total_uncompressed_bytes: 50,
        ..InspectLimits::default()
    };
    let tiny_directory = InspectLimits {
        max_central_directory_bytes: 100,
        ..InspectLimits::default()
    };
    // an EOCD claiming 60 000 entries (u16 field) is refused before parsing
    let mut lying_count = zip_bytes(&[("cml.yaml", CML.as_bytes())]);
    let eocd = lying_count.len() - 22;
    assert_eq!(&lying_count[eocd..eocd + 4], b"PK\x05\x06");
    lying_count[eocd + 8..eocd + 12].copy_from_slice(&[0x60, 0xEA, 0x60, 0xEA]);
    let few = InspectLimits {
        max_entries: 50_000,
        ..InspectLimits::default()
    };
    let mut duplicate = zip_bytes(&[("cml.yaml", CML.as_bytes()), ("cmX.yaml", CML.as_bytes())]);
    assert_eq!(patch(&mut duplicate, b"cmX.yaml", b"cml.yaml"), 2);
    let mut encrypted = zip_bytes(&[("cml.yaml", CML.as_bytes())]);
    mark_encrypted(&mut encrypted);
    let zeros = vec![0u8; 4 * 1024 * 1024];

    let cases: Vec<(&str, Vec<u8>, InspectLimits, &str)> = vec![
        (
            "html page",
            b"<!DOCTYPE html><html><body>Not found</body></html>".to_vec(),
            InspectLimits::default(),
            "not_a_zip",
        ),
        ("empty file", Vec::new(), InspectLimits::default(), "empty"),
        (
            "truncated",
            good[..good.len() / 2].to_vec(),
            InspectLimits::default(),
            "truncated",
        ),
        (
            "parent dir",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("../evil.sh", b"x")]),
            InspectLimits::default(),
            "unsafe_name",
        ),
        (
            "nested parent dir",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("a/../../evil", b"x")]),
            InspectLimits::default(),
            "unsafe_name",
        ),
        (
            "absolute",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("/etc/cron.d/x", b"x")]),
            InspectLimits::default(),
            "unsafe_name",
        ),
        (
            "drive letter",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("C:/Windows/x", b"x")]),
            InspectLimits::default(),
            "unsafe_name",
        ),
        (
            "backslash",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("..\\..\\evil", b"x")]),
            InspectLimits::default(),
            "unsafe_name",
        ),
        (
            "ratio bomb",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("big.bin", &zeros)]),
            InspectLimits::default(),
            "compression_ratio",
        ),
        (
            "declared total",
            zip_bytes(&[("cml.yaml", CML.as_bytes())]),
            tiny_total,
            "declared_too_large",
        ),
        (
            "entry over read cap",
            zip_bytes(&[("cml.yaml", CML.as_bytes())]),
            tiny_read,
            "entry_too_large",
        ),
        ("too many entries", good.clone(), small, "too_many_entries"),
        ("declared entry count", lying_count, few, "too_many_entries"),
        (
            "central directory size",
            good.clone(),
            tiny_directory,
            "central_directory_too_large",
        ),
        (
            "duplicate names",
            duplicate,
            InspectLimits::default(),
            "duplicate_names",
        ),
        (
            "symlink",
            symlink_zip(),
            InspectLimits::default(),
            "symlink",
        ),
        (
            "encrypted",
            encrypted,
            InspectLimits::default(),
            "encrypted",
        ),
        (
            "no cml.yaml",
            zip_bytes(&[("devices.json", DEVICES.as_bytes())]),
            InspectLimits::default(),
            "missing_cml_yaml",
        ),
        (
            "ambiguous cml",
            zip_bytes(&[
                ("a/cml.yaml", CML.as_bytes()),
                ("b/cml.yml", CML.as_bytes()),
            ]),
            InspectLimits::default(),
            "ambiguous_entry",
        ),
        (
            "non-utf8 cml",
            zip_bytes(&[("cml.yaml", &[0x61, 0x3a, 0x20, 0xff, 0xfe, 0x0a])]),
            InspectLimits::default(),
            "not_utf8",
        ),
        (
            "invalid yaml",
            zip_bytes(&[("cml.yaml", b"a: [unclosed\n")]),
            InspectLimits::default(),
            "invalid_yaml",
        ),
        (
            "invalid devices.json",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("devices.json", b"{nope")]),
            InspectLimits::default(),
            "invalid_json",
        ),
        (
            "invalid mosaic_meta.json",
            zip_bytes(&[
                ("cml.yaml", CML.as_bytes()),
                ("mosaic_meta.json", b"Version=1"),
            ]),
            InspectLimits::default(),
            "invalid_json",
        ),
        (
            "mosaic_meta.json not an object",
            zip_bytes(&[("cml.yaml", CML.as_bytes()), ("mosaic_meta.json", b"[1]")]),
            InspectLimits::default(),
            "meta_not_object",
        ),
    ];
    for (label, bytes, limits, code) in cases {
        match inspect_bytes(&bytes, &limits) {
            Ok(info) => panic!("{label}: accepted: {info:?}"),
            Err(err) => assert_eq!(err.code(), code, "{label}: got {err}"),
        }
    }
    // and the good one passes under default limits
    inspect_bytes(&good, &InspectLimits::default()).unwrap();
}

/// A zip holding `cml.yaml` stored (not deflated: big repetitive YAML would
/// trip the compression-ratio check first).
fn stored_cml(yaml: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    w.start_file("cml.yaml", stored).unwrap();
    w.write_all(yaml).unwrap();
    w.finish().unwrap().into_inner()
}

/// `levels` anchors, each a list of `width` aliases of the one before:
/// `width ^ levels` nodes once expanded.
fn alias_bomb(levels: usize, width: usize) -> String {
    let mut doc = format!("a0: &a0 [{}]\n", vec!["lol"; width].join(", "));
    for level in 1..levels {
        let refs = vec![format!("*a{}", level - 1); width].join(", ");
        doc.push_str(&format!("a{level}: &a{level} [{refs}]\n"));
    }
    doc
}

#[test]
fn hostile_cml_yaml_fails_at_inspect_with_a_clear_error_and_never_panics() {
    let limits = InspectLimits::default();
    let cap = usize::try_from(limits.max_read_entry_bytes).unwrap();
    let mut unterminated = b"a: \"".to_vec();
    unterminated.resize(cap - 1, b'x');
    let mut over_cap = b"a: ".to_vec();
    over_cap.resize(cap + 1, b'x');
    let mut block = String::new();
    for depth in 0..2_000 {
        block.push_str(&" ".repeat(depth));
        block.push_str("k:\n");
    }
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "alias bomb 9 x 10",
            alias_bomb(9, 10).into_bytes(),
            "invalid_yaml",
        ),
        (
            "alias bomb 3 x 1000",
            alias_bomb(3, 1_000).into_bytes(),
            "invalid_yaml",
        ),
        (
            "100,000-deep flow nesting",
            "[".repeat(100_000).into_bytes(),
            "invalid_yaml",
        ),
        (
            "2,000-deep block nesting",
            block.into_bytes(),
            "invalid_yaml",
        ),
        ("unterminated 8 MiB scalar", unterminated, "invalid_yaml"),
        (
            "8 MiB scalar over the read cap",
            over_cap,
            "entry_too_large",
        ),
        ("invalid UTF-8", b"name: caf\xe9\n".to_vec(), "not_utf8"),
        ("recursive alias", b"a: &a [*a]\n".to_vec(), "invalid_yaml"),
        ("tab indentation", b"a:\n\t- b\n".to_vec(), "invalid_yaml"),
    ];
    for (label, yaml, code) in cases {
        let err = inspect_bytes(&stored_cml(&yaml), &limits)
            .map(|info| info.cml_yaml_path)
            .expect_err(label);
        assert_eq!(err.code(), code, "{label}: {err}");
        let message = err.to_string();
        let expected_start = match code {
            "invalid_yaml" => "entry \"cml.yaml\" is not valid YAML: ",
            "not_utf8" => "entry \"cml.yaml\" is not valid UTF-8",
            _ => "entry \"cml.yaml\" is larger than the limit of 8388608 bytes",
        };
        assert!(
            message.starts_with(expected_start) && !message.contains('\n'),
            "{label}: {message}"
        );
    }

    // an 8 MiB plain scalar is valid YAML and is accepted as it is
    let mut big = b"a: ".to_vec();
    big.resize(cap, b'x');
    let info = inspect_bytes(&stored_cml(&big), &limits).unwrap();
    assert_eq!(info.cml_yaml_content.len(), cap);
    // and an empty or comment-only cml.yaml stays valid, as before
    for yaml in [&b""[..], b"# nothing yet\n"] {
        inspect_bytes(&stored_cml(yaml), &limits).unwrap();
    }
}
