//! The token check of the push sources that take credentials (`_bulk`, OTLP): a sender
//! proves itself with a Sluice token holding the ingest right.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_auth::{Authenticator, Right, TokenFile};
use sluice_common::SluiceError;

use crate::forwarder::Tenancy;

/// Why a sender was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No valid token (missing, malformed, unknown, expired): what to tell the sender.
    Unauthenticated(&'static str),
    /// A valid token without the ingest right: its id.
    Forbidden(String),
}

impl Refused {
    /// The refusal's reason label in `sluice_agent_source_records_rejected_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Refused::Unauthenticated(_) => "unauthenticated",
            Refused::Forbidden(_) => "forbidden",
        }
    }

    /// What the sender is told.
    pub(crate) fn message(&self) -> String {
        match self {
            Refused::Unauthenticated(message) => (*message).to_owned(),
            Refused::Forbidden(id) => format!("token {id} lacks the ingest right"),
        }
    }
}

/// The authenticator of a source's `tokens_file`, re-reading it in the background; none when
/// the source takes anyone.
pub(crate) fn open(
    tokens_file: Option<&PathBuf>,
) -> Result<Option<Arc<Authenticator>>, SluiceError> {
    let Some(path) = tokens_file else {
        return Ok(None);
    };
    let authenticator = Authenticator::open(TokenFile::at(path.clone()))?;
    authenticator.spawn_reloader();
    Ok(Some(authenticator))
}

/// Checks an `Authorization` value (or gRPC `authorization` metadata) for the ingest right;
/// the sender's records belong to the token's tenant (to the default tenant when the source
/// takes anyone).
pub(crate) fn check(
    authenticator: Option<&Authenticator>,
    authorization: Option<&str>,
    peer: &str,
) -> Result<Tenancy, Refused> {
    let Some(authenticator) = authenticator else {
        return Ok(Tenancy::default_tenant());
    };
    match authenticator.authenticate(authorization, peer) {
        Ok(identity) if identity.can(Right::Ingest) => {
            Ok(Tenancy::Fixed(Arc::from(identity.tenant.as_str())))
        }
        Ok(identity) => Err(Refused::Forbidden(identity.token_id)),
        Err(refusal) => Err(Refused::Unauthenticated(refusal.message())),
    }
}

/// The token check of an HTTP request (its `Authorization` header): on success the request,
/// carrying the sender's tenant for the handler ([`tenancy_of`]); otherwise why it is refused,
/// which each source answers in its own protocol's shape.
pub(crate) fn admit_http(
    authenticator: Option<&Authenticator>,
    mut request: axum::extract::Request,
) -> Result<axum::extract::Request, Refused> {
    let peer = peer_of(&request);
    let authorization = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|value| value.to_str().unwrap_or("\u{0}"));
    match check(authenticator, authorization, &peer) {
        Ok(tenancy) => {
            request.extensions_mut().insert(tenancy);
            Ok(request)
        }
        Err(refused) => Err(refused),
    }
}

/// The sender's address, when the server records it (`into_make_service_with_connect_info`).
pub(crate) fn peer_of(request: &axum::extract::Request) -> String {
    request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map_or_else(|| "-".to_owned(), |info| info.0.to_string())
}

/// The tenant of an HTTP request: the token's, put in the request's extensions by the
/// source's token check, or the default tenant when the source takes anyone.
pub(crate) fn tenancy_of(tenancy: Option<axum::extract::Extension<Tenancy>>) -> Tenancy {
    tenancy.map_or_else(
        Tenancy::default_tenant,
        |axum::extract::Extension(tenancy)| tenancy,
    )
}
