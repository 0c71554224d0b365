//! Bearer-token auth for the node and admin routes (off by default).
//!
//! - a **shared token** any node may use;
//! - **per-node tokens** `"<identifier>.<hex HMAC-SHA256(identifier)>"` under a
//!   server secret, each valid for one identifier only: node A's token on B's
//!   request is `403 forbidden`;
//! - **scoped per-node tokens** `"<identifier>~<scope>.<hex HMAC-SHA256(identifier,
//!   scope)>"` under the same secret, valid for one identifier *and* one value of
//!   the registration metadata key the app names ([`AuthConfig::scope_key`], e.g.
//!   `tenant`): the node may register and fetch only with that value there; any
//!   other is `403 forbidden`. With [`AuthConfig::require_scoped_tokens`] the
//!   unscoped per-node tokens are refused (`403`); by default both are accepted,
//!   so servers that never set a scope key behave as before;
//! - an **admin token** for `POST /node/replace` (node tokens get `403` there).
//!
//! Missing or forged tokens are `401 unauthorized`. Secrets never appear in `Debug`.

use std::fmt;

use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use subtle::ConstantTimeEq;
use zeroize::Zeroize as _;

use crate::{Error, NodeRegistration, Result};

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
    /// The registration metadata key whose (string) value scopes per-node
    /// tokens, e.g. `tenant`: a token minted with [`scoped_node_token`] is then
    /// valid only for registrations whose metadata holds its scope under this
    /// key. `None` (the default): scoped tokens are refused, unscoped ones work
    /// as always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_key: Option<String>,
    /// With [`scope_key`](Self::scope_key) set, refuse unscoped per-node
    /// tokens (`403`), so every node is held to its scope. Default `false`.
    /// The shared and admin tokens are never scoped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_scoped_tokens: bool,
}

