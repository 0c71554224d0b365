//! [`ArtifactSet`]: ordered files with lookup, merge, and the canonical SHA-256
//! [`ArtifactDigest`].

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::{ArtifactFile, Error, Result};

/// An ordered set of files with unique paths.
///
/// Serializes as a plain JSON array of [`ArtifactFile`]s; deserializing rejects a
/// list that names one path twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "Vec<ArtifactFile>", try_from = "Vec<ArtifactFile>")]
pub struct ArtifactSet {
    files: Vec<ArtifactFile>,
}

impl ArtifactSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a set, keeping the given order; fails on the first duplicate path.
    pub fn from_files(files: impl IntoIterator<Item = ArtifactFile>) -> Result<Self> {
        let files: Vec<ArtifactFile> = files.into_iter().collect();
        let mut seen = HashSet::with_capacity(files.len());
        for file in &files {
            if !seen.insert(file.path.as_str()) {
                return Err(Error::DuplicatePath {
                    path: file.path.clone(),
                });
            }
        }
        Ok(Self { files })
    }

    /// Appends a file; fails when the path is already present.
    pub fn push(&mut self, file: ArtifactFile) -> Result<()> {
        if self.contains(&file.path) {
            return Err(Error::DuplicatePath { path: file.path });
        }
        self.files.push(file);
        Ok(())
    }

    /// Inserts a file, replacing (in place) any file with the same path.
    /// Returns the replaced file.
    pub fn upsert(&mut self, file: ArtifactFile) -> Option<ArtifactFile> {
        match self.files.iter_mut().find(|f| f.path == file.path) {
            Some(slot) => Some(std::mem::replace(slot, file)),
            None => {
                self.files.push(file);
                None
            }
        }
    }

    /// The file at `path`, if any.
    pub fn get(&self, path: &str) -> Option<&ArtifactFile> {
        self.files.iter().find(|f| f.path == path)
    }

    /// Whether a file with `path` is present.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    /// Number of files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether the set holds no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files in order.
    pub fn iter(&self) -> std::slice::Iter<'_, ArtifactFile> {
        self.files.iter()
    }

    /// The files as a slice, in order.
    pub fn as_slice(&self) -> &[ArtifactFile] {
        &self.files
    }

    /// Consumes the set, returning its files in order.
    pub fn into_files(self) -> Vec<ArtifactFile> {
        self.files
    }

    /// A node's payload: this set's (the node's own) files first, then every file of
    /// `shared` whose path the node does not already have. The node's file wins a
    /// path clash.
    #[must_use]
    pub fn merged_with_shared(mut self, shared: &ArtifactSet) -> ArtifactSet {
        let own: HashSet<String> = self.files.iter().map(|f| f.path.clone()).collect();
        self.files.extend(
            shared
                .files
                .iter()
                .filter(|f| !own.contains(&f.path))
                .cloned(),
        );
        self
    }

    /// SHA-256 over the files' own digests ([`ArtifactFile::digest`]), in
    /// order. Equal sets give equal digests; any change of a path, a byte of
    /// content, a mode, an encoding or the order gives a different one. Being
    /// built from per-file digests, the digest of a merged set can be computed
    /// from digests computed once ([`ArtifactDigest::of_files`]) without reading
    /// the contents again.
    pub fn digest(&self) -> ArtifactDigest {
        ArtifactDigest::of_files(self.files.iter().map(ArtifactFile::digest))
    }
}

impl TryFrom<Vec<ArtifactFile>> for ArtifactSet {
    type Error = Error;

    fn try_from(files: Vec<ArtifactFile>) -> Result<Self> {
        Self::from_files(files)
    }
}

impl From<ArtifactSet> for Vec<ArtifactFile> {
    fn from(set: ArtifactSet) -> Self {
        set.files
    }
}

impl<'a> IntoIterator for &'a ArtifactSet {
    type Item = &'a ArtifactFile;
    type IntoIter = std::slice::Iter<'a, ArtifactFile>;

    fn into_iter(self) -> Self::IntoIter {
        self.files.iter()
    }
}

impl IntoIterator for ArtifactSet {
    type Item = ArtifactFile;
    type IntoIter = std::vec::IntoIter<ArtifactFile>;

    fn into_iter(self) -> Self::IntoIter {
        self.files.into_iter()
    }
}

/// A SHA-256 digest of an [`ArtifactSet`]; `Display` prints lowercase hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArtifactDigest(pub(crate) [u8; 32]);

