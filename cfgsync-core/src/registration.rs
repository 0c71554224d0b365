//! [`NodeRegistration`] as nodes send it, identifier and metadata validation
//! and limits.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Longest identifier accepted, in bytes (a full DNS name).
pub const MAX_IDENTIFIER_LEN: usize = 253;

/// Default cap on a registration's metadata, serialized as JSON.
pub const DEFAULT_MAX_METADATA_BYTES: usize = 64 * 1024;

/// What a node sends to `POST /register` and `POST /node`:
/// `{"identifier": "node-1", "ip": "10.0.0.5", "metadata": {...}}`.
///
/// `metadata` is opaque to cfgsync, interpreted only by the adapter, and omitted
/// from the JSON when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRegistration {
    /// Stable node identifier.
    pub identifier: String,
    /// The node's address (IPv4 as in the original; IPv6 accepted too).
    pub ip: IpAddr,
    /// Application metadata, if any.
    #[serde(default, skip_serializing_if = "RegistrationPayload::is_empty")]
    pub metadata: RegistrationPayload,
}

impl NodeRegistration {
    /// A registration without metadata.
    pub fn new(identifier: impl Into<String>, ip: IpAddr) -> Self {
        Self {
            identifier: identifier.into(),
            ip,
            metadata: RegistrationPayload::default(),
        }
    }

    /// Attaches typed application metadata.
    pub fn with_metadata<T: Serialize + ?Sized>(mut self, metadata: &T) -> Result<Self> {
        self.metadata =
            RegistrationPayload::from_typed(metadata).map_err(|source| Error::Metadata {
                identifier: self.identifier.clone(),
                action: "cannot be encoded as JSON",
                source,
            })?;
        Ok(self)
    }

    /// The metadata decoded as `T`; `Ok(None)` when the node sent none.
    pub fn metadata<T: DeserializeOwned>(&self) -> Result<Option<T>> {
        self.metadata.decode().map_err(|source| Error::Metadata {
            identifier: self.identifier.clone(),
            action: "does not match the expected type",
            source,
        })
    }

    /// Checks the identifier's syntax and the metadata's size.
    pub fn validate(&self, max_metadata_bytes: usize) -> Result<()> {
        validate_identifier(&self.identifier)?;
        let size = self.metadata.encoded_len();
        if size > max_metadata_bytes {
            return Err(Error::Invalid {
                field: "metadata",
                reason: format!(
                    "{size} bytes as JSON, more than the limit of {max_metadata_bytes} bytes"
                ),
            });
        }
        Ok(())
    }
}

/// The characters an identifier may hold, as documented: ASCII letters and
/// digits and `.` `_` `-` `:` `@`.
pub const IDENTIFIER_CHARS: &str = "A-Z a-z 0-9 . _ - : @";

/// Whether `c` may appear in an identifier (see [`IDENTIFIER_CHARS`]).
pub fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '@')
}

/// The one rule for node identifiers, applied by the server at registration
/// and on every node route, by `cfgsync-server node-token`, by bundle and
/// artifacts files, and by the client before it sends anything: 1 to
/// [`MAX_IDENTIFIER_LEN`] characters from [`IDENTIFIER_CHARS`], and not `.`
/// or `..`.
///
/// Every such identifier is a valid node name, can never act as a path, and
/// its per-node token (`<identifier>.<hex>`) can travel in an
/// `Authorization: Bearer` header — so every identifier that passes can
/// authenticate.
pub fn validate_identifier(identifier: &str) -> Result<()> {
    let invalid = |reason: String| Error::Invalid {
        field: "identifier",
        reason,
    };
    if identifier.is_empty() {
        return Err(invalid("must not be empty".into()));
    }
    if identifier.len() > MAX_IDENTIFIER_LEN {
        return Err(invalid(format!(
            "is {} bytes long, more than the limit of {MAX_IDENTIFIER_LEN}",
            identifier.len()
        )));
    }
    if let Some(c) = identifier.chars().find(|c| !is_identifier_char(*c)) {
        let what = if c.is_control() {
            "the control character"
        } else if matches!(c, '/' | '\\') {
            "the path separator"
        } else if !c.is_ascii() {
            "the non-ASCII character"
        } else {
            "the character"
        };
        let shown: String = identifier
            .chars()
            .take(64)
            .flat_map(char::escape_default)
            .collect();
        return Err(invalid(format!(
            "\"{shown}\" contains {what} {:?}; identifiers may hold only {IDENTIFIER_CHARS}",
            c.escape_default().to_string()
        )));
    }
    if identifier == "." || identifier == ".." {
        return Err(invalid(format!("{identifier:?} is not a node name")));
    }
    Ok(())
}