/// What a request is allowed to do, as checked by [`AuthConfig::authorize`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Access<'a> {
    /// A node route on behalf of this identifier, naming no scope: a scoped
    /// token is refused for it.
    Node(&'a str),
    /// A node route on behalf of `identifier` whose registration names `scope`
    /// under [`AuthConfig::scope_key`] (see [`AuthConfig::scope_of`]).
    ScopedNode {
        /// The node.
        identifier: &'a str,
        /// The value the registration holds under the scope key, if any.
        scope: Option<&'a str>,
    },
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

    /// Scopes per-node tokens by the registration metadata key `key`;
    /// `required` refuses unscoped per-node tokens.
    #[must_use]
    pub fn with_scope_key(mut self, key: impl Into<String>, required: bool) -> Self {
        self.scope_key = Some(key.into());
        self.require_scoped_tokens = required;
        self
    }

    /// Whether per-node tokens are checked against a scope: a node secret and
    /// a scope key are both set.
    pub fn scopes_node_tokens(&self) -> bool {
        self.node_secret.is_some() && self.scope_key.is_some()
    }

    /// The value `registration`'s metadata holds under the scope key: `None`
    /// without a scope key, without that field, or when it is not a string.
    pub fn scope_of<'r>(&self, registration: &'r NodeRegistration) -> Option<&'r str> {
        let key = self.scope_key.as_deref()?;
        registration.metadata.as_value().get(key)?.as_str()
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
        let (identifier, requested) = match access {
            Access::Admin if is_admin => return Ok(()),
            Access::Admin if is_shared || node_of_token.is_some() => {
                return Err(forbidden(
                    "this route needs the admin token; a node token is not enough".into(),
                ));
            }
            Access::Admin => return Err(unauthorized(&self.why_not_valid(token))),
            Access::Node(_) | Access::ScopedNode { .. } if is_admin || is_shared => return Ok(()),
            Access::Node(identifier) => (identifier, None),
            Access::ScopedNode { identifier, scope } => (identifier, scope),
        };
        let Some(claims) = node_of_token else {
            return Err(unauthorized(&self.why_not_valid(token)));
        };
        if claims.identifier != identifier {
            return Err(forbidden(format!(
                "token belongs to node {:?}, not to {identifier:?}",
                claims.identifier
            )));
        }
        self.check_scope(identifier, claims.scope, requested)
            .map_err(forbidden)
    }

    /// Whether a per-node token of `identifier` scoped to `scope` may act for
    /// a registration naming `requested`; the refusal says why.
    fn check_scope(
        &self,
        identifier: &str,
        scope: Option<&str>,
        requested: Option<&str>,
    ) -> std::result::Result<(), String> {
        match (scope, self.scope_key.as_deref()) {
            (None, Some(key)) if self.require_scoped_tokens => Err(format!(
                "the token of node {identifier:?} is not scoped, and this server accepts only \
                 per-node tokens scoped to a {key}; ask the operator for a token scoped to \
                 this node's {key}"
            )),
            (None, _) => Ok(()),
            (Some(scope), None) => Err(format!(
                "the token of node {identifier:?} is scoped to {scope:?}, but this server \
                 does not scope node tokens (no scope key is configured)"
            )),
            (Some(scope), Some(key)) => match requested {
                Some(requested) if requested == scope => Ok(()),
                Some(requested) => Err(format!(
                    "the token of node {identifier:?} is scoped to {key} {scope:?}, \
                     not to {key} {requested:?}"
                )),
                None => Err(format!(
                    "the token of node {identifier:?} is scoped to {key} {scope:?}, \
                     and the registration names no {key} (expected metadata \
                     {{\"{key}\": \"{scope}\"}})"
                )),
            },
        }
    }

    /// Why `token`, which matches nothing, is refused.
    fn why_not_valid(&self, token: &str) -> String {
        const NONE: &str = "the bearer token matches none of this server's tokens";
        let Some((head, tag)) = token.rsplit_once('.') else {
            return NONE.into();
        };
        let (identifier, scope) = match head.split_once(SCOPE_SEPARATOR) {
            Some((identifier, scope)) => (identifier, Some(scope)),
            None => (head, None),
        };
        let node_token_shaped = self.node_secret.is_some()
            && tag.len() == 64
            && tag.bytes().all(|b| b.is_ascii_hexdigit())
            && crate::registration::validate_identifier(identifier).is_ok();
        if !node_token_shaped {
            return NONE.into();
        }
        let scoped = scope.map_or_else(String::new, |scope| format!(" scoped to {scope:?}"));
        format!(
            "the node token for {identifier:?}{scoped} was not issued under this server's \
             node secret (forged, or the secret was rotated)"
        )
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

/// Separates the identifier from the scope in a scoped per-node token; never
/// part of an identifier (see [`crate::IDENTIFIER_CHARS`]).
pub const SCOPE_SEPARATOR: char = '~';

/// The per-node token for `identifier` under `secret`: `"<identifier>.<hex mac>"`.
pub fn node_token(secret: &Secret, identifier: &str) -> String {
    format!(
        "{identifier}.{}",
        hex::encode(mac(secret, identifier, None).finalize().into_bytes())
    )
}

/// The per-node token for `identifier` scoped to `scope` (the value the node
/// registers under [`AuthConfig::scope_key`]):
/// `"<identifier>~<scope>.<hex mac>"`, the MAC over both. Give it a valid
/// identifier and a scope that passes [`crate::validate_identifier`] too (the
/// `node-token` commands check both), so it travels in a bearer header.
pub fn scoped_node_token(secret: &Secret, identifier: &str, scope: &str) -> String {
    format!(
        "{identifier}{SCOPE_SEPARATOR}{scope}.{}",
        hex::encode(mac(secret, identifier, Some(scope)).finalize().into_bytes())
    )
}

fn mac(secret: &Secret, identifier: &str, scope: Option<&str>) -> HmacSha256 {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    match scope {
        None => {
            mac.update(b"cfgsync-node-token/v1\0");
            mac.update(identifier.as_bytes());
        }
        // Another domain, and NUL (in no identifier) between the two parts:
        // no scoped token is ever an unscoped one, nor scoped otherwise.
        Some(scope) => {
            mac.update(b"cfgsync-scoped-node-token/v1\0");
            mac.update(identifier.as_bytes());
            mac.update(b"\0");
            mac.update(scope.as_bytes());
        }
    }
    mac
}

/// Whom a valid per-node token was issued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NodeClaims<'t> {
    identifier: &'t str,
    scope: Option<&'t str>,
}

