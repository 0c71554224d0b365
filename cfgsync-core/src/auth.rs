//! Bearer-token auth for the node and admin routes (off by default).
//!
//! - a **shared token** any node may use;
//! - **per-node tokens** `"<identifier>.<hex HMAC-SHA256(identifier)>"` under a
//!   server secret, each valid for one identifier only: node A's token on B's
//!   request is `403 forbidden`;
//! - an **admin token** for `POST /node/replace` (node tokens get `403` there).
//!
//! Missing or forged tokens are `401 unauthorized`. Secrets never appear in `Debug`.

use std::fmt;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use subtle::ConstantTimeEq;
use zeroize::Zeroize as _;

use crate::{Error, Result};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// A secret string (a token, a key):
///
/// - `Debug` prints `***`;
/// - `==` takes the same time whatever the secrets hold (SHA-256 of both,
///   compared in constant time, so not even the length leaks);
/// - the bytes are zeroed when it is dropped;
/// - it deserializes from a string (config files) but does not serialize at
///   all, so no config written back out, logged as JSON or shown on a status
///   page can carry it (structs holding one skip it when they serialize):
///
/// ```compile_fail
/// fn serializable<T: serde::Serialize>() {}
/// serializable::<cfgsync_core::Secret>();
/// ```
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares with `other` in constant time.
    pub fn ct_eq(&self, other: &str) -> bool {
        let mine = sha2::Sha256::digest(self.0.as_bytes());
        let theirs = sha2::Sha256::digest(other.as_bytes());
        mine[..].ct_eq(&theirs[..]).into()
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(&other.0)
    }
}

impl Eq for Secret {}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Which tokens a server accepts. All `None` (the default) means auth is off.
/// Serializing it writes no token: the secrets are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// A token every node may use.
    #[serde(default, skip_serializing)]
    pub shared_token: Option<Secret>,
    /// The secret per-node tokens are derived from.
    #[serde(default, skip_serializing)]
    pub node_secret: Option<Secret>,
    /// The token for admin routes (`/node/replace`).
    #[serde(default, skip_serializing)]
    pub admin_token: Option<Secret>,
}

/// What a request is allowed to do, as checked by [`AuthConfig::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access<'a> {
    /// A node route on behalf of this identifier.
    Node(&'a str),
    /// An admin route.
    Admin,
}

impl AuthConfig {
    /// Whether any token is configured.
    pub fn is_enabled(&self) -> bool {
        self.shared_token.is_some() || self.node_secret.is_some() || self.admin_token.is_some()
    }

    /// Sets the shared token.
    #[must_use]
    pub fn with_shared_token(mut self, token: impl Into<String>) -> Self {
        self.shared_token = Some(Secret::new(token));
        self
    }

    /// Sets the per-node token secret.
    #[must_use]
    pub fn with_node_secret(mut self, secret: impl Into<String>) -> Self {
        self.node_secret = Some(Secret::new(secret));
        self
    }

    /// Sets the admin token.
    #[must_use]
    pub fn with_admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(Secret::new(token));
        self
    }

    /// Checks a request's bearer token (`None` when the header is absent) for
    /// `access`: `Ok` when allowed, [`Error::Unauthorized`] (401) when missing or
    /// not valid, [`Error::Forbidden`] (403) when valid for something else.
    pub fn authorize(
        &self,
        token: Option<&str>,
        access: Access<'_>,
        route: &'static str,
    ) -> Result<()> {
        if !self.is_enabled() {
            return Ok(());
        }
        let unauthorized = |message: &str| Error::Unauthorized {
            route,
            message: message.to_owned(),
        };
        let forbidden = |message: String| Error::Forbidden { route, message };
        let Some(token) = token else {
            return Err(unauthorized(MISSING_TOKEN));
        };
        let is_admin = self.admin_token.as_ref().is_some_and(|t| t.ct_eq(token));
        let is_shared = self.shared_token.as_ref().is_some_and(|t| t.ct_eq(token));
        let node_of_token = self
            .node_secret
            .as_ref()
            .and_then(|s| verify_node_token(s, token));
        match access {
            Access::Admin if is_admin => Ok(()),
            Access::Admin if is_shared || node_of_token.is_some() => Err(forbidden(
                "this route needs the admin token; a node token is not enough".into(),
            )),
            Access::Node(_) if is_admin || is_shared => Ok(()),
            Access::Node(identifier) => match node_of_token {
                Some(owner) if owner == identifier => Ok(()),
                Some(owner) => Err(forbidden(format!(
                    "token belongs to node {owner:?}, not to {identifier:?}"
                ))),
                None => Err(unauthorized(&self.why_not_valid(token))),
            },
            Access::Admin => Err(unauthorized(&self.why_not_valid(token))),
        }
    }

    /// Why `token`, which matches nothing, is refused.
    fn why_not_valid(&self, token: &str) -> String {
        match token.rsplit_once('.') {
            Some((identifier, tag))
                if self.node_secret.is_some()
                    && tag.len() == 64
                    && tag.bytes().all(|b| b.is_ascii_hexdigit())
                    && crate::registration::validate_identifier(identifier).is_ok() =>
            {
                format!(
                    "the node token for {identifier:?} was not issued under this server's \
                     node secret (forged, or the secret was rotated)"
                )
            }
            _ => "the bearer token matches none of this server's tokens".into(),
        }
    }
}

/// The 401 message for a request without a token.
pub const MISSING_TOKEN: &str =
    "missing Authorization header (expected `Authorization: Bearer <token>`)";

/// What the `Authorization` header of a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BearerToken<'a> {
    /// No `Authorization` header.
    Missing,
    /// A header that is not `Bearer <token>`: why.
    Malformed(&'static str),
    /// The token.
    Token(&'a str),
}

impl<'a> BearerToken<'a> {
    /// Reads the `Authorization` header of `headers`.
    pub fn from_headers(headers: &'a http::HeaderMap) -> Self {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Self::Missing;
        };
        let Ok(value) = value.to_str() else {
            return Self::Malformed("the Authorization header is not visible ASCII");
        };
        let Some((scheme, token)) = value.trim().split_once(' ') else {
            return Self::Malformed("the Authorization header is not `Bearer <token>`");
        };
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Self::Malformed("the Authorization scheme is not Bearer");
        }
        let token = token.trim();
        if token.is_empty() {
            return Self::Malformed("the bearer token is empty");
        }
        Self::Token(token)
    }

    /// The token, if there is one.
    pub fn token(self) -> Option<&'a str> {
        match self {
            Self::Token(token) => Some(token),
            _ => None,
        }
    }
}

/// The per-node token for `identifier` under `secret`: `"<identifier>.<hex mac>"`.
pub fn node_token(secret: &Secret, identifier: &str) -> String {
    format!(
        "{identifier}.{}",
        hex::encode(mac(secret, identifier).finalize().into_bytes())
    )
}

fn mac(secret: &Secret, identifier: &str) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"cfgsync-node-token/v1\0");
    mac.update(identifier.as_bytes());
    mac
}

/// The identifier a valid per-node token was issued for, `None` for a forgery.
fn verify_node_token<'t>(secret: &Secret, token: &'t str) -> Option<&'t str> {
    let (identifier, tag) = token.rsplit_once('.')?;
    let tag = hex::decode(tag).ok()?;
    mac(secret, identifier).verify_slice(&tag).ok()?;
    Some(identifier)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_show_in_debug() {
        let config = AuthConfig::default()
            .with_shared_token("shared-s3cret")
            .with_node_secret("node-s3cret")
            .with_admin_token("admin-s3cret");
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
    }
}
