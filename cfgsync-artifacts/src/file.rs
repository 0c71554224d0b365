//! [`ArtifactFile`]: one file to deliver (path, content, optional mode and
//! encoding).

use std::borrow::Cow;

use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize};

use sha2::{Digest as _, Sha256};

use crate::{ArtifactDigest, Error, Result};

/// How an [`ArtifactFile`]'s `content` is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ArtifactEncoding {
    /// `content` is the file's text (the default when `encoding` is absent).
    Utf8,
    /// `content` is standard base64 (with padding) of the file's bytes.
    Base64,
}

/// One file to deliver to a node.
///
/// On the wire this is `{"path": "...", "content": "..."}`, exactly as the original
/// cfgsync sends it. The optional `mode` (unix permission bits) and `encoding` are
/// omitted when unset, and unknown fields from newer peers are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ArtifactFile {
    /// Where the file goes, e.g. `/config.yaml` or `deployment-settings.yaml`.
    pub path: String,
    /// The file's content: text, or base64 when `encoding` is `base64`.
    pub content: String,
    /// Unix permission bits, e.g. `0o600`. Accepts an integer or an octal string
    /// (`"0600"`) when read; written as an integer.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_mode"
    )]
    pub mode: Option<u32>,
    /// Content encoding; absent means UTF-8 text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<ArtifactEncoding>,
}

impl ArtifactFile {
    /// A text file.
    pub fn new(path: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            content: content.into(),
            mode: None,
            encoding: None,
        }
    }

    /// A binary file, carried as base64 on the wire.
    pub fn binary(path: impl Into<String>, bytes: &[u8]) -> Self {
        Self {
            path: path.into(),
            content: base64::engine::general_purpose::STANDARD.encode(bytes),
            mode: None,
            encoding: Some(ArtifactEncoding::Base64),
        }
    }

    /// Sets the unix permission bits the file is written with.
    #[must_use]
    pub fn with_mode(mut self, mode: u32) -> Self {
        self.mode = Some(mode);
        self
    }

    /// SHA-256 over a canonical, length-prefixed encoding of every field: path,
    /// content, mode and encoding.
    pub fn digest(&self) -> ArtifactDigest {
        let mut hasher = Sha256::new();
        hasher.update(b"cfgsync-artifact-file/v1\n");
        for field in [self.path.as_bytes(), self.content.as_bytes()] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        match self.mode {
            None => hasher.update([0]),
            Some(mode) => {
                hasher.update([1]);
                hasher.update(mode.to_be_bytes());
            }
        }
        hasher.update([match self.encoding {
            None => 0,
            Some(ArtifactEncoding::Utf8) => 1,
            Some(ArtifactEncoding::Base64) => 2,
        }]);
        ArtifactDigest(hasher.finalize().into())
    }

    /// The bytes to write: `content` itself, or its base64 decoding.
    pub fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match self.encoding {
            None | Some(ArtifactEncoding::Utf8) => Ok(Cow::Borrowed(self.content.as_bytes())),
            Some(ArtifactEncoding::Base64) => base64::engine::general_purpose::STANDARD
                .decode(&self.content)
                .map(Cow::Owned)
                .map_err(|source| Error::InvalidBase64 {
                    path: self.path.clone(),
                    source,
                }),
        }
    }
}

/// Highest value `mode` may take: permission bits plus setuid/setgid/sticky.
const MAX_MODE: u32 = 0o7777;

fn deserialize_mode<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Number(u32),
        Octal(String),
    }
    let mode = match Option::<Mode>::deserialize(deserializer)? {
        None => return Ok(None),
        Some(Mode::Number(n)) => n,
        Some(Mode::Octal(text)) => {
            let digits = text.trim_start_matches("0o");
            u32::from_str_radix(digits, 8).map_err(|_| {
                serde::de::Error::custom(format!(
                    "mode {text:?} is not an octal permission string such as \"0644\""
                ))
            })?
        }
    };
    if mode > MAX_MODE {
        return Err(serde::de::Error::custom(format!(
            "mode {mode:#o} is larger than {MAX_MODE:#o}"
        )));
    }
    Ok(Some(mode))
}
