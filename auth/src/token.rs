//! A token: its stored record, the secret handed out once, and the identity it proves.

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use serde::{Deserialize, Serialize};
use sluice_common::SluiceError;

/// What every token's text starts with (so a leaked one is recognisable, as GitHub's are).
pub(crate) const PREFIX: &str = "sluice_";

pub use sluice_common::tenancy::DEFAULT_TENANT;
use sluice_common::tenancy::Scope;

/// What an identity may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Right {
    /// Search, tail, patterns, SQL, the egress shapes, metrics.
    Read,
    /// Send records.
    Ingest,
    /// Operate: compaction and expiry on request, tokens.
    Admin,
}

impl Right {
    /// Parses `read`, `ingest` or `admin`.
    pub fn parse(text: &str) -> Result<Right, SluiceError> {
        match text.trim() {
            "read" => Ok(Right::Read),
            "ingest" => Ok(Right::Ingest),
            "admin" => Ok(Right::Admin),
            other => Err(SluiceError::invalid(format!(
                "unknown right {other:?}: use read, ingest or admin"
            ))),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Right::Read => "read",
            Right::Ingest => "ingest",
            Right::Admin => "admin",
        }
    }
}

/// A token as stored: everything but the secret, of which only the hash is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public id (hex), part of the token's text.
    pub id: String,
    /// What it is for, as its creator put it.
    pub name: String,
    /// The tenant whose records it reaches.
    pub tenant: String,
    /// Source id patterns (`*`, `?`) it is narrowed to; empty: every source of the tenant.
    #[serde(default)]
    pub sources: Vec<String>,
    /// Its rights.
    pub rights: Vec<Right>,
    /// When it was made, Unix seconds.
    pub created_unix_s: i64,
    /// When it stops working, Unix seconds; never if absent.
    #[serde(default)]
    pub expires_unix_s: Option<i64>,
    /// Hex SHA-256 of the token's whole text.
    pub sha256: String,
}

/// Who a request proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
    /// Its source patterns (empty: all of the tenant's).
    pub sources: Vec<String>,
    /// Its rights.
    pub rights: Vec<Right>,
}

impl Identity {
    /// The identity of a record.
    pub(crate) fn of(record: &TokenRecord) -> Identity {
        Identity {
            token_id: record.id.clone(),
            name: record.name.clone(),
            tenant: record.tenant.clone(),
            sources: record.sources.clone(),
            rights: record.rights.clone(),
        }
    }

    /// Whether it holds `right`.
    pub fn can(&self, right: Right) -> bool {
        self.rights.contains(&right)
    }

    /// The records it may read: `None` for an administrator of the default tenant that is not
    /// narrowed to some sources (the operator, who sees every tenant), otherwise its tenant's,
    /// of its sources.
    pub fn scope(&self) -> Option<Scope> {
        if self.tenant == DEFAULT_TENANT && self.sources.is_empty() && self.can(Right::Admin) {
            return None;
        }
        Some(Scope {
            tenant: self.tenant.clone(),
            sources: self.sources.clone(),
        })
    }

    /// Whether it may read `source_id` of its tenant.
    pub fn may_read_source(&self, source_id: &str) -> bool {
        self.sources.is_empty()
            || self
                .sources
                .iter()
                .any(|pattern| sluice_common::glob::matches(pattern, source_id))
    }
}

/// A new random token's id and text.
pub(crate) fn generate() -> Result<(String, String), SluiceError> {
    let random = ring::rand::SystemRandom::new();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    random
        .fill(&mut id)
        .and_then(|()| random.fill(&mut secret))
        .map_err(|_| SluiceError::internal("the system's random source failed"))?;
    let id = to_hex(&id);
    let text = format!(
        "{PREFIX}{id}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    Ok((id, text))
}

/// The id part of a token's text, if it has the shape of one.
pub(crate) fn id_of(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = !id.is_empty()
        && id.len() <= 32
        && id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && !secret.is_empty();
    well_formed.then_some(id)
}

/// Hex SHA-256 of `text`.
pub(crate) fn digest(text: &str) -> String {
    to_hex(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// Compares two digests in time independent of where they differ.
pub(crate) fn same_digest(left: &str, right: &str) -> bool {
    left.len() == right.len()
        && left
            .bytes()
            .zip(right.bytes())
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "{byte:02x}");
        text
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_carries_its_id_and_hashes_stably() {
        let (id, text) = generate().unwrap();
        assert_eq!(id.len(), 12);
        assert_eq!(id_of(&text), Some(id.as_str()));
        assert!(text.len() > 50, "{text}");
        assert!(same_digest(&digest(&text), &digest(&text)));
        let (_, other) = generate().unwrap();
        assert!(!same_digest(&digest(&text), &digest(&other)));
    }

    #[test]
    fn texts_without_the_shape_of_a_token_have_no_id() {
        for text in [
            "",
            "sluice_",
            "sluice__x",
            "sluice_zz_x",
            "bearer",
            "sluice_ab",
        ] {
            assert_eq!(id_of(text), None, "{text}");
        }
    }

    #[test]
    fn narrowed_identities_read_only_their_sources() {
        let identity = Identity {
            token_id: "a".into(),
            name: "dev".into(),
            tenant: DEFAULT_TENANT.into(),
            sources: vec!["web-*".into()],
            rights: vec![Right::Read],
        };
        assert!(identity.scope().is_some());
        assert!(identity.may_read_source("web-1"));
        assert!(!identity.may_read_source("db-1"));
        assert!(identity.can(Right::Read) && !identity.can(Right::Admin));
    }
}
