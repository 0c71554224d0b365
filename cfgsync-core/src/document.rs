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
        serde_yaml_ng::from_slice(bytes).map_err(|e| e.to_string())
    };
    parsed.map_err(|message| Error::ParseFile {
        path: path.to_path_buf(),
        what,
        message,
    })
}