impl ArtifactDigest {
    /// The digest of a set whose files have these digests, in order.
    pub fn of_files(files: impl IntoIterator<Item = ArtifactDigest>) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"cfgsync-artifact-set/v2\n");
        for file in files {
            hasher.update(file.0);
        }
        Self(hasher.finalize().into())
    }

    /// The raw digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ArtifactDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactDigest({})", self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ArtifactEncoding;

    fn set(files: &[(&str, &str)]) -> ArtifactSet {
        ArtifactSet::from_files(files.iter().map(|(p, c)| ArtifactFile::new(*p, *c))).unwrap()
    }

    #[test]
    fn wire_form_is_the_original_without_optional_fields() {
        let json = serde_json::to_string(&set(&[("/config.yaml", "id: 1\n")])).unwrap();
        assert_eq!(json, r#"[{"path":"/config.yaml","content":"id: 1\n"}]"#);
    }

    #[test]
    fn optional_fields_round_trip_and_unknown_fields_are_ignored() {
        let parsed: ArtifactSet = serde_json::from_str(
            r#"[{"path":"a","content":"aGk=","mode":"0600","encoding":"base64","owner":"x"}]"#,
        )
        .unwrap();
        let file = parsed.get("a").unwrap();
        assert_eq!(file.mode, Some(0o600));
        assert_eq!(&*file.bytes().unwrap(), b"hi");
        assert_eq!(
            serde_json::to_string(&parsed).unwrap(),
            r#"[{"path":"a","content":"aGk=","mode":384,"encoding":"base64"}]"#
        );
    }

    #[test]
    fn bad_mode_and_bad_base64_are_rejected() {
        let err = serde_json::from_str::<ArtifactFile>(r#"{"path":"a","content":"","mode":"rwx"}"#)
            .unwrap_err();
        assert!(err.to_string().contains("octal"), "{err}");
        let err = serde_json::from_str::<ArtifactFile>(r#"{"path":"a","content":"","mode":65535}"#)
            .unwrap_err();
        assert!(err.to_string().contains("larger"), "{err}");
        let file = ArtifactFile {
            encoding: Some(ArtifactEncoding::Base64),
            ..ArtifactFile::new("bin", "not base64!")
        };
        assert!(matches!(file.bytes(), Err(Error::InvalidBase64 { path, .. }) if path == "bin"));
    }

    #[test]
    fn duplicate_paths_are_detected_everywhere() {
        let err =
            ArtifactSet::from_files([ArtifactFile::new("a", "1"), ArtifactFile::new("a", "2")])
                .unwrap_err();
        assert!(matches!(err, Error::DuplicatePath { path } if path == "a"));
        let err = serde_json::from_str::<ArtifactSet>(
            r#"[{"path":"a","content":"1"},{"path":"a","content":"2"}]"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate artifact path"), "{err}");
        let mut s = set(&[("a", "1")]);
        assert!(s.push(ArtifactFile::new("a", "2")).is_err());
        assert_eq!(s.upsert(ArtifactFile::new("a", "2")).unwrap().content, "1");
        assert_eq!(s.get("a").unwrap().content, "2");
    }

    #[test]
    fn node_file_wins_over_shared_file() {
        let merged = set(&[("/config.yaml", "node"), ("own", "x")])
            .merged_with_shared(&set(&[("/config.yaml", "shared"), ("peers", "p")]));
        let paths: Vec<_> = merged.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["/config.yaml", "own", "peers"]);
        assert_eq!(merged.get("/config.yaml").unwrap().content, "node");
    }

    #[test]
    fn digest_is_stable_and_sensitive_to_every_field() {
        let base = set(&[("a", "1"), ("b", "2")]);
        assert_eq!(base.digest(), set(&[("a", "1"), ("b", "2")]).digest());
        assert_eq!(base.digest().to_hex().len(), 64);
        let variants = [
            set(&[("a", "1"), ("b", "3")]),
            set(&[("b", "2"), ("a", "1")]),
            set(&[("a", "1"), ("c", "2")]),
            set(&[("a", "1")]),
            // Length prefixes keep field boundaries apart.
            set(&[("a1", ""), ("b", "2")]),
            ArtifactSet::from_files([
                ArtifactFile::new("a", "1").with_mode(0o600),
                ArtifactFile::new("b", "2"),
            ])
            .unwrap(),
        ];
        for variant in variants {
            assert_ne!(base.digest(), variant.digest(), "{variant:?}");
        }
    }
}
