//! Tenants: which tenant a record belongs to, and what part of the records a reader may see.
//!
//! A record's tenant travels in the reserved tag [`TENANT_TAG`], which only the agent writes:
//! its forwarder removes whatever a client put there and stamps the tenant of the
//! authenticated sender (`agent/src/forwarder.rs`). Records of the default tenant carry no such
//! tag, so a single-tenant installation stores nothing extra and records written before
//! tenants existed belong to the default tenant.

use sluice_proto::v2::Envelope;

/// The tag holding a record's tenant (absent for the default tenant).
pub const TENANT_TAG: &str = "sluice.tenant";

/// The tenant of records whose sender named none.
pub const DEFAULT_TENANT: &str = "default";

/// The tenant `envelope` belongs to.
pub fn tenant_of(envelope: &Envelope) -> &str {
    envelope
        .tags
        .get(TENANT_TAG)
        .map_or(DEFAULT_TENANT, String::as_str)
}

/// Makes `envelope` belong to `tenant`, whatever its tags said before (in either tag map).
pub fn stamp(envelope: &mut Envelope, tenant: &str) {
    envelope.deprecated_tags.remove(TENANT_TAG);
    if tenant == DEFAULT_TENANT {
        envelope.tags.remove(TENANT_TAG);
    } else if envelope.tags.get(TENANT_TAG).map(String::as_str) != Some(tenant) {
        envelope
            .tags
            .insert(TENANT_TAG.to_owned(), tenant.to_owned());
    }
}

/// Whether `tenant` is a name a tenant may have: 1 to 64 of ASCII letters, digits, `-`, `_`
/// and `.` (it goes into queries of every engine, so nothing that needs quoting).
pub fn valid_name(tenant: &str) -> bool {
    (1..=64).contains(&tenant.len())
        && tenant
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'))
}

/// The records a reader may see: one tenant's, optionally only those of some sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The tenant.
    pub tenant: String,
    /// Source id patterns (`*`, `?`; see [`crate::glob`]); all of the tenant's when empty.
    pub sources: Vec<String>,
}

impl Scope {
    /// All of `tenant`'s records.
    pub fn tenant(tenant: impl Into<String>) -> Scope {
        Scope {
            tenant: tenant.into(),
            sources: Vec::new(),
        }
    }

    /// Whether a record of `tenant` and `source_id` is in the scope.
    pub fn admits(&self, tenant: &str, source_id: &str) -> bool {
        tenant == self.tenant && self.admits_source(source_id)
    }

    /// Whether `source_id` is one of the scope's sources.
    pub fn admits_source(&self, source_id: &str) -> bool {
        self.sources.is_empty()
            || self
                .sources
                .iter()
                .any(|pattern| crate::glob::matches(pattern, source_id))
    }

    /// Whether `envelope` is in the scope.
    pub fn admits_envelope(&self, envelope: &Envelope) -> bool {
        self.admits(tenant_of(envelope), &envelope.source_id)
    }
}

/// Whether `envelope` is visible to a reader of `scope` (`None`: every tenant's records).
pub fn visible(scope: Option<&Scope>, envelope: &Envelope) -> bool {
    scope.is_none_or(|scope| scope.admits_envelope(envelope))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stamping_replaces_what_a_client_claimed() {
        let mut envelope = Envelope::default();
        envelope
            .tags
            .insert(TENANT_TAG.to_owned(), "someone-else".to_owned());
        envelope.deprecated_tags.insert(
            TENANT_TAG.to_owned(),
            sluice_proto::v2::Value {
                data: Some(sluice_proto::v2::value::Data::Text("x".into())),
            },
        );
        stamp(&mut envelope, DEFAULT_TENANT);
        assert_eq!(tenant_of(&envelope), DEFAULT_TENANT);
        assert!(envelope.tags.is_empty() && envelope.deprecated_tags.is_empty());
        stamp(&mut envelope, "acme");
        assert_eq!(tenant_of(&envelope), "acme");
    }

    #[test]
    fn a_scope_admits_its_tenant_and_sources_only() {
        let scope = Scope {
            tenant: "acme".into(),
            sources: vec!["web-*".into()],
        };
        assert!(scope.admits("acme", "web-1"));
        assert!(!scope.admits("acme", "db-1"));
        assert!(!scope.admits("other", "web-1"));
        assert!(Scope::tenant("acme").admits("acme", "db-1"));
    }

    #[test]
    fn tenant_names_need_no_quoting() {
        assert!(valid_name("acme-eu_1.prod"));
        for bad in ["", "a b", "a'b", "a\"", "ü", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
