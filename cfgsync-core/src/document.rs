//! The file shapes a server loads its fixed config from, YAML or JSON.

use std::collections::BTreeMap;
use std::path::Path;

use cfgsync_artifacts::ArtifactSet;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A precomputed bundle, the original's `static`/`bundle` mode file:
///
/// ```yaml
/// nodes:
///   - identifier: node-1
///     files: [{path: /config.yaml, content: "id: 1\n"}]
/// shared_files:
///   - {path: /peers.txt, content: "..."}
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeArtifactsBundle {
    /// Per-node files.
    #[serde(default)]
    pub nodes: Vec<NodeArtifactsBundleEntry>,
    /// Files merged into every node's payload (a node's own file wins a clash).
    #[serde(default)]
    pub shared_files: ArtifactSet,
}

/// One node of a [`NodeArtifactsBundle`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeArtifactsBundleEntry {
    /// The node.
    pub identifier: String,
    /// Its own files.
    #[serde(default)]
    pub files: ArtifactSet,
}

/// The original's `registration` mode file: nodes keyed by identifier, served
/// once they registered.
///
/// ```yaml
/// nodes:
///   node-1:
///     files: [{path: /config.yaml, content: "id: 1\n"}]
/// shared:
///   files: [{path: /peers.txt, content: "..."}]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrationArtifacts {
    /// Per-node files, by identifier.
    #[serde(default)]
    pub nodes: BTreeMap<String, FileList>,
    /// Files merged into every node's payload.
    #[serde(default)]
    pub shared: FileList,
}

/// `{files: [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileList {
    /// The files.
    #[serde(default)]
    pub files: ArtifactSet,
}

impl NodeArtifactsBundle {
    /// Reads a bundle file: JSON when the name ends in `.json`, YAML otherwise.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        read_document(path.as_ref(), "cfgsync bundle")
    }
}

impl RegistrationArtifacts {
    /// Reads an artifacts file: JSON when the name ends in `.json`, YAML otherwise.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self> {
        read_document(path.as_ref(), "cfgsync artifacts file")
    }
}

/// Reads and parses a YAML or JSON document (by extension), with errors naming
/// the file and the parser's position.
pub fn read_document<T: DeserializeOwned>(path: &Path, what: &'static str) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|source| Error::ReadFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_document(path, &bytes, what)
}

/// Parses the bytes of `path` as [`read_document`] does: JSON when the name
/// ends in `.json`, YAML otherwise; errors name the file and the position.
pub fn parse_document<T: DeserializeOwned>(
    path: &Path,
    bytes: &[u8],
    what: &'static str,
) -> Result<T> {
    let parsed = if path.extension().is_some_and(|ext| ext == "json") {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    } else {
        std::str::from_utf8(bytes)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(parse_yaml)
    };
    parsed.map_err(|message| Error::ParseFile {
        path: path.to_path_buf(),
        what,
        message,
    })
}

/// Fewest YAML nodes a document may always hold (serde-saphyr's default).
const MIN_YAML_NODES: usize = 250_000;

/// Parses YAML with the workspace's parser: `serde-saphyr`, pure Rust and
/// panic-free, under a budget that keeps the work linear in the input: at
/// most one node per input byte (at least 250,000) and two events per byte
/// (at least 1,000,000) — so alias bombs ("billion laughs") are refused
/// after expanding little more than the document itself — and nesting at
/// most 64 deep. A document without aliases never comes near the budget
/// (each node takes at least one byte). The error is one line with its line
/// and column.
pub fn parse_yaml<T: DeserializeOwned>(text: &str) -> std::result::Result<T, String> {
    let nodes = text.len().max(MIN_YAML_NODES);
    let budget = serde_saphyr::budget! {
        max_events: nodes.saturating_mul(4),
        max_nodes: nodes,
    };
    let options = serde_saphyr::options! {
        budget: budget,
    };
    // serde_path_to_error tracks the key path the error sits at, so the
    // message says where it belongs (`source: missing field ...`).
    let path = std::cell::RefCell::new(None::<String>);
    serde_saphyr::with_deserializer_from_str_with_options(text, options, |de| {
        serde_path_to_error::deserialize(de).map_err(|error| {
            let at = error.path().to_string();
            *path.borrow_mut() = (at != ".").then_some(at);
            error.into_inner()
        })
    })
    .map_err(|error| {
        let rendered = error.render_with_options(serde_saphyr::render_options! {
            snippets: serde_saphyr::SnippetMode::Off,
        });
        let line = rendered.lines().next().unwrap_or("invalid YAML");
        let line = line.trim_start_matches("error: ");
        match path.into_inner() {
            Some(at) => format!("at `{at}`: {line}"),
            None => line.to_owned(),
        }
    })
}