/// What a valid per-node token was issued for, `None` for a forgery.
fn verify_node_token<'t>(secret: &Secret, token: &'t str) -> Option<NodeClaims<'t>> {
    let (head, tag) = token.rsplit_once('.')?;
    let tag = hex::decode(tag).ok()?;
    let (identifier, scope) = match head.split_once(SCOPE_SEPARATOR) {
        Some((identifier, scope)) => (identifier, Some(scope)),
        None => (head, None),
    };
    mac(secret, identifier, scope).verify_slice(&tag).ok()?;
    Some(NodeClaims { identifier, scope })
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

    /// Both formats pinned by independent HMAC vectors (Python's `hmac`): a
    /// token minted by an older server keeps working, and the scoped one is
    /// a documented derivation an operator can reproduce.
    #[test]
    fn token_formats_are_pinned() {
        let secret = Secret::new("s3cret");
        assert_eq!(
            node_token(&secret, "node-1"),
            "node-1.fc1433b25baf3c5be93b5fbf749163dd230829c8d10bbd98a9e80afeab35ca77"
        );
        assert_eq!(
            scoped_node_token(&secret, "node-1", "LAB-1.1.1"),
            "node-1~LAB-1.1.1.fa2a6d133c2cb7d46c129022da395d51eb51290aae09ab9723eb1db0fef8e6d7"
        );
    }

    fn forbidden_message(result: Result<()>) -> String {
        match result {
            Err(Error::Forbidden { message, .. }) => message,
            other => panic!("expected 403, got {other:?}"),
        }
    }

    #[test]
    fn scoped_tokens_act_only_for_their_scope() {
        let secret = Secret::new("s3cret");
        let scoped = scoped_node_token(&secret, "node-1", "LAB-1");
        let unscoped = node_token(&secret, "node-1");
        let node = |scope| Access::ScopedNode {
            identifier: "node-1",
            scope,
        };
        let optional = AuthConfig::default()
            .with_node_secret("s3cret")
            .with_shared_token("shared")
            .with_scope_key("lablet", false);
        optional
            .authorize(Some(&scoped), node(Some("LAB-1")), "/register")
            .unwrap();
        let why =
            forbidden_message(optional.authorize(Some(&scoped), node(Some("LAB-2")), "/register"));
        assert_eq!(
            why,
            "the token of node \"node-1\" is scoped to lablet \"LAB-1\", not to lablet \"LAB-2\""
        );
        let why = forbidden_message(optional.authorize(Some(&scoped), node(None), "/node"));
        assert!(why.contains(r#"{"lablet": "LAB-1"}"#), "{why}");
        // Not a way around the identifier binding, nor into admin routes.
        let other = Access::ScopedNode {
            identifier: "node-2",
            scope: Some("LAB-1"),
        };
        assert!(
            forbidden_message(optional.authorize(Some(&scoped), other, "/node")).contains("node-2")
        );
        forbidden_message(optional.authorize(Some(&scoped), Access::Admin, "/node/replace"));
        // A scope in the token cannot be edited: the MAC covers it.
        let edited = scoped.replacen("LAB-1", "LAB-2", 1);
        assert!(matches!(
            optional.authorize(Some(&edited), node(Some("LAB-2")), "/node"),
            Err(Error::Unauthorized { message, .. }) if message.contains("scoped to \"LAB-2\"")
        ));
        // Unscoped node tokens and the shared token: as before, any scope.
        optional
            .authorize(Some(&unscoped), node(Some("LAB-2")), "/register")
            .unwrap();
        optional
            .authorize(Some("shared"), node(Some("LAB-2")), "/register")
            .unwrap();

        let required = optional.clone().with_scope_key("lablet", true);
        let why = forbidden_message(required.authorize(
            Some(&unscoped),
            node(Some("LAB-1")),
            "/register",
        ));
        assert!(why.contains("not scoped"), "{why}");
        required
            .authorize(Some(&scoped), node(Some("LAB-1")), "/register")
            .unwrap();
        required
            .authorize(Some("shared"), node(Some("LAB-2")), "/register")
            .unwrap();

        // Without a scope key (every existing server): scoped tokens are
        // refused, unscoped ones work unchanged.
        let plain = AuthConfig::default().with_node_secret("s3cret");
        plain
            .authorize(Some(&unscoped), Access::Node("node-1"), "/node")
            .unwrap();
        let why = forbidden_message(plain.authorize(Some(&scoped), node(Some("LAB-1")), "/node"));
        assert!(why.contains("does not scope"), "{why}");
    }

    #[test]
    fn the_scope_is_read_from_the_metadata_key() {
        let auth = AuthConfig::default().with_scope_key("lablet", true);
        let reg = |metadata: serde_json::Value| {
            NodeRegistration::new("n", "10.0.0.1".parse().unwrap())
                .with_metadata(&metadata)
                .unwrap()
        };
        let with = reg(serde_json::json!({"lablet": "LAB-1", "rack": 7}));
        assert_eq!(auth.scope_of(&with), Some("LAB-1"));
        assert_eq!(auth.scope_of(&reg(serde_json::json!({"lablet": 7}))), None);
        assert_eq!(auth.scope_of(&reg(serde_json::json!(["lablet"]))), None);
        assert_eq!(AuthConfig::default().scope_of(&with), None);
    }
}