/// A node's opaque application metadata, carried as JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RegistrationPayload(serde_json::Value);

impl RegistrationPayload {
    /// Wraps an existing JSON value.
    pub fn new(value: serde_json::Value) -> Self {
        Self(value)
    }

    /// Encodes a typed value.
    pub fn from_typed<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Self> {
        serde_json::to_value(value).map(Self)
    }

    /// Decodes into `T`; `Ok(None)` when there is no metadata.
    pub fn decode<T: DeserializeOwned>(&self) -> serde_json::Result<Option<T>> {
        if self.is_empty() {
            return Ok(None);
        }
        T::deserialize(&self.0).map(Some)
    }

    /// Whether there is no metadata (JSON `null`).
    pub fn is_empty(&self) -> bool {
        self.0.is_null()
    }

    /// The raw JSON value.
    pub fn as_value(&self) -> &serde_json::Value {
        &self.0
    }

    fn encoded_len(&self) -> usize {
        struct Counter(usize);
        impl std::io::Write for Counter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut counter = Counter(0);
        // Writing a `Value` into a counter cannot fail.
        let _ = serde_json::to_writer(&mut counter, &self.0);
        counter.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Ports {
        network_port: u16,
    }

    #[test]
    fn typed_metadata_round_trips_and_mismatch_is_typed() {
        let reg = NodeRegistration::new("node-1", "10.0.0.5".parse().unwrap())
            .with_metadata(&Ports { network_port: 3000 })
            .unwrap();
        assert_eq!(
            reg.metadata::<Ports>().unwrap(),
            Some(Ports { network_port: 3000 })
        );
        assert!(matches!(
            reg.metadata::<Vec<u8>>(),
            Err(Error::Metadata { identifier, .. }) if identifier == "node-1"
        ));
        let bare = NodeRegistration::new("n", "::1".parse().unwrap());
        assert_eq!(bare.metadata::<Ports>().unwrap(), None);
        assert_eq!(
            serde_json::to_string(&bare).unwrap(),
            r#"{"identifier":"n","ip":"::1"}"#
        );
    }

    #[test]
    fn identifiers_that_could_act_as_paths_are_refused() {
        for bad in [
            "",
            "a/b",
            "a\\b",
            "a\nb",
            "a\u{7f}",
            ".",
            "..",
            "ñodo",
            "node 1",
            "node\"1",
            "a,b",
            &"x".repeat(254),
        ] {
            assert!(
                matches!(
                    validate_identifier(bad),
                    Err(Error::Invalid {
                        field: "identifier",
                        ..
                    })
                ),
                "{bad:?} accepted"
            );
        }
        for good in [
            "node-1",
            "a.b",
            "nodo_7",
            "..hidden",
            "svc@host:42",
            &"x".repeat(253),
        ] {
            validate_identifier(good).unwrap();
        }
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let reg = NodeRegistration::new("n", "10.0.0.1".parse().unwrap())
            .with_metadata(&"x".repeat(100))
            .unwrap();
        reg.validate(102).unwrap();
        assert!(matches!(
            reg.validate(101),
            Err(Error::Invalid {
                field: "metadata",
                ..
            })
        ));
    }
}
